#!/usr/bin/env bash
# The test command: installs what is missing, builds the CPU backend, prepares the default
# model (some tests run it), runs every test with CTest, and ends with scripts/test_report.py's
# report: passed / failed / skipped counts, each skipped test with its reason. It fails when a
# test fails or when a test skips for any reason but a missing GPU (STEM_ALLOW_SKIPS=1 accepts
# other skips, e.g. on a machine that cannot prepare the model). The GPU tests themselves are
# built only with CUDA (STEM_CUDA=ON; scripts/gpu_tests.sh runs them on a GPU machine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
build="${STEM_BUILD_DIR:-$root/build-test}"
STEM_BUILD_DIR="$build" "$root/scripts/build.sh" -DSTEM_CUDA="${STEM_CUDA:-OFF}"
STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_default_model.sh" \
  --out "$root/models/cache/SmolLM2-135M-Instruct"
reports="$build/test-reports"
rm -rf "$reports"
mkdir -p "$reports"
rc=0
ctest --test-dir "$build" --output-on-failure -j "${STEM_JOBS:-$(nproc)}" --output-junit "$reports/ctest.xml" "$@" ||
  rc=$?
report_rc=0
/usr/bin/python3 "$root/scripts/test_report.py" --name test.sh "$reports/ctest.xml" "$reports"/integration.xml \
  "$reports"/deploy.xml || report_rc=$?
[ "$rc" = 0 ] || exit "$rc"
exit "$report_rc"
