#!/usr/bin/env bash
# The CPU backend built with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/, or
# $STEM_ASAN_BUILD_DIR), then its tests: every Catch2 unit test, and the integration tests
# against the instrumented stemserve (STEM_SANITIZE_PYTEST picks them: "all", or a pytest -k
# expression; the default is a subset chosen to fit CI's time, see below). A sanitizer report
# fails the test that caused it: findings abort the process (-fno-sanitize-recover), and the
# integration tests' server fixture fails on any report in the server's log.
# Run after scripts/test.sh (it needs the virtualenv and the default model that test.sh prepares).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_ASAN_BUILD_DIR:-$root/build-asan}"
jobs="${STEM_JOBS:-$(nproc)}"
source "$root/scripts/ccache_env.sh"

start=$(date +%s)
# Line tables (-g1) are enough for the reports' stack traces and build much faster than -g; -O1 (what
# the sanitizers' authors advise) compiles in 0.7-0.75x the time of -O2 here (http_server.cc 45 s against 59 s,
# chat_template_eval.cc 17 s against 23 s, the machine loaded).
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DSTEM_CUDA=OFF -DSTEM_SANITIZE=address,undefined -DSTEM_BUILD_EVAL=OFF >/dev/null
cmake --build "$build" -j "$jobs"
echo "test_sanitize.sh: built in $(($(date +%s) - start)) s"

# Leaks are reported at exit (LeakSanitizer); the suppressions name what libraries keep on purpose.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$root/tests/sanitize/ubsan.supp:${UBSAN_OPTIONS:-}"

reports="$build/test-reports"
rm -rf "$reports"
mkdir -p "$reports"
rc=0
# The integration tests under ASan run the model 2-3x slower. The default subset leaves out the
# slowest model-bound cases (the 32-request concurrency run and the long-prompt Stem request),
# which exercise the same server paths as the ones kept.
subset="${STEM_SANITIZE_PYTEST:-not test_concurrent_mixed_requests_match_alone and not test_stem_http}"
pytest_args=(-q -rs -p no:cacheprovider --durations=5 --junitxml="$reports/integration.xml" tests/integration)
[ "$subset" = all ] || pytest_args+=(-k "$subset")
# They run beside the unit tests, which get the other cores: the CPU backend computes on one core,
# so the two together keep every core busy (one after the other, the unit tests' slowest few and
# then pytest left cores idle). Their log is shown when they end.
start=$(date +%s)
(cd "$root" && STEMSERVE_BIN="$build/server/stemserve" "$root/.venv/bin/python" -m pytest "${pytest_args[@]}") \
  >"$reports/integration.log" 2>&1 &
pytest_pid=$!
# The Catch2 tests; not the other CTest entries (the integration tests run above; bench/ and
# deploy/ check benchmarks and packaging, not the code's memory safety, and bench/eval_quick
# alone takes five minutes under ASan: this build leaves bench/eval out).
ctest --test-dir "$build" --output-on-failure -j "$((jobs > 1 ? jobs - 1 : 1))" -E '^(integration|bench|deploy)/' \
  --timeout 1200 --output-junit "$reports/ctest.xml" || rc=1
echo "test_sanitize.sh: unit tests in $(($(date +%s) - start)) s"
wait "$pytest_pid" || rc=1
cat "$reports/integration.log"
echo "test_sanitize.sh: integration tests in $(($(date +%s) - start)) s (from the same start)"

# The pytest cases that -k leaves out are "deselected", not skipped: they are not in the report.
/usr/bin/python3 "$root/scripts/test_report.py" --name test_sanitize.sh "$reports/ctest.xml" "$reports/integration.xml" ||
  rc=1
exit $rc
