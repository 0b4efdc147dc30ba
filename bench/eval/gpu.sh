#!/usr/bin/env bash
# The long-context evaluation on the GPU machine (issue 21; docs/stem.md "Long-context accuracy"),
# which reaches no network and cannot build the server: binaries, libraries and prompts are made
# here and carried; the model folder is already there (it travels in pieces, models/prepare/).
#
#   bench/eval/gpu.sh pack [MODEL_DIR]            # here (default models/cache/Qwen2.5-Coder-1.5B-Instruct)
#   STEM_EVAL_MODEL=/path/to/model bench/eval/gpu.sh run SLICE [stem_eval args...]   # there
#
# pack: builds stem_eval and the Stem CUDA tests (CUDA on) into $STEM_BUILD_DIR (build-eval-gpu) and
#   fills $STEM_CARRY_DIR (build-eval-carry/; carry it):
#     bin/            stem_eval, cuda_test_stem, cuda_test_stem_variants, cuda_test_token_logprob,
#                     gpu_model_test_cuda_stem (stripped)
#     lib/            the shared libraries the GPU machine lacks
#     data.tar.xz     the prompts for MODEL_DIR's tokenizer (make_tasks.py: 8K/16K/32K, 50 a task and
#                     length, 6 documents of 32K; made once into build-eval-data/<tokenizer sha>/)
#     results.json    the results so far (bench/eval/results/long_<model>.json), when there are any
# run: SLICE is one of
#     tests      the CUDA tests of what the evaluation relies on: the planner's variants against the CPU
#                (the reference's HPC point included), token_logprob, the backend's Stem counts and
#                scores against the CPU backend (~2 min)
#     calibrate  every method calibrated (15/25/35% at 32K), its attention time at 32K, and perplexity
#                of the six 32K documents
#     32k        calibrate, then 10 prompts of every task at 32K, every method (--limit 10)
#     slice      calibrate, then 10 prompts of every task at 32K, 16K and 8K, every method
#     full       calibrate, then all 50 prompts of every task and length
#   and the extra arguments go to stem_eval (e.g. --methods dense,stem,stem@25% --from 10 --limit 20).
#   Each run stops before it would pass STEM_EVAL_BUDGET seconds (default 540) and can be run again:
#   the records accumulate in build-eval-state/results_<model folder>.json on that machine (kept
#   between the calls of one session; seeded from the carried results.json when it is that model's)
#   and come back as $OUT/results.json, with the log and the tables (report_long.py, when python3 is
#   there). The short table is printed last. Commit $OUT/results.json as
#   bench/eval/results/long_<model folder>.json; the next pack carries it.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="${STEM_CARRY_DIR:-$root/build-eval-carry}"
build="${STEM_BUILD_DIR:-$root/build-eval-gpu}"
state="${STEM_EVAL_STATE:-$root/build-eval-state}"

pack() {
  local model="${1:-$root/models/cache/Qwen2.5-Coder-1.5B-Instruct}"
  [ -f "$model/tokenizer.json" ] || { echo "gpu.sh pack: no model at $model (its tokenizer makes the prompts)"; exit 1; }
  local name python="$root/.venv/bin/python"
  name="$(basename "$model")"
  [ -x "$python" ] || python=python3
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEM_CUDA=ON > /dev/null || exit 1
  local targets=(stem_eval cuda_test_stem cuda_test_stem_variants cuda_test_token_logprob gpu_model_test_cuda_stem)
  cmake --build "$build" -j "${STEM_JOBS:-2}" --target "${targets[@]}" || exit 1
  rm -rf "$carry"
  mkdir -p "$carry/bin" "$carry/lib"
  cp "$build/bench/stem_eval" "$carry/bin/"
  for t in "${targets[@]:1}"; do cp "$build/tests/$t" "$carry/bin/"; done
  # As scripts/gpu_model_test.sh: the C/C++ runtimes, CUDA and OpenBLAS are there; the rest goes along.
  ldd "$carry"/bin/* | awk '/=>/ { print $1, $3 }' | sort -u | while read -r lib path; do
    case "$lib" in
      libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl.so*|librt.so*|libgomp*|ld-linux*) ;;
      libcuda*|libcublas*|libcudart*|libnvidia*|libopenblas*|libgfortran*|libquadmath*) ;;
      *) cp -L "$path" "$carry/lib/$lib" ;;
    esac
  done
  strip --strip-unneeded "$carry"/bin/* 2> /dev/null

  # The prompts, once per tokenizer (the Qwen2.5-Coder models share theirs).
  local sha data
  sha="$(sha256sum "$model/tokenizer.json" | cut -c1-16)"
  data="$root/build-eval-data/$sha"
  if [ ! -f "$data/index.json" ]; then
    mkdir -p "$root/build-eval-data"
    echo "gpu.sh pack: making the prompts for $name's tokenizer into $data (about 10 minutes)"
    "$python" "$root/bench/eval/make_tasks.py" --model "$model" --out "$data.tmp" 2> "$data.log" ||
      { tail -n 20 "$data.log"; echo "gpu.sh pack: make_tasks.py failed"; exit 1; }
    rm -rf "$data" && mv "$data.tmp" "$data"
  fi
  tar -C "$data" -cf - index.json tokens.bin | xz -9e -T1 --lzma2=dict=128MiB > "$carry/data.tar.xz" || exit 1
  local results="$root/bench/eval/results/long_${name}.json"
  [ -f "$results" ] && cp "$results" "$carry/results.json"
  echo "$name" > "$carry/model_name"
  du -sh "$carry"/bin "$carry"/lib "$carry"/data.tar.xz
  [ -f "$carry/results.json" ] && du -sh "$carry/results.json"
  echo "carry folder: $(du -sm "$carry" | cut -f1) MiB (+ the tree; the device tool's limit is 64 MiB in all)"
}

run() {
  local slice="${1:-}"
  shift || true
  local model="${STEM_EVAL_MODEL:-}" logs="${OUT:-$state/logs}"
  [ -n "$model" ] && [ -f "$model/config.json" ] ||
    { echo "gpu.sh run: set STEM_EVAL_MODEL to the model folder on this machine (got '${model}')"; exit 2; }
  mkdir -p "$logs" "$state"
  export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ! ldconfig -p | grep -q 'libopenblas.so.0 '; then  # OpenBLAS under another name: point at it
    blas="$(find / -xdev -name 'libopenblas*.so*' 2> /dev/null | head -n 1)"
    [ -n "$blas" ] && ln -sf "$blas" "$carry/lib/libopenblas.so.0"
  fi
  ldd "$carry"/bin/* | grep "not found" | sort -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2> /dev/null

  if [ "$slice" = tests ]; then
    export STEM_TEST_REPORT="$logs/rel_errors.txt"
    local rc=0 t start
    for t in cuda_test_stem_variants cuda_test_token_logprob cuda_test_stem gpu_model_test_cuda_stem; do
      start=$SECONDS
      timeout 300 "$carry/bin/$t" > "$logs/$t.log" 2>&1 || rc=1
      echo "  $t: $((SECONDS - start)) s, $(grep -aE '^(test cases|All tests passed)' "$logs/$t.log" | tail -n 1)"
      grep -aE -A12 "FAILED" "$logs/$t.log" | head -n 40
    done
    return $rc
  fi

  # The prompts: unpacked once per session (kept in $state between calls).
  local sha
  sha="$(sha256sum "$carry/data.tar.xz" | cut -c1-16)"
  if [ "$(cat "$state/data.sha" 2> /dev/null)" != "$sha" ]; then
    rm -rf "$state/data" && mkdir -p "$state/data"
    local unxz=(xz -dc "$carry/data.tar.xz")  # without xz-utils, Python's lzma
    command -v xz > /dev/null ||
      unxz=(python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$carry/data.tar.xz")
    "${unxz[@]}" | tar -C "$state/data" -xf - || { echo "gpu.sh run: cannot unpack the prompts"; exit 1; }
    echo "$sha" > "$state/data.sha"
  fi
  local want have
  want="$(grep -o '"tokenizer_sha256": *"[0-9a-f]*"' "$state/data/index.json" | grep -o '[0-9a-f]\{64\}')"
  have="$(sha256sum "$model/tokenizer.json" | cut -d' ' -f1)"
  [ "$want" = "$have" ] ||
    { echo "gpu.sh run: the prompts were made with another tokenizer ($want) than $model's ($have)"; exit 1; }

  # The results so far: this session's, else the carried ones.
  local earlier=() name kept gpu
  name="$(basename "$model")"
  kept="$state/results_${name}.json"
  if [ -f "$kept" ]; then
    earlier=(--results "$kept")
  elif [ -f "$carry/results.json" ] && [ "$(cat "$carry/model_name" 2> /dev/null)" = "$name" ]; then
    earlier=(--results "$carry/results.json")
  fi
  gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)"
  local args=()
  case "$slice" in
    calibrate) args=(--tasks calibrate,timing,ppl) ;;
    32k) args=(--tasks calibrate,timing,ruler,code --lengths 32768 --limit 10) ;;
    slice) args=(--tasks calibrate,timing,ruler,code --lengths 32768,16384,8192 --limit 10) ;;
    full) args=(--tasks calibrate,timing,ppl,ruler,code) ;;
    *) echo "gpu.sh run: SLICE is tests, calibrate, 32k, slice or full (got '$slice')"; exit 2 ;;
  esac
  local start=$SECONDS rc
  "$carry/bin/stem_eval" --model "$model" --device "${STEM_EVAL_DEVICE:-cuda}" --data "$state/data" --json "$logs/results.json" \
    --time-budget "${STEM_EVAL_BUDGET:-540}" --gpu-name "${gpu:-none}" "${earlier[@]}" "${args[@]}" "$@" \
    > "$logs/stem_eval.log" 2>&1
  rc=$?
  [ -f "$logs/results.json" ] && cp "$logs/results.json" "$kept"
  grep -E "plan:|calibrate |time budget|error|\] \[warning\]" "$logs/stem_eval.log" | cut -c27- | tail -n 40
  if command -v python3 > /dev/null && [ -f "$logs/results.json" ]; then
    python3 "$root/bench/eval/report_long.py" "$logs/results.json" --table "$logs/tables.md" --check-scores \
      > /dev/null 2> "$logs/report.log" || tail -n 5 "$logs/report.log"
  fi
  echo "stem_eval: rc $rc, $((SECONDS - start)) s (log: stem_eval.log; results: results.json)"
  # The short table, last.
  awk '/summary \(density/ { on = 1; next } on && NF == 0 { on = 0 } on' "$logs/stem_eval.log"
  grep -E "long eval: .* records added" "$logs/stem_eval.log" | cut -c27-
  return $rc
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack [MODEL_DIR] | run tests|calibrate|32k|slice|full [stem_eval args]" >&2; exit 2 ;;
esac
