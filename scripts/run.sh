#!/usr/bin/env bash
# The main command: installs what is missing, builds, prepares the default model, and serves it
# over the OpenAI-compatible HTTP API on http://127.0.0.1:8000 (Ctrl-C stops it gracefully).
#   ./scripts/run.sh                      serve (extra arguments go to `stemserve serve`,
#                                         e.g. --port 9000 --api-key KEY)
#   ./scripts/run.sh generate "a prompt"  answer one prompt on stdout instead (no server)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh"
model="${STEMSERVE_MODEL:-$root/models/cache/SmolLM2-135M-Instruct}"
STEM_PYTHON="$root/.venv/bin/python" "$root/models/prepare/prepare_default_model.sh" --out "$model"
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
