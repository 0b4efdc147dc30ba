#!/usr/bin/env bash
# The main command: installs what is missing, builds, prepares the default model, and serves it
# over the OpenAI-compatible HTTP API on http://127.0.0.1:8000 (Ctrl-C stops it gracefully).
#   ./scripts/run.sh                      serve (extra arguments go to `stemserve serve`,
#                                         e.g. --port 9000 --api-key KEY)
#   ./scripts/run.sh generate "a prompt"  answer one prompt on stdout instead (no server)
#   ./scripts/run.sh --model NAME ...     another model that models/prepare/ knows (prepared once:
#                                         qwen2.5-coder-1.5b, qwen2.5-coder-0.5b; see
#                                         models/prepare/prepare_model.sh), or a model folder
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --model NAME|DIR, wherever it stands: taken out of the arguments, the rest go on as before.
name="" folder=""
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || { echo "run.sh: --model needs a name or a folder" >&2; exit 2; }
             if [ -d "$2" ]; then folder="$2"; else name="$2"; fi; shift 2 ;;
    --model=*) v="${1#--model=}"; if [ -d "$v" ]; then folder="$v"; else name="$v"; fi; shift ;;
    *) rest+=("$1"); shift ;;
  esac
done
set -- ${rest[@]+"${rest[@]}"}

"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh"
if [ -n "$folder" ]; then
  model="$folder"
elif [ -n "$name" ]; then
  model="$root/models/cache/$("$root/.venv/bin/python" "$root/models/prepare/convert_gguf.py" source --model "$name" --print folder)"
  STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_model.sh" "$name" --out "$model"
else
  model="${STEMSERVE_MODEL:-$root/models/cache/SmolLM2-135M-Instruct}"
  STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_default_model.sh" --out "$model"
fi
bin="${STEM_BUILD_DIR:-$root/build}/server/stemserve"

if [ "${1:-}" = generate ]; then
  shift
  prompt="${*:-What is the capital of France?}"
  exec "$bin" generate --model "$model" --chat --temperature 0 --max-tokens 128 --prompt "$prompt"
fi

port="${STEMSERVE_PORT:-8000}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --port) port="${args[i + 1]:-$port}" ;;
    --port=*) port="${args[i]#--port=}" ;;
  esac
done
cat >&2 <<EOM
stemserve: serving $(basename "$model") on http://127.0.0.1:$port (Ctrl-C to stop). Try, from another shell:
  curl http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 64, "temperature": 0}'
  API reference: docs/api.md
EOM
exec "$bin" serve --model "$model" "$@"
