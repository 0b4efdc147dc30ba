#!/usr/bin/env bash
# The whole model on the GPU: tests (tests/gpu_model/) and benchmarks (bench/bench_model*).
#
# The GPU machine lacks the server's libraries (PCRE2 headers, gRPC), so the binaries are built on
# a machine that has them (nvcc needs no GPU) and carried over with the shared libraries that the
# GPU machine does not have:
#
#   scripts/gpu_model_test.sh pack                 # here: build (CUDA on), fill build-gpumodel-carry/
#                                                  # (STEM_PACK_EXTRA="tests/cuda_test_kv_fp8 ...":
#                                                  # more targets of the build folder along)
#   scripts/gpu_model_test.sh run [quick|full|stem|none]  # there, from the repo root, with that
#                                                  # folder carried: tests, then benchmarks (default
#                                                  # quick; stem: TTFT Stem beside dense at 32K-128K,
#                                                  # no decode, no peer)
#   scripts/gpu_model_test.sh pack constrained     # here: only bench_constrained, its libraries and
#                                                  # Qwen2.5-Coder-1.5B's config and tokenizer (from
#                                                  # models/cache/ or $STEM_CONSTRAINED_MODEL) into
#                                                  # build-gpumodel-constrained/ (~15 MiB)
#   scripts/gpu_model_test.sh constrained [ARGS]   # there, with that folder carried: structured
#                                                  # outputs' cost at batch 1/16/64 through the whole
#                                                  # engine (bench/bench_constrained.cc), random
#                                                  # weights; ARGS go to the bench
#   scripts/gpu_model_test.sh kv [ARGS]            # there, with the `pack` folder carried: bench_model
#                                                  # with --kv-cache-dtype bf16, then fp8 (issue 18):
#                                                  # the KV pool's capacity, decode at batch 1 and 64
#                                                  # over 32K contexts, TTFT at 32K; ARGS go to both
#                                                  # (STEM_FP8_DECODE_AB="widen regs": the FP8 run
#                                                  # once per FP8 decode kernel)
#   scripts/gpu_model_test.sh unpack               # there: unpacks the carried bundle (run, real and
#                                                  # constrained do it themselves; for other scripts)
#   scripts/gpu_model_test.sh pack real            # here: only what `real` runs, into
#                                                  # build-gpumodel-real/ (8 MiB)
#   scripts/gpu_model_test.sh real MODEL_DIR       # there: a converted real model (Qwen2.5-Coder,
#                                                  # brought by models/prepare/device_pieces.sh)
#                                                  # against transformers in bf16 on the GPU,
#                                                  # teacher-forced over 4096 tokens, plus greedy
#                                                  # chat answers, tokenizer and chat template
#                                                  # (STEM_REAL_DTYPE=float32: an fp32 reference;
#                                                  # STEM_REAL_TOKENS: another length)
#
# `run` makes head_dim 64/128 versions of the tiny fixture models with transformers first (the
# committed ones have head_dim 16/32, which the CUDA attention kernels do not take). Logs and
# results go to $OUT when it is set (the device tool brings them back), else to the carry folder.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-run}"
default_carry="$root/build-gpumodel-carry"
[ "$*" != "pack real" ] && [ "$mode" != real ] || default_carry="$root/build-gpumodel-real"  # its own pack
[ "$*" != "pack constrained" ] && [ "$mode" != constrained ] || default_carry="$root/build-gpumodel-constrained"
carry="${STEM_CARRY_DIR:-$default_carry}"  # another folder: a pack beside someone else's

pack() {  # $1: "real" packs only the real-model check, "constrained" only bench_constrained
  case "${1:-}" in
    ""|real|constrained) ;;
    *) echo "pack takes nothing, real or constrained, got: $1" >&2; exit 2 ;;
  esac
  local build="${STEM_BUILD_DIR:-$root/build-gpumodel}"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEM_CUDA=ON > /dev/null || exit 1
  local tests targets
  tests=$(cd "$root/tests" && ls gpu_model/test_*.cc | sed -E 's|/|_|; s|\.cc$||')
  targets="stemserve bench_model bench_prefix_cache bench_ops bench_stem bench_constrained stem_eval $tests"
  if [ "${1:-}" = real ]; then
    tests=gpu_model_test_cuda_hf_reference
    targets=$tests
  fi
  if [ "${1:-}" = constrained ]; then
    tests=""
    targets=bench_constrained
  fi
  # STEM_PACK_EXTRA: more targets to carry, as paths in the build folder (tests/cuda_test_kv_fp8
  # bench/bench_attention): kernel tests and benchmarks beside the model's, for one call.
  local extra="${STEM_PACK_EXTRA:-}" e
  for e in $extra; do targets="$targets $(basename "$e")"; done
  # shellcheck disable=SC2086
  cmake --build "$build" -j "${STEM_JOBS:-2}" --target $targets || exit 1
  rm -rf "$carry"
  mkdir -p "$carry/bin" "$carry/lib"
  if [ -z "${1:-}" ]; then
    cp "$build/server/stemserve" "$build/bench/bench_model" "$build/bench/bench_prefix_cache" "$build/bench/bench_ops" "$build/bench/bench_stem" \
      "$build/bench/stem_eval" "$build/bench_constrained" "$carry/bin/"
  fi
  if [ "${1:-}" = constrained ]; then
    cp "$build/bench_constrained" "$carry/bin/"
    # Its model: the config and tokenizer only (7 MB; random weights there).
    local model="${STEM_CONSTRAINED_MODEL:-$root/models/cache/Qwen2.5-Coder-1.5B-Instruct}"
    if [ -f "$model/tokenizer.json" ]; then
      mkdir -p "$carry/qwen-coder-1.5b"
      cp "$model"/config.json "$model"/tokenizer.json "$model"/tokenizer_config.json "$carry/qwen-coder-1.5b/"
      [ -f "$model/generation_config.json" ] && cp "$model/generation_config.json" "$carry/qwen-coder-1.5b/"
    else
      echo "no $model/tokenizer.json: set STEM_CONSTRAINED_MODEL, or models/prepare/prepare_model.sh qwen2.5-coder-1.5b" >&2
      exit 1
    fi
  fi
  for t in $tests; do cp "$build/tests/$t" "$carry/bin/"; done
  for e in $extra; do cp "$build/$e" "$carry/bin/"; done
  # Libraries the GPU machine has itself (or newer): the C/C++ runtimes, CUDA, OpenBLAS and its
  # Fortran runtime. Everything else our binaries link goes along.
  ldd "$carry"/bin/* | awk '/=>/ { print $1, $3 }' | sort -u | while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl.so*|librt.so*|libgomp*|ld-linux*) ;;
      libcuda*|libcublas*|libcudart*|libnvidia*) ;;
      libopenblas*|libgfortran*|libquadmath*) ;;
      *) cp -L "$path" "$carry/lib/$name" ;;
    esac
  done
  strip --strip-unneeded "$carry"/bin/* 2> /dev/null
  du -sh "$carry"/bin "$carry"/lib
  ls "$carry/lib"
  # The device tool carries at most 64 MiB with the tree (~18 MB), and the binaries are ~70 MiB:
  # they travel as one xz bundle (about a tenth of that), unpacked there by `unpack`.
  local dirs=(bin lib)
  [ -d "$carry/qwen-coder-1.5b" ] && dirs+=(qwen-coder-1.5b)
  tar -C "$carry" -cf - "${dirs[@]}" | xz -T2 -6 > "$carry/bundle.tar.xz" || exit 1
  (cd "$carry" && rm -rf "${dirs[@]}")
  echo "carry folder: $(du -sm "$carry" | cut -f1) MiB (+ the tree; the device tool's limit is 64 MiB in all)"
}

unpack() {  # there: the carried bundle into the carry folder (once; a later call finds it unpacked)
  if [ -f "$carry/bundle.tar.xz" ] && [ ! -d "$carry/bin" ]; then
    local unxz=(xz -dc "$carry/bundle.tar.xz")  # without xz-utils, Python's lzma
    command -v xz > /dev/null ||
      unxz=(python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$carry/bundle.tar.xz")
    "${unxz[@]}" | tar -C "$carry" -xf - || { echo "cannot unpack $carry/bundle.tar.xz"; return 1; }
  fi
  [ -d "$carry/bin" ] || { echo "no $carry/bin: scripts/gpu_model_test.sh pack here, then carry $carry"; return 1; }
}

make_fixtures() {  # $1: output folder; the fixture generator with wider heads
  python3 - "$1" << 'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests/fixtures")
import torch
import make_model_fixtures as m

# hidden 256 over 4 heads: head_dim 64; the explicit-head_dim variant takes 128 (q_dim 512).
m.BASE.update(hidden_size=256, intermediate_size=512)
m.VARIANTS["llama-head-dim"]["head_dim"] = 128
torch.set_num_threads(4)
torch.use_deterministic_algorithms(True)
for name in m.VARIANTS:
    m.make_variant(name, Path(sys.argv[1]))
EOF
}

carried_env() {  # the carried binaries' libraries and the tests' paths; $1: the logs folder
  unpack || exit 1
  export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ! ldconfig -p | grep -q 'libopenblas.so.0 '; then  # OpenBLAS under another name: point at it
    blas="$(find / -xdev -name 'libopenblas*.so*' 2> /dev/null | head -n 1)"
    [ -n "$blas" ] && ln -sf "$blas" "$carry/lib/libopenblas.so.0"
  fi
  if ldd "$carry"/bin/* | grep -q "not found"; then
    echo "MISSING LIBRARIES:"; ldd "$carry"/bin/* | grep "not found" | sort -u
  fi
  export STEM_SOURCE="$root" STEM_FIXTURES="$root/tests/fixtures" STEM_TEST_REPORT="$1/model_errors.txt"
  rm -f "$STEM_TEST_REPORT"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
}

real() {  # $1: a converted model folder on this machine (device_pieces.sh append printed it)
  local model="${1:?real needs the converted model folder}" logs="${OUT:-$carry/logs}" ref start rc
  mkdir -p "$logs"
  carried_env "$logs"
  ref="$(mktemp -d)"
  echo "== reference: transformers, ${STEM_REAL_DTYPE:-bfloat16} on the GPU, $(basename "$model")"
  start=$SECONDS
  python3 "$root/models/prepare/validate_model.py" --model "$model" --reference-only "$ref" --device cuda \
    --dtype "${STEM_REAL_DTYPE:-bfloat16}" --tokens "${STEM_REAL_TOKENS:-4096}" 2>&1 | grep -v -i -E 'warn|Loading weights'
  [ -f "$ref/reference.json" ] || { echo "no reference written"; return 1; }
  echo "  $((SECONDS - start)) s"
  echo "== stemserve's CUDA backend against it"
  start=$SECONDS
  STEM_HF_REFERENCE="$ref" STEM_HF_REFERENCE_RESULT="$logs/real_model.json" \
    "$carry/bin/gpu_model_test_cuda_hf_reference" "[real]" 2>&1 | tee "$logs/real_model.log" | grep -v '^$' | tail -n 40
  rc=${PIPESTATUS[0]}
  echo "  rc $rc, $((SECONDS - start)) s (figures: $logs/real_model.json)"
  rm -rf "$ref"
  return "$rc"
}

run() {
  local bench="${1:-quick}" logs="${OUT:-$carry/logs}" tmp
  mkdir -p "$logs"
  tmp="$(mktemp -d)"
  carried_env "$logs"

  echo "== fixtures (transformers, head_dim 64/128)"
  local start=$SECONDS
  (cd "$root" && make_fixtures "$tmp/fixtures") > "$logs/fixtures.log" 2>&1 || { echo "fixture generation failed:"; tail -n 20 "$logs/fixtures.log"; }
  echo "  $(ls "$tmp/fixtures" 2> /dev/null | wc -l) models in $((SECONDS - start)) s"
  export STEM_GPU_MODEL_FIXTURES="$tmp/fixtures"

  echo "== tests"
  local failed=0
  : > "$logs/model_tests.log"
  for t in "$carry"/bin/gpu_model_test_*; do
    start=$SECONDS
    "$t" >> "$logs/model_tests.log" 2>&1
    local rc=$?
    [ $rc = 0 ] || failed=$((failed + 1))
    [ $rc = 77 ] && echo "  $(basename "$t") skipped a test: on the GPU machine that is a failure"
    echo "  $(basename "$t"): rc $rc, $((SECONDS - start)) s, $(grep -aE '^(test cases|All tests passed)' "$logs/model_tests.log" | tail -n 1)"
  done
  grep -aE -B2 -A12 "FAILED|REQUIRE|CHECK.*failed|SKIPPED" "$logs/model_tests.log" | head -n 80

  echo "== stemserve generate --device cuda --load-format dummy (Llama-3.1-8B shape, 4008-token vocab)"
  mkdir -p "$tmp/llama8b-dummy"
  cp "$root"/tests/fixtures/tokenizers/llama3/tokenizer*.json "$root"/tests/fixtures/tokenizers/llama3/generation_config.json "$tmp/llama8b-dummy/"
  python3 -c "
import json, sys
c = json.load(open('$root/bench/configs/llama-3.1-8b.json'))
c.update(vocab_size=4008, bos_token_id=4000, eos_token_id=[4001, 4007])
json.dump(c, open('$tmp/llama8b-dummy/config.json', 'w'))"
  start=$SECONDS
  "$carry/bin/stemserve" generate --model "$tmp/llama8b-dummy" --device cuda --load-format dummy \
    --prompt "The capital of France is" --max-tokens 48 --ignore-eos --temperature 0 > "$tmp/gen.txt" 2> "$tmp/gen.err"
  echo "  rc $?, $((SECONDS - start)) s, $(wc -c < "$tmp/gen.txt") bytes of text; log:"
  tail -n 4 "$tmp/gen.err" | cut -c1-240

  echo "== stemserve generate --device cuda, Stem on a 1.5K-token prompt (--stem-min-prompt-len 1024)"
  start=$SECONDS
  "$carry/bin/stemserve" generate --model "$tmp/llama8b-dummy" --device cuda --load-format dummy \
    --prompt "$(python3 -c 'print("the quick brown fox jumps over the lazy dog " * 170)')" --max-tokens 8 --ignore-eos \
    --temperature 0 --stem-min-prompt-len 1024 --stem-budget-rate 0.25 --log-level debug > "$tmp/gen.txt" 2> "$tmp/gen.err"
  echo "  rc $?, $((SECONDS - start)) s, $(grep -c 'stem: ' "$tmp/gen.err") steps with sparse blocks; log:"
  grep -E 'stem: |prefill:|finish_reason' "$tmp/gen.err" | tail -n 4 | cut -c1-240

  echo "== stemserve generate --device cuda --kv-cache-dtype fp8, the same Stem prompt (staged prefill, FP8 decode graphs)"
  start=$SECONDS
  "$carry/bin/stemserve" generate --model "$tmp/llama8b-dummy" --device cuda --load-format dummy --kv-cache-dtype fp8 \
    --prompt "$(python3 -c 'print("the quick brown fox jumps over the lazy dog " * 170)')" --max-tokens 8 --ignore-eos \
    --temperature 0 --stem-min-prompt-len 1024 --stem-budget-rate 0.25 --log-level debug > "$tmp/gen.txt" 2> "$tmp/gen.err"
  echo "  rc $?, $((SECONDS - start)) s, $(grep -c 'stem: ' "$tmp/gen.err") steps with sparse blocks; log:"
  grep -E 'KV cache|stem: |finish_reason' "$tmp/gen.err" | tail -n 4 | cut -c1-240

  echo "== worst relative error per check (all: model_errors.txt)"
  [ -f "$STEM_TEST_REPORT" ] && awk '{ op = $1; if (!(op in worst) || $NF + 0 > worst[op] + 0) { worst[op] = $NF; where[op] = $0 } n[op]++ }
       END { for (op in worst) printf "  %-28s %4d checks, worst %s  (%s)\n", op, n[op], worst[op], where[op] }' \
    "$STEM_TEST_REPORT" | sort

  if [ "$bench" != none ]; then
    local ours=() peer=()
    [ "$bench" = quick ] && ours=(--ttft 8192 --batches 1,8 --contexts 1024 --steps 10) \
      && peer=(--ttft 8192 --decode-batches 1)
    [ "$bench" = stem ] && ours=(--ttft 32768,65536,131072 --sparse-prefill both --batches "")
    echo "== bench_model ($bench)"
    "$carry/bin/bench_model" --config "$root/bench/configs/llama-3.1-8b.json" "${ours[@]}" \
      --json "$logs/bench_model.json" 2>&1 | tee "$logs/bench.txt"
    if [ "$bench" != stem ]; then
      echo "== transformers peer"
      PYTHONUNBUFFERED=1 python3 "$root/bench/bench_model_peer.py" --config "$root/bench/configs/llama-3.1-8b.json" \
        "${peer[@]}" --json "$logs/bench_peer.json" 2>&1 | grep -v Warning | tee -a "$logs/bench.txt"
    fi
  fi
  rm -rf "$tmp"
  echo "== $failed test binaries failed"
  return $failed
}

constrained() {  # bench_constrained on the carried Qwen2.5-Coder-1.5B config and tokenizer; "$@": more flags
  local logs="${OUT:-$carry/logs}"
  mkdir -p "$logs"
  carried_env "$logs"
  [ -f "$carry/qwen-coder-1.5b/tokenizer.json" ] || { echo "no $carry/qwen-coder-1.5b: scripts/gpu_model_test.sh pack constrained, then carry $carry"; return 1; }
  echo "== bench_constrained (structured outputs' cost in a batch, issue 19)"
  "$carry/bin/bench_constrained" --model "$carry/qwen-coder-1.5b" --device cuda --batches 1,16,64 --tokens 256 \
    --json "$logs/constrained.json" "$@" 2>&1 | grep -v '\[info\]' | tee "$logs/constrained.txt"
  return "${PIPESTATUS[0]}"
}

kv() {  # bench_model with the bf16 KV cache, then the FP8 one (issue 18); "$@": more bench_model flags
  # STEM_FP8_DECODE_AB="widen regs": the FP8 run once per decode kernel (STEM_FP8_DECODE), in that order.
  local logs="${OUT:-$carry/logs}" rc=0 run d k
  mkdir -p "$logs"
  carried_env "$logs"
  local runs=(bf16)
  if [ -n "${STEM_FP8_DECODE_AB:-}" ]; then
    for k in $STEM_FP8_DECODE_AB; do runs+=("fp8:$k"); done
  else
    runs+=(fp8)
  fi
  for run in "${runs[@]}"; do
    d="${run%%:*}"
    k="${run#*:}"
    [ "$k" = "$run" ] && k=""
    echo "== bench_model --kv-cache-dtype $d${k:+ (STEM_FP8_DECODE=$k)} (Llama-3.1-8B shape: the pool's capacity, decode at batch 1/64 over 32K, TTFT at 32K)"
    STEM_FP8_DECODE="$k" "$carry/bin/bench_model" --config "$root/bench/configs/llama-3.1-8b.json" --kv-cache-dtype "$d" \
      --batches 1,64 --contexts 32768 --steps 20 --ttft 32768 --sparse-prefill both \
      --json "$logs/bench_kv_$d${k:+_$k}.json" "$@" 2>&1 | tee "$logs/bench_kv_$d${k:+_$k}.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  done
  return $rc
}

case "$mode" in
  pack) pack "${2:-}" ;;
  unpack) unpack ;;
  constrained) shift; constrained "$@" ;;
  kv) shift; kv "$@" ;;
  run) run "${2:-quick}" ;;
  real) real "${2:-}" ;;
  *) echo "usage: $0 pack [real|constrained] | unpack | run [quick|full|none] | real MODEL_DIR | constrained [ARGS] | kv [ARGS]" >&2; exit 2 ;;
esac
