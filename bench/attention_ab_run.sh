#!/usr/bin/env bash
# One GPU-machine call that compares the prefill kernel of this tree with another checkout's (the
# "before"), same call, alternating runs: builds bench_stem (and this tree's prefill tests) for
# both, runs the tests under each STEM_PREFILL_SM90 mode named, then bench_stem for each side in
# turn, twice. Prepare the other checkout here first (it travels as an ignored folder):
#   rm -rf build-ab && mkdir -p build-ab/src && git archive <rev> | tar -x -C build-ab/src
# then carry build-ab. Usage: bench/attention_ab_run.sh [modes, default "4"] [min-len] [max-len]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
logs="${OUT:-$root/build-gpu/logs}"
mkdir -p "$logs"
modes="${1:-4}" min_len="${2:-32768}" max_len="${3:-131072}"
source "$root/scripts/gpu_common.sh"
gpu_info
build() {  # source dir, build dir, targets...
  local src="$1" dir="$2"
  shift 2
  build_kernels "$src" "$dir" "$logs/build.$(basename "$dir").log" "$@"
}
start=$(date +%s)
build "$root" "$root/build-gpu" bench_stem cuda_test_attention_prefill cuda_test_stem &
new_pid=$!
have_old=0
if [ -d "$root/build-ab/src" ]; then build "$root/build-ab/src" "$root/build-ab/b" bench_stem && have_old=1; fi
wait $new_pid || exit 1
echo "built in $(($(date +%s) - start)) s"
for m in $modes; do
  for t in cuda_test_attention_prefill cuda_test_stem; do
    STEM_PREFILL_SM90=$m "$root/build-gpu/tests/$t" > "$logs/test.$t.$m.log" 2>&1
    echo "mode $m $t: rc $? $(grep -E 'test cases' "$logs/test.$t.$m.log" | tail -n 1)"
  done
done
for round in 1 2; do
  if [ "$have_old" = 1 ]; then
    echo "== before, round $round"
    "$root/build-ab/b/bench/bench_stem" --min-len "$min_len" --max-len "$max_len" | grep "^stem"
  fi
  for m in $modes; do
    echo "== this tree, mode $m, round $round"
    STEM_PREFILL_SM90=$m "$root/build-gpu/bench/bench_stem" --min-len "$min_len" --max-len "$max_len" | grep "^stem"
  done
done
