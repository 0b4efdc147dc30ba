#!/usr/bin/env bash
# The Stem accuracy evaluation in one command (issue 7; docs/stem.md "Accuracy"): builds stem_eval
# if needed, runs it, and writes the table (markdown) and the plot (PNG) from its JSON.
#
#   bench/eval/run.sh [--device cpu|cuda] [--quick] [--out DIR] [--bin PATH] [--no-install] [-- stem_eval args]
#
#   --quick       dense and one Stem setting on 1K-token prompts: under a minute on 2 CPU cores
#                 (the CTest bench/eval_quick runs this); the full run wants a GPU (--device cuda)
#   --out DIR     results: stem_eval.json, stem_eval.log, table.md, stem_accuracy.png
#                 (default build-eval/eval-quick or build-eval/eval-full)
#   --bin PATH    a stem_eval already built (the GPU machine's carried binary); otherwise this builds
#                 one in $STEM_BUILD_DIR (default build-eval; CUDA when --device cuda)
#   --no-install  do not pip-install matplotlib into .venv (the plot is then skipped if it is missing)
# Exit 77: the model folder is missing (scripts/test.sh or models/prepare/ makes it).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
device=cpu quick=0 out="" bin="" install=1 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
model="${STEM_EVAL_MODEL:-$root/models/cache/SmolLM2-135M-Instruct}"
if [ ! -f "$model/config.json" ]; then
  echo "run.sh: no model at $model (scripts/test.sh or models/prepare/prepare_default_model.sh makes it): skipped"
  exit 77
fi
build="${STEM_BUILD_DIR:-$root/build-eval}"
[ -n "$out" ] || out="$build/eval-$([ $quick = 1 ] && echo quick || echo full)"
mkdir -p "$out"

if [ -z "$bin" ]; then
  cuda=OFF
  [ "$device" = cuda ] && cuda=ON
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEM_CUDA=$cuda > "$out/build.log" 2>&1 &&
    cmake --build "$build" -j "${STEM_JOBS:-2}" --target stem_eval >> "$out/build.log" 2>&1 ||
    { tail -n 30 "$out/build.log"; echo "run.sh: build failed (log: $out/build.log)"; exit 1; }
  bin="$build/bench/stem_eval"
fi

args=(--model "$model" --device "$device" --json "$out/stem_eval.json")
[ $quick = 1 ] && args+=(--quick)
start=$SECONDS
"$bin" "${args[@]}" "${extra[@]}" 2>&1 | tee "$out/stem_eval.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || { echo "run.sh: stem_eval failed (rc $rc)"; exit "$rc"; }
echo "run.sh: stem_eval took $((SECONDS - start)) s"

# The table and the plot. matplotlib is optional: bench/eval/requirements.txt pins it.
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
if [ $install = 1 ] && ! "$python" -c "import matplotlib" 2> /dev/null; then
  "$python" -m pip install -q -r "$root/bench/eval/requirements.txt" || echo "run.sh: matplotlib not installed: no plot"
fi
"$python" "$root/bench/eval/report.py" "$out/stem_eval.json" --table "$out/table.md" --png "$out/stem_accuracy.png" ||
  { echo "run.sh: report failed"; exit 1; }
