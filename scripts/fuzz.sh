#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan) into build-fuzz/ (or
# $STEM_FUZZ_BUILD_DIR) and runs each for SECONDS (default 60), one per core at a time, starting
# from its seed corpus (tests/fuzz/corpus/<target>, copied; what the run adds stays in the build
# folder). A crash, a sanitizer report, a timeout or running out of memory fails the script; the
# input that did it is in build-fuzz/fuzz/artifacts/<target>/.
#   scripts/fuzz.sh                      # each target 60 s
#   scripts/fuzz.sh 20                   # each target 20 s (CI)
#   scripts/fuzz.sh 600 fuzz_tokenizer   # one target 10 minutes
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_safetensors fuzz_config fuzz_request fuzz_tokenizer fuzz_chat_template fuzz_json_schema
  fuzz_regex fuzz_gbnf fuzz_tool_calls)
build="${STEM_FUZZ_BUILD_DIR:-$root/build-fuzz}"
source "$root/scripts/ccache_env.sh"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTEM_CUDA=OFF \
  -DSTEM_FUZZ=ON -DSTEM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "${STEM_JOBS:-$(nproc)}" --target "${targets[@]}"

# Inputs as large as a request body or a config may usefully be; the chat template and request
# targets get more room, so that nesting and long conversations are reached.
max_len() {
  case "$1" in
    fuzz_request | fuzz_chat_template) echo 16384 ;;
    fuzz_safetensors) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

# The targets run side by side, one per core (STEM_JOBS; each libFuzzer process is single-threaded),
# so a run takes about ceil(targets / cores) · SECONDS.
run_target() {
  local t=$1 work="$build/fuzz/corpus/$1" artifacts="$build/fuzz/artifacts/$1" log="$build/fuzz/$1.log"
  local start=$SECONDS execs
  mkdir -p "$work" "$artifacts"
  cp -n "$root/tests/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
  echo "fuzz.sh: $t for ${seconds}s (log $log)"
  # One input may take up to 10 s; memory is capped at 2 GiB. ASan's leak check is off: the
  # targets keep their fixtures (models, tokenizers) in statics on purpose.
  if ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}" UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}" \
      "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz.sh: $t passed: $((SECONDS - start)) s, $execs inputs, corpus $(ls "$work" | wc -l) files"
  else
    echo "fuzz.sh: $t FAILED after $((SECONDS - start)) s; the last lines of $log:"
    tail -n 40 "$log"
    return 1
  fi
}

parallel="${STEM_JOBS:-$(nproc)}"
pids=()
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
  run_target "$t" &
  pids+=($!)
done
passed=0
for pid in "${pids[@]}"; do
  if wait "$pid"; then passed=$((passed + 1)); fi
done
status=0
((passed == ${#targets[@]})) || status=1
echo "fuzz.sh: ${#targets[@]} targets: $passed passed, $((${#targets[@]} - passed)) failed, ${seconds} s each, $parallel at a time"
exit $status
