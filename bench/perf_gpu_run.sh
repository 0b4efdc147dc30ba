#!/usr/bin/env bash
# One device call for the whole-model performance work (run from the repo root on the GPU machine,
# with build-gpumodel-carry/ carried; built here by `scripts/gpu_model_test.sh pack`):
#   1. the GPU model tests (scripts/gpu_model_test.sh run none);
#   2. the op benchmarks' GEMMs with cuBLASLt's first heuristic pick (STEM_GEMM_TUNE=0) and tuned;
#   3. bench_model: decode at batch 1/8/64/256 (1K and 32K contexts), untuned then tuned;
#      TTFT at 32K-128K, dense and Stem, with the per-op profile at 128K (--profile); then Stem at
#      128K alone after an idle pause (median of 3), with the SM clock sampled throughout.
# Usage: bench/perf_gpu_run.sh [tests|gemm|decode|ttft]...   (default: all four)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$root/build-gpumodel-carry"
logs="${OUT:-$carry/logs}"
mkdir -p "$logs"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
config="$root/bench/configs/llama-3.1-8b.json"
parts=("$@")
[ ${#parts[@]} = 0 ] && parts=(tests gemm decode ttft)
for part in "${parts[@]}"; do
  case "$part" in
    tests) bash "$root/scripts/gpu_model_test.sh" run none 2>&1 | tail -n 30 ;;
    gemm)
      for tune in 0 1; do
        echo "== bench_ops GEMMs, STEM_GEMM_TUNE=$tune"
        STEM_GEMM_TUNE=$tune "$carry/bin/bench_ops" --json "$logs/ops_tune$tune.json" > "$logs/ops_tune$tune.txt" 2>&1
        grep -E '^(ceilings|gemm)' "$logs/ops_tune$tune.txt"
      done ;;
    decode)
      for tune in 0 1; do
        echo "== bench_model decode, STEM_GEMM_TUNE=$tune"
        STEM_GEMM_TUNE=$tune "$carry/bin/bench_model" --config "$config" --ttft "" --batches 1,8,64,256 \
          --contexts 1024,32768 --json "$logs/decode_tune$tune.json" 2>&1 | grep -vE '^$'
      done ;;
    ttft)
      # The SM clock and power, twice a second, beside the runs: under sustained tensor work the
      # card meets its power limit and lowers the clock, which moves every figure.
      nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv,noheader -lms 500 \
        > "$logs/clocks_ttft.txt" &
      smi=$!
      echo "== bench_model TTFT 32K-128K, dense and Stem, with the per-op profile at 128K"
      "$carry/bin/bench_model" --config "$config" --ttft 32768,65536,131072 --sparse-prefill both --batches "" --profile \
        --json "$logs/ttft_profile.json" 2>&1 | grep -vE '^$'
      echo "== bench_model TTFT 128K, Stem alone after 20 s idle, median of 3"
      sleep 20
      "$carry/bin/bench_model" --config "$config" --ttft 131072 --sparse-prefill stem --batches "" --runs 3 \
        --json "$logs/ttft_stem_alone.json" 2>&1 | grep -vE '^$' | tail -n 3
      kill "$smi"
      echo "SM clock (MHz) while over 400 W: $(awk -F', ' '$3 + 0 > 400 { n++; s += $2 } END { if (n) printf "%.0f mean over %d samples", s / n, n }' "$logs/clocks_ttft.txt")" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
