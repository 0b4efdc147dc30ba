#!/usr/bin/env bash
# Configures and builds stemserve (Release, Ninja, ccache) into build/ or $STEM_BUILD_DIR.
# Extra arguments go to CMake, e.g. -DSTEM_CUDA=OFF.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build}"
source "$root/scripts/ccache_env.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "${STEM_JOBS:-$(nproc)}"
