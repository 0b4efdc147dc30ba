#!/usr/bin/env bash
# The Stem accuracy evaluation in one command (issue 7; docs/stem.md "Accuracy"): builds stem_eval
# if needed, runs it, and writes the table (markdown) and the plot (PNG) from its JSON.
#
#   bench/eval/run.sh [--device cpu|cuda] [--quick] [--out DIR] [--bin PATH] [--no-install] [-- stem_eval args]
#
#   --quick       dense and one Stem setting on 1K-token prompts, through both harnesses (issue 7's
#                 attention stage; issue 21's generated prompts: perplexity in chunks, niah_single),
#                 then check_quick.py asserts the figures against quick_expected.json (the CTest
#                 bench/eval_quick runs this; about 3 minutes of CPU time on 2 cores)
#                 The long-context evaluation itself: bench/eval/gpu.sh (the GPU machine)
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
# Quick: issue 7's attention stage only (its passkey and perplexity are the long harness's below).
[ $quick = 1 ] && args+=(--quick --tasks attention)
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

if [ $quick = 1 ]; then
  if ! "$python" -c "import tokenizers, jinja2" 2> /dev/null; then
    echo "run.sh: $python lacks the tokenizers and jinja2 packages (scripts/bootstrap.sh installs them): the long-context part is skipped"
    exit 77
  fi
  # The long-context harness on a tiny slice: prompts generated for the model's tokenizer (the
  # tokenizers and jinja2 packages of .venv), perplexity in chunks of 512, niah_single at 1K.
  "$python" "$root/bench/eval/make_tasks.py" --model "$model" --out "$out/tasks" --lengths 1024 --per-task 1 \
    --tasks niah_single --doc-tokens 1024 --docs 1 --haystack-tokens 20000 2> "$out/make_tasks.log" ||
    { tail -n 20 "$out/make_tasks.log"; echo "run.sh: make_tasks.py failed"; exit 1; }
  start=$SECONDS
  "$bin" --model "$model" --device "$device" --data "$out/tasks" --quick --tasks ppl,niah_single --chunk 512 \
    --batch 2 --json "$out/long.json" > "$out/long.log" 2>&1 ||
    { tail -n 30 "$out/long.log"; echo "run.sh: stem_eval --data failed"; exit 1; }
  tail -n 6 "$out/long.log"
  echo "run.sh: stem_eval --data took $((SECONDS - start)) s"
  "$python" "$root/bench/eval/check_quick.py" --attention "$out/stem_eval.json" --long "$out/long.json" ||
    { echo "run.sh: the quick figures are off (bench/eval/check_quick.py)"; exit 1; }
fi
