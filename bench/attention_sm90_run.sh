#!/usr/bin/env bash
# One GPU-machine call for the attention kernels: build the attention tests and benchmark, run the
# prefill tests under each build of the Hopper kernel (STEM_PREFILL_SM90=1..4, or those in
# STEM_SM90_MODES; kernels/cuda/attention_prefill_sm90.cu lists them; 0 is the mma.sync kernel)
# and the decode tests, then the benchmark for each build and for the mma.sync kernel, the torch
# SDPA peers, and memory checks of small cases (prefill under each build, decode). Every step has a
# time limit, so a hang costs one step, not the call. Logs go to build-gpu/logs, packed into
# $OUT/logs.tgz when $OUT is set (the device tool brings that back); the summary is the end of the
# output. Usage: bench/attention_sm90_run.sh [--no-bench]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build-gpu}"
logs="$build/logs"
rm -rf "$logs"; mkdir -p "$logs"
source "$root/scripts/gpu_common.sh"
gpu_info
start=$(date +%s)
build_kernels "$root" "$build" "$logs/build.log" cuda_test_attention_prefill cuda_test_attention_decode bench_attention || exit 1
echo "built in $(($(date +%s) - start)) s; prefill kernels' resources:"
grep -A2 -E "Compiling entry function '.*prefill.*sm_90a" "$logs/build.log" | grep -E "Used|spill" | sort | uniq -c
grep -E "C75[0-9][0-9]" "$logs/build.log" | sort -u | cut -c1-200

rc=0
export STEM_TEST_REPORT="$logs/rel_errors.txt"
rm -f "$STEM_TEST_REPORT"
modes="${STEM_SM90_MODES:-4 3 2 1}"
for mode in $modes; do
  STEM_PREFILL_SM90=$mode timeout 180 "$build/tests/cuda_test_attention_prefill" > "$logs/test_prefill_$mode.log" 2>&1
  r=$?
  echo "== prefill tests, STEM_PREFILL_SM90=$mode: rc $r"
  [ $r = 0 ] || rc=1
  tail -n 3 "$logs/test_prefill_$mode.log"
  grep -B3 -A14 FAILED "$logs/test_prefill_$mode.log" | head -n 50
done
timeout 120 "$build/tests/cuda_test_attention_decode" > "$logs/test_decode.log" 2>&1 || rc=1
echo "== decode tests: $(tail -n 2 "$logs/test_decode.log" | tr '\n' ' ')"
echo "== relative errors (worst 25)"
[ -f "$STEM_TEST_REPORT" ] && sort -g -k2 "$STEM_TEST_REPORT" | tail -n 25 | awk '{ print "  " $0 }'

if [ "${1:-}" != --no-bench ]; then
  for mode in $modes 0; do
    echo "== bench, STEM_PREFILL_SM90=$mode"
    STEM_PREFILL_SM90=$mode timeout 150 "$build/bench/bench_attention" --json "$logs/ours_$mode.json" \
      > "$logs/bench_$mode.txt" 2>&1 || rc=1
    grep -E "prefill|sparse|error|rror" "$logs/bench_$mode.txt"
  done
  timeout 200 python3 "$root/bench/attention_peer.py" --ours "$logs/ours_${PEER_MODE:-4}.json" --json "$logs/peers.json" \
    > "$logs/peers.txt" 2>&1 || rc=1
  cat "$logs/peers.txt" | tail -n 12
fi
if command -v compute-sanitizer > /dev/null; then
  for mode in $modes; do
    STEM_PREFILL_SM90=$mode timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$build/tests/cuda_test_attention_prefill" "cuda prefill reads q from fused qkv rows and may write over them" \
      > "$logs/sanitizer_$mode.log" 2>&1
    echo "== prefill memcheck, STEM_PREFILL_SM90=$mode: rc $? $(grep -m 3 -E "Invalid|ERROR SUMMARY" "$logs/sanitizer_$mode.log" | tr '\n' ' ')"
  done
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/cuda_test_attention_decode" \
    "cuda paged_decode leaves longer sequences to the prefill kernel" > "$logs/sanitizer_decode.log" 2>&1
  echo "== decode memcheck: rc $? $(grep -m 3 -E "Invalid|ERROR SUMMARY" "$logs/sanitizer_decode.log" | tr '\n' ' ')"
fi
[ -n "${OUT:-}" ] && tar czf "$OUT/logs.tgz" -C "$logs" .
echo "== exit $rc"
exit $rc
