#!/usr/bin/env bash
# Installs what stemserve needs on Debian 12 / Ubuntu 24.04 when it is missing: the Debian
# packages of DESIGN.md §5 and a Python virtualenv (.venv) with requirements.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv curl
          nlohmann-json3-dev libspdlog-dev libcli11-dev catch2 libpcre2-dev libsentencepiece-dev
          libopenblas-dev libcpp-httplib-dev prometheus-cpp-dev
          libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
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
