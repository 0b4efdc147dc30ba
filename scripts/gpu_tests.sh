#!/usr/bin/env bash
# Every GPU test in one command, on a machine with an NVIDIA GPU (from the repository root):
#   1. the kernels and their tests, built there (scripts/gpu_test.sh --no-bench: every CUDA op
#      against its CPU twin, Stem's CUDA planner against the CPU reference, sampling);
#   2. the whole model on the GPU (scripts/gpu_model_test.sh run none: vs the CPU backend, vs
#      transformers fixtures, CUDA graphs vs eager, Stem chunked vs unchunked, stemserve generate).
# Part 2 runs binaries built with the server's libraries by `scripts/gpu_model_test.sh pack`
# (build-gpumodel-carry/); on a machine that has those libraries, the pack is made here first.
# Exit status: non-zero if any part failed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/build-gpumodel-carry/bin/bench_model" ] && [ ! -f "$root/build-gpumodel-carry/bundle.tar.xz" ]; then
  "$root/scripts/gpu_model_test.sh" pack || { echo "cannot build the model tests here: pack them elsewhere"; exit 1; }
fi
rc=0
echo "=== kernels"
bash "$root/scripts/gpu_test.sh" --no-bench || rc=1
echo "=== whole model"
bash "$root/scripts/gpu_model_test.sh" run none || rc=1
echo "=== GPU tests: $([ $rc = 0 ] && echo passed || echo FAILED)"
exit $rc
