#!/usr/bin/env bash
# One GPU-machine call for the attention kernels: build the attention tests and benchmark, run the
# tests, the benchmark and its torch SDPA peers, then a memory check of a small case. Logs go to
# $OUT (the device tool brings them back) or build-gpu/logs; the end of the output is the summary.
# Usage: bench/attention_gpu_run.sh [--no-bench] [--no-sanitizer]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build-gpu}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
bench=1 sanitizer=1
for a in "$@"; do
  [ "$a" = --no-bench ] && bench=0
  [ "$a" = --no-sanitizer ] && sanitizer=0
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader

args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEM_ONLY_KERNELS=ON -DSTEM_CUDA=ON -DSTEM_CUDA_RESOURCE_USAGE=ON)
if [ ! -f /usr/include/cblas.h ]; then
  cblas="$(find /usr/include /usr/local/include /opt -name cblas.h 2> /dev/null | head -n 1)"
  [ -n "$cblas" ] && args+=("-DCBLAS_INCLUDE_DIR=$(dirname "$cblas")")
fi
cmake -S "$root" -B "$build" "${args[@]}" > "$logs/configure.log" 2>&1 || { tail -n 30 "$logs/configure.log"; exit 1; }
start=$(date +%s)
if ! cmake --build "$build" -j 16 --target cuda_test_attention_prefill cuda_test_attention_decode bench_attention \
  > "$logs/build.log" 2>&1; then
  grep -E "error|FAILED" "$logs/build.log" | head -n 40
  exit 1
fi
echo "built in $(($(date +%s) - start)) s; attention kernels' resources:"
grep -A2 -E "Compiling entry function '.*(prefill|decode)" "$logs/build.log" | grep -E "entry|Used|spill" |
  sed -E 's/ptxas info *: //' | paste - - - | sed -E 's/Compiling entry function//' | cut -c1-220 | sort -u

rc=0
export STEM_TEST_REPORT="$logs/rel_errors.txt"
rm -f "$STEM_TEST_REPORT"
for t in prefill decode; do
  "$build/tests/cuda_test_attention_$t" > "$logs/test_$t.log" 2>&1 || rc=1
  tail -n 4 "$logs/test_$t.log"
  grep -B3 -A12 FAILED "$logs/test_$t.log" | head -n 60
done
echo "== relative errors"
[ -f "$STEM_TEST_REPORT" ] && sort -k2 "$STEM_TEST_REPORT" | awk '{ print "  " $0 }' | tail -n 40

if [ "$bench" = 1 ]; then
  echo "== bench"
  "$build/bench/bench_attention" --json "$logs/ours.json" 2>&1 | tee "$logs/bench.txt" || rc=1
  python3 "$root/bench/attention_peer.py" --ours "$logs/ours.json" --json "$logs/peers.json" 2>&1 |
    tee "$logs/peers.txt" || rc=1
fi
if [ "$sanitizer" = 1 ] && command -v compute-sanitizer > /dev/null; then
  echo "== compute-sanitizer (memcheck) on small cases"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/cuda_test_attention_prefill" \
    "cuda prefill reads q from fused qkv rows and may write over them" > "$logs/sanitizer.log" 2>&1
  echo "prefill memcheck rc $?"
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/cuda_test_attention_decode" \
    "cuda paged_decode leaves longer sequences to the prefill kernel" >> "$logs/sanitizer.log" 2>&1
  echo "decode memcheck rc $?"
  grep -m 10 -E "Invalid|ERROR SUMMARY" "$logs/sanitizer.log"
fi
echo "== exit $rc"
exit $rc
