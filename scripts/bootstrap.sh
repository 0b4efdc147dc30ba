#!/usr/bin/env bash
# Installs what stemserve needs on Debian 12 / Ubuntu 24.04 when it is missing: the Debian
# packages of DESIGN.md §5 (scripts/install_packages.sh, which deploy/Dockerfile's build runs too)
# and a Python virtualenv (.venv) with requirements.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

"$root/scripts/install_packages.sh"

# Developers and CI only (not the image): clang with the libFuzzer and sanitizer runtimes
# (scripts/fuzz.sh) and strace (a test checks that no request field is opened as a file).
dev_missing=()
for p in clang libclang-rt-dev strace; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || dev_missing+=("$p")
done
if ((${#dev_missing[@]})); then
  echo "bootstrap: installing ${dev_missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${dev_missing[@]}"
fi

# Debian's own python3 (not whatever python3 is first on PATH) makes the virtualenv.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: preparing $venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$root/requirements.txt"
  echo "$want" > "$stamp"
fi
