#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that building stemserve needs (DESIGN.md §5), those that are
# missing. The one list: scripts/bootstrap.sh (developers, CI) and deploy/Dockerfile (the image's
# build stage) both run this script. The names are the same on Debian 12 and Ubuntu 24.04.
# Usage: scripts/install_packages.sh [--list]   (--list: print the names and install nothing)
set -euo pipefail

packages=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv curl
          nlohmann-json3-dev libspdlog-dev libcli11-dev catch2 libpcre2-dev libsentencepiece-dev
          libopenblas-dev libcpp-httplib-dev prometheus-cpp-dev
          libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler)
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_packages: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
