#!/usr/bin/env python3
"""The tensor-core work of a Stem prefill, done back to back with torch's kernels: a sustained-load
peer for bench_model's time to first token.

For an L-token prompt of the Llama-3.1-8B shape in chunks of C tokens (bench_model's defaults),
in the order a prefill runs them, with no other work between:
  1. GEMMs: every chunk through every layer's qkv, o, gate_up and down products (torch.matmul,
     cuBLAS; random bf16 weights of the model's shapes, one layer's set reused);
  2. dense attention of the dense layers (0 and 1): torch SDPA cuDNN, causal over the whole prompt
     (the same work as chunk after chunk over the prompt so far);
  3. the other layers' attention: compiled FlexAttention over a Stem-shaped block mask
     (stem_flex_peer.py), one layer after another.
Each part is timed with CUDA events after a warm-up. Under this load the card meets its power limit
and lowers its clock, so these are the rates it sustains, not burst rates; the device script samples
the clock beside it. The memory-bound ops (norms, SwiGLU, RoPE, K/V writes) are not in the sum.

    prefill_work_peer.py [--len 131072] [--chunk 16384] [--json out.json]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stem_flex_peer import FlexStem  # noqa: E402

HIDDEN, INTER, HQ, HKV, D, LAYERS, DENSE_LAYERS = 4096, 14336, 32, 8, 128, 32, 2


def timed_ms(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--len", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    length, chunk = a.len, a.chunk
    chunks = (length + chunk - 1) // chunk
    torch.manual_seed(0)
    dev = "cuda"

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, device=dev) * std).to(torch.bfloat16)

    w = {"qkv": randn((HQ + 2 * HKV) * D, HIDDEN, std=0.02), "o": randn(HIDDEN, HQ * D, std=0.02),
         "gate_up": randn(2 * INTER, HIDDEN, std=0.02), "down": randn(HIDDEN, INTER, std=0.02)}
    x = randn(chunk, HIDDEN)
    attn = randn(chunk, HQ * D)
    act = randn(chunk, INTER)
    outs = {k: torch.empty(chunk, v.shape[0], dtype=torch.bfloat16, device=dev) for k, v in w.items()}
    ins = {"qkv": x, "o": attn, "gate_up": x, "down": act}

    def gemms():
        for _ in range(chunks):
            for _ in range(LAYERS):
                for k in ("qkv", "o", "gate_up", "down"):
                    torch.matmul(ins[k], w[k].t(), out=outs[k])

    gemm_flops = 2.0 * chunks * chunk * LAYERS * sum(v.numel() for v in w.values())

    q = randn(1, length, HQ, D).transpose(1, 2)
    k = randn(1, length, HKV, D).transpose(1, 2)
    v = randn(1, length, HKV, D).transpose(1, 2)
    kk, vv = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)

    def dense():
        for _ in range(DENSE_LAYERS):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    dense_flops = DENSE_LAYERS * 4.0 * HQ * D * length * length / 2

    flex = FlexStem(length)

    def sparse():
        for _ in range(LAYERS - DENSE_LAYERS):
            flex()

    sparse_flops = (LAYERS - DENSE_LAYERS) * flex.flops

    # Warm-up: compile FlexAttention, pick cuBLAS/cuDNN plans.
    flex()
    dense()
    for kname in w:
        torch.matmul(ins[kname], w[kname].t(), out=outs[kname])
    torch.cuda.synchronize()

    res = {"len": length, "chunk": chunk, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "stem_density": flex.density}
    for name, fn, flops in (("gemms", gemms, gemm_flops), ("dense_attention", dense, dense_flops),
                            ("stem_attention_flex", sparse, sparse_flops)):
        ms = timed_ms(fn)
        res[name] = {"ms": ms, "pflop": flops * 1e-15, "tflops": flops / ms * 1e-9}
        print(f"{name:20} {ms:8.1f} ms  {flops * 1e-15:.3f} PFLOP  {flops / ms * 1e-9:.0f} TFLOP/s", flush=True)
    total = sum(res[n]["ms"] for n in ("gemms", "dense_attention", "stem_attention_flex"))
    res["total_ms"] = total
    print(f"{'sum':20} {total:8.1f} ms  (Stem density {100 * flex.density:.1f}%; memory-bound ops not included)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    with torch.no_grad():
        main()
