#!/usr/bin/env bash
# One GPU-machine call: stemserve serve on the Llama-3.1-8B shape with random weights (a small
# test tokenizer, vocab 4008) and the open-loop load generator at several arrival rates.
# Needs build-gpumodel-carry/ (scripts/gpu_model_test.sh pack) carried. Results go to $OUT.
# Environment: RATES, DURATION, PROMPT_LEN, OUTPUT_LEN (the load), BATCHED_TOKENS (the server's
# --max-num-batched-tokens, default 8192; 0 is the server's own default).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$root/build-gpumodel-carry"
"$root/scripts/gpu_model_test.sh" unpack || exit 1
out="${OUT:-/tmp/load}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
model="$(mktemp -d)"
cp "$root"/tests/fixtures/tokenizers/llama3/tokenizer*.json "$root"/tests/fixtures/tokenizers/llama3/generation_config.json "$model/"
python3 -c "
import json
c = json.load(open('$root/bench/configs/llama-3.1-8b.json'))
c.update(vocab_size=4008, bos_token_id=4000, eos_token_id=[4001, 4007])
json.dump(c, open('$model/config.json', 'w'))"
"$carry/bin/stemserve" serve --model "$model" --device cuda --load-format dummy --port 8000 \
  --max-num-seqs 256 --max-num-batched-tokens "${BATCHED_TOKENS:-8192}" --max-model-len 32768 --max-queue 4096 \
  --log-level warn > "$out/server.log" 2>&1 &
server=$!
python3 - << 'PY' || { echo "server did not come up"; tail -n 20 "$out/server.log"; kill $server; exit 1; }
import time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2); break
    except Exception: time.sleep(0.5)
else: raise SystemExit(1)
PY
nvidia-smi --query-gpu=name --format=csv,noheader
for rate in ${RATES:-2 8 16 32}; do
  python3 "$root/bench/load_gen.py" --rate "$rate" --duration "${DURATION:-30}" --prompt-len "${PROMPT_LEN:-1024}" \
    --output-len "${OUTPUT_LEN:-128}" --json "$out/load_$rate.json"
done
kill -TERM $server; wait $server
