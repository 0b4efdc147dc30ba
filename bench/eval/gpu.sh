#!/usr/bin/env bash
# The full Stem accuracy run on the GPU machine, which cannot build the server (no PCRE2 or gRPC
# headers): the binaries are built here with CUDA (scripts/gpu_model_test.sh's pack) and carried.
#
#   bench/eval/gpu.sh pack   # here: build into build-eval-gpumodel, fill build-eval-carry/ with
#                            # stem_eval, the CUDA Stem tests, bench_stem, their libraries, the
#                            # perplexity documents and (when present) the attention stage's
#                            # results build-eval/eval-full/attention.json
#   bench/eval/gpu.sh run    # there, from the repo root, with build-eval-carry and
#                            # models/cache/SmolLM2-135M-Instruct present (259 MB: more than one
#                            # call of the device tool carries, 64 MiB; send it in pieces): the CUDA Stem tests
#                            # (every selection variant against the CPU reference), bench_stem at
#                            # 128K (the planner's time), then stem_eval --device cuda
#
# stem_eval's attention stage (Q/K/V capture, calibration, attention error) is CPU work; when
# attention.json was carried, the GPU run takes the calibrated methods from it and runs passkey
# and perplexity only (--methods-from). Results go to $OUT (the device tool brings them back).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="${STEM_CARRY_DIR:-$root/build-eval-carry}"
build="${STEM_BUILD_DIR:-$root/build-eval-gpumodel}"
docs=(/usr/share/common-licenses/GPL-3 /usr/share/vim/vim90/doc/usr_03.txt /usr/share/vim/vim90/doc/usr_05.txt)

pack() {
  STEM_CARRY_DIR="$carry" STEM_BUILD_DIR="$build" "$root/scripts/gpu_model_test.sh" pack || exit 1
  cmake --build "$build" -j "${STEM_JOBS:-2}" --target cuda_test_stem cuda_test_stem_variants bench_stem || exit 1
  cp "$build/tests/cuda_test_stem" "$build/tests/cuda_test_stem_variants" "$build/bench/bench_stem" "$carry/bin/"
  # As the pack does: the libraries the GPU machine lacks go along.
  ldd "$carry"/bin/* | awk '/=>/ { print $1, $3 }' | sort -u | while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl.so*|librt.so*|libgomp*|ld-linux*) ;;
      libcuda*|libcublas*|libcudart*|libnvidia*|libopenblas*|libgfortran*|libquadmath*) ;;
      *) [ -f "$carry/lib/$name" ] || cp -L "$path" "$carry/lib/$name" ;;
    esac
  done
  strip --strip-unneeded "$carry"/bin/* 2> /dev/null
  mkdir -p "$carry/eval"
  cp "${docs[@]}" "$carry/eval/"
  [ -f "$root/build-eval/eval-full/attention.json" ] && cp "$root/build-eval/eval-full/attention.json" "$carry/eval/"
  du -sh "$carry"
  ls "$carry/bin" "$carry/eval"
}

run() {
  local logs="${OUT:-$carry/logs}" rc=0
  mkdir -p "$logs"
  export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ! ldconfig -p | grep -q 'libopenblas.so.0 '; then  # OpenBLAS under another name: point at it
    blas="$(find / -xdev -name 'libopenblas*.so*' 2> /dev/null | head -n 1)"
    [ -n "$blas" ] && ln -sf "$blas" "$carry/lib/libopenblas.so.0"
  fi
  ldd "$carry"/bin/* | grep "not found" | sort -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  export STEM_TEST_REPORT="$logs/rel_errors.txt"
  echo "== CUDA Stem tests"
  for t in cuda_test_stem cuda_test_stem_variants; do
    local start=$SECONDS
    timeout 300 "$carry/bin/$t" > "$logs/$t.log" 2>&1 || rc=1
    echo "  $t: $((SECONDS - start)) s, $(grep -aE '^(test cases|All tests passed)' "$logs/$t.log" | tail -n 1)"
    grep -aE -A12 "FAILED" "$logs/$t.log" | head -n 40
  done
  grep -a stem "$STEM_TEST_REPORT" 2> /dev/null | sort -u | head -n 20
  echo "== bench_stem at 128K (the planner: estimate + select)"
  timeout 120 "$carry/bin/bench_stem" --min-len 131072 --max-len 131072 --json "$logs/bench_stem.json" 2>&1 | tail -n 6
  echo "== stem_eval --device cuda"
  local args=(--docs "$(ls "$carry"/eval/GPL-3 "$carry"/eval/usr_0*.txt | paste -sd,)")
  [ -f "$carry/eval/attention.json" ] && args+=(--methods-from "$carry/eval/attention.json" --tasks passkey,ppl)
  "$root/bench/eval/run.sh" --device cuda --bin "$carry/bin/stem_eval" --out "$logs" --no-install -- "${args[@]}" ||
    rc=1
  return $rc
}

case "${1:-run}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: $0 pack | run" >&2; exit 2 ;;
esac
