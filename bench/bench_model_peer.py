#!/usr/bin/env python3
"""The peer for bench_model: Hugging Face transformers on the same config, random bf16 weights,
SDPA attention, on the same GPU in the same device call (run after bench_model has exited, so
each has the whole card).

    bench_model_peer.py [--config F] [--ttft 8192,32768,...] [--decode-batches 1,8]
                        [--decode-context 1024] [--json FILE]

TTFT: one forward of the whole prompt (transformers does not chunk), logits of the last position
only (logits_to_keep=1), KV cache kept as a server would (DynamicCache), synchronised wall time;
median of 3 runs up to 32K tokens, 1 run beyond (each long run is tens of seconds of device time).
Decode: steps of B sequences after a prefill of `context` tokens each, wall time per step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build_model(config_path: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = json.load(open(config_path))
    kwargs = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_cfg = AutoConfig.for_model(cfg["model_type"], **kwargs)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
    return model.eval(), cfg


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/llama-3.1-8b.json")
    ap.add_argument("--ttft", default="8192,32768,65536,131072")
    ap.add_argument("--decode-batches", default="1,8")
    ap.add_argument("--decode-context", type=int, default=1024)
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    import transformers
    t0 = time.perf_counter()
    model, cfg = build_model(a.config)
    vocab = cfg["vocab_size"]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}: model ready in {time.perf_counter() - t0:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, sdpa", flush=True)
    out = {"peer": f"transformers {transformers.__version__} sdpa bf16", "torch": torch.__version__,
           "device": torch.cuda.get_device_name(), "ttft": [], "decode": []}
    g = torch.Generator(device="cuda").manual_seed(1)

    def prompt(b: int, n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (b, n), device="cuda", generator=g)

    model(prompt(1, 2048), logits_to_keep=1)  # warm-up: kernels, cuBLAS handles
    for n in [int(x) for x in a.ttft.split(",") if x]:
        runs = 3 if n <= 32768 else 1
        ms = []
        for _ in range(runs):
            ids = prompt(1, n)
            try:
                ms.append(timed(lambda: model(ids, logits_to_keep=1, use_cache=True)))
            except torch.OutOfMemoryError as e:
                print(f"ttft {n}: out of memory ({e})", flush=True)
                break
            torch.cuda.empty_cache()
        if ms:
            ms.sort()
            print(f"ttft {n:>7} tokens: {ms[len(ms) // 2]:10.1f} ms ({runs} runs)", flush=True)
            out["ttft"].append({"tokens": n, "ms": ms[len(ms) // 2], "runs": len(ms)})

    for b in [int(x) for x in a.decode_batches.split(",") if x]:
        res = model(prompt(b, a.decode_context), use_cache=True, logits_to_keep=1)
        cache, tok = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for i in range(12):
            def step():
                nonlocal tok
                r = model(tok, past_key_values=cache, use_cache=True)
                tok = r.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(timed(step))
        steps = sorted(steps[2:])
        print(f"decode batch {b:>3} context {a.decode_context}: {steps[len(steps) // 2]:8.2f} ms/step", flush=True)
        out["decode"].append({"batch": b, "context": a.decode_context, "ms": steps[len(steps) // 2]})
        del cache, res
        torch.cuda.empty_cache()

    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
