#!/usr/bin/env bash
# The main command: installs what is missing, builds, prepares the default model, and runs it.
# Arguments replace the default prompt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh"
model="${STEMSERVE_MODEL:-$root/models/cache/SmolLM2-135M-Instruct}"
STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_default_model.sh" --out "$model"
prompt="${*:-What is the capital of France?}"
exec "${STEM_BUILD_DIR:-$root/build}/server/stemserve" generate --model "$model" --chat --temperature 0 \
  --max-tokens 128 --prompt "$prompt"
