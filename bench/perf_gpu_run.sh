#!/usr/bin/env bash
# One device call for the whole-model performance work (run from the repo root on the GPU machine,
# with build-gpumodel-carry/ carried; built here by `scripts/gpu_model_test.sh pack`):
#   1. the GPU model tests (scripts/gpu_model_test.sh run none);
#   2. the op benchmarks' GEMMs with cuBLASLt's first heuristic pick (STEM_GEMM_TUNE=0) and tuned;
#   3. bench_model: decode at batch 1/8/64/256 (1K and 32K contexts), untuned then tuned;
#      TTFT at 32K-128K, dense and Stem, with the per-op profile at 128K (--profile); then Stem at
#      128K alone after an idle pause (median of 3), with the SM clock sampled throughout;
#   4. peers (not in the default): the same 128K Stem prefill's tensor work done back to back with
#      torch's kernels (bench/prefill_work_peer.py: cuBLAS, cuDNN, FlexAttention on a Stem-shaped
#      mask), clock sampled; then bench_stem beside its peers, FlexAttention included, at 16K-128K.
# Usage: bench/perf_gpu_run.sh [tests|gemm|decode|ttft|peers]...   (default: the first four)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$root/build-gpumodel-carry"
"$root/scripts/gpu_model_test.sh" unpack || exit 1
logs="${OUT:-$carry/logs}"
mkdir -p "$logs"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
config="$root/bench/configs/llama-3.1-8b.json"
source "$root/scripts/gpu_common.sh"
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
      start_clocks "$logs/clocks_ttft.txt"
      echo "== bench_model TTFT 32K-128K, dense and Stem, with the per-op profile at 128K"
      "$carry/bin/bench_model" --config "$config" --ttft 32768,65536,131072 --sparse-prefill both --batches "" --profile \
        --json "$logs/ttft_profile.json" 2>&1 | grep -vE '^$'
      echo "== bench_model TTFT 128K, Stem alone after 20 s idle, median of 3"
      sleep 20
      "$carry/bin/bench_model" --config "$config" --ttft 131072 --sparse-prefill stem --batches "" --runs 3 \
        --json "$logs/ttft_stem_alone.json" 2>&1 | grep -vE '^$' | tail -n 3
      stop_clocks "$logs/clocks_ttft.txt" ;;
    peers)
      echo "== the 128K Stem prefill's tensor work with torch's kernels, back to back"
      start_clocks "$logs/clocks_peers.txt"
      python3 "$root/bench/prefill_work_peer.py" --json "$logs/prefill_work_peer.json" 2>&1 | grep -vE '^$|Warning'
      stop_clocks "$logs/clocks_peers.txt"
      echo "== bench_stem and its peers (cuDNN, FA2, FlexAttention on a Stem-shaped mask)"
      "$carry/bin/bench_stem" --json "$logs/stem.json" > "$logs/bench_stem.txt" 2>&1 || tail -n 5 "$logs/bench_stem.txt"
      python3 "$root/bench/bench_stem_peer.py" --ours "$logs/stem.json" --json "$logs/stem_peers.json" \
        --png "$logs/stem_attention.png" 2>&1 | grep -vE '^$|Warning' ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
