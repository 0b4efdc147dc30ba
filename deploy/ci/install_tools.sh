#!/usr/bin/env bash
# Installs the Debian packages the container test (deploy/ci/image_test.py) needs, those that
# are missing: Docker's engine and CLI (docker.io: dockerd, containerd, runc; its 20.10 CLI has
# BuildKit built in), mmdebstrap (the local Debian 12 base image), docker-compose (1.29) and
# iptables (dockerd's port publishing).
set -euo pipefail
packages=(docker.io mmdebstrap docker-compose iptables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_tools: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # image_test.py starts a dockerd of its own (its data under ~/.cache), whether or not the
  # package's service starts.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
