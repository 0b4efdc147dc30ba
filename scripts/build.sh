#!/usr/bin/env bash
# Configures and builds stemserve (Release, Ninja, ccache) into build/ or $STEM_BUILD_DIR.
# Extra arguments go to CMake, e.g. -DSTEM_CUDA=OFF.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build}"
# ccache keys hold paths relative to the tree's root, and not the locale (LANG and LC_*: it changes
# only the language of the compiler's messages), so that another checkout of the same sources
# hits what this one compiled: another clone, the image's build stage at /src (deploy/Dockerfile,
# whose base sets no locale).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:+$CCACHE_SLOPPINESS,}locale"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "${STEM_JOBS:-$(nproc)}"
