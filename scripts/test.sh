#!/usr/bin/env bash
# The test command: installs what is missing, builds the CPU backend, prepares the default
# model (some tests run it), and runs every test with CTest. GPU tests skip where no GPU is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
build="${STEM_BUILD_DIR:-$root/build-test}"
STEM_BUILD_DIR="$build" "$root/scripts/build.sh" -DSTEM_CUDA="${STEM_CUDA:-OFF}"
STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_default_model.sh" \
  --out "$root/models/cache/SmolLM2-135M-Instruct"
ctest --test-dir "$build" --output-on-failure -j "${STEM_JOBS:-$(nproc)}" "$@"
