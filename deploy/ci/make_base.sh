#!/usr/bin/env bash
# Makes the local Debian 12 base image that CI builds deploy/Dockerfile on (no container registry
# is needed): a minbase root filesystem by mmdebstrap from Debian's archive, imported as
# IMAGE (default stemserve-base:debian12). Documentation, manual pages and translations are left
# out, of it and of every package installed on it later (dpkg's path-exclude stays in the image).
# Does nothing when the image exists already, so that Docker's layer cache of the builds on top
# of it stays valid; --force makes it anew.
# Usage: deploy/ci/make_base.sh [--force] [IMAGE]    (docker: $DOCKER, default docker)
set -euo pipefail
docker=${DOCKER:-docker}
force=0
[ "${1:-}" = --force ] && { force=1; shift; }
image=${1:-stemserve-base:debian12}
if [ $force = 0 ] && $docker image inspect "$image" > /dev/null 2>&1; then
  echo "make_base: $image exists"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mirror=http://deb.debian.org/debian
mmdebstrap --quiet --variant=minbase --include=ca-certificates \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$tmp/rootfs.tar" \
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
$docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$image" > /dev/null
echo "make_base: $image made ($(du -m "$tmp/rootfs.tar" | cut -f1) MiB rootfs)"
