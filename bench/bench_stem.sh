#!/usr/bin/env bash
# One GPU-machine call for Stem (issue 4): build kernels/ and their tests with CUDA on, run every
# kernel test (CPU and CUDA), then bench_stem and its torch peers (SDPA cuDNN and FA2, FlexAttention
# on a Stem-shaped mask) in the same call, then a memory check of the Stem planner. Logs, JSON and
# the plot go to $OUT when it is set (the device tool brings them back), else to build-gpu/logs; the
# end of the output is the summary.
# Usage: bench/bench_stem.sh [--no-tests] [--no-bench] [--no-sanitizer]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build-gpu}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
tests=1 bench=1 sanitizer=1
for a in "$@"; do
  [ "$a" = --no-tests ] && tests=0
  [ "$a" = --no-bench ] && bench=0
  [ "$a" = --no-sanitizer ] && sanitizer=0
done
source "$root/scripts/gpu_common.sh"
gpu_info
command -v ninja > /dev/null || { echo "needs ninja"; exit 1; }
start=$(date +%s)
build_rc=0
build_kernels "$root" "$build" "$logs/build.log" -k || build_rc=$?
echo "built in $(($(date +%s) - start)) s; Stem kernels' resources:"
grep -A3 -E "Compiling entry function '.*stem_kernels.*sm_90a" "$logs/build.log" | grep -E "entry|Used|spill" |
  sed -E "s/ptxas info *: //; s/Compiling entry function .*stem_kernels[0-9]+([a-z_]+)ENS.*/\\1/; s/ *0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads/no spills/" | paste - - - | cut -c1-160

rc=$build_rc
export STEM_TEST_REPORT="$logs/rel_errors.txt"
rm -f "$STEM_TEST_REPORT"
if [ "$tests" = 1 ]; then
  echo "== tests"
  start=$(date +%s)
  ctest --test-dir "$build" -R 'cuda/|kernels/' --output-on-failure -j 6 --timeout 300 > "$logs/ctest.log" 2>&1 || rc=1
  grep -E "Failed|\*\*\*|tests passed|Total Test time" "$logs/ctest.log" | tail -n 25
  grep -B4 -A14 -E "FAILED:$" "$logs/ctest.log" | head -n 80
  echo "tests took $(($(date +%s) - start)) s"
  echo "== Stem errors (rel_errors.txt)"
  grep -i stem "$STEM_TEST_REPORT" 2> /dev/null | sort | uniq | awk '{ print "  " $0 }' | head -n 20
fi
if [ "$bench" = 1 ]; then
  echo "== bench"
  "$build/bench/bench_stem" --json "$logs/stem.json" 2>&1 | tee "$logs/bench.txt" || rc=1
  python3 "$root/bench/bench_stem_peer.py" --ours "$logs/stem.json" --json "$logs/stem_peers.json" \
    --png "$logs/stem_attention.png" 2>&1 | tee -a "$logs/bench.txt" || rc=1
fi
if [ "$sanitizer" = 1 ] && command -v compute-sanitizer > /dev/null; then
  echo "== compute-sanitizer memcheck: the Stem planner (chunked test)"
  unset STEM_TEST_REPORT
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/cuda_test_stem" \
    "cuda stem chunked and unchunked prefill choose the same blocks" > "$logs/sanitizer.log" 2>&1
  echo "memcheck rc $?"
  grep -m 8 -E "Invalid|ERROR SUMMARY|passed|failed" "$logs/sanitizer.log"
  export STEM_TEST_REPORT="$logs/rel_errors.txt"
fi
echo "== exit $rc"
exit $rc
