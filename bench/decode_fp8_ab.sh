#!/usr/bin/env bash
# The FP8 decode kernels side by side (issue 18; cuda::Fp8DecodeKernel: widen, regs, regs-int), on
# the GPU machine, from binaries built here and carried:
#
#   STEM_PACK_EXTRA="tests/cuda_test_kv_fp8 tests/cuda_test_attention_decode bench/bench_attention" \
#       scripts/gpu_model_test.sh pack               # here
#   bash bench/decode_fp8_ab.sh                      # there, build-gpumodel-carry/ carried
#
# First the kernel tests (every FP8 decode kernel against the CPU twin, the bf16 decode kernel's
# tests beside them) and the FP8 ones under compute-sanitizer memcheck and racecheck; then
# bench_attention --decode-only: the bf16 decode kernel and each FP8 kernel over the same shapes
# (Llama-3.1-8B heads, pages of 16), in GB/s on the bytes read and as a share of the copy
# bandwidth measured in the same run. Logs go to $OUT when set.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="${STEM_CARRY_DIR:-$root/build-gpumodel-carry}"
logs="${OUT:-$carry/logs}"
mkdir -p "$logs"
STEM_CARRY_DIR="$carry" bash "$root/scripts/gpu_model_test.sh" unpack || exit 1
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
rc=0
for t in cuda_test_kv_fp8 cuda_test_attention_decode; do
  [ -x "$carry/bin/$t" ] || { echo "no $carry/bin/$t: pack with STEM_PACK_EXTRA (above)"; exit 1; }
  start=$SECONDS
  "$carry/bin/$t" > "$logs/$t.log" 2>&1 || rc=1
  echo "$t: $(grep -aE '^(test cases|All tests passed)' "$logs/$t.log" | tail -n 1) ($((SECONDS - start)) s)"
done
grep -aE -A12 "FAILED|SKIPPED" "$logs/cuda_test_kv_fp8.log" | head -n 40
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    start=$SECONDS
    # At most $STEM_SANITIZE_LIMIT s each (default 150; racecheck is slow): a run cut short by the
    # limit is reported, not failed.
    timeout "${STEM_SANITIZE_LIMIT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 9 "$carry/bin/cuda_test_kv_fp8" "cuda paged_decode_fp8*" \
      > "$logs/sanitize_$tool.log" 2>&1
    case $? in 0) ;; 124) echo "  ($tool stopped at ${STEM_SANITIZE_LIMIT:-150} s; its errors so far: $(grep -ac '========= ' "$logs/sanitize_$tool.log"))" ;; *) rc=1 ;; esac
    echo "compute-sanitizer $tool, paged_decode_fp8: $(grep -aE 'ERROR SUMMARY|All tests passed|test cases' "$logs/sanitize_$tool.log" | tr '\n' ' ') ($((SECONDS - start)) s)"
  done
else
  echo "no compute-sanitizer on this machine"; rc=1
fi
"$carry/bin/bench_attention" --decode-only --json "$logs/decode_ab.json" 2>&1 | tee "$logs/decode_ab.txt" || rc=1
exit $rc
