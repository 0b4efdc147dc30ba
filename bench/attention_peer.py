#!/usr/bin/env python3
"""Peers for bench_attention: torch SDPA dense causal prefill on the same shapes (one L-token
prompt, 32 q heads over 8 KV heads, D 128, bf16), through the FlashAttention-2 backend and the
cuDNN backend, in TFLOP/s with bench_attention's count: 4 * Hq * D * L^2 / 2.

Tensors are laid out as a model holds them, [1, L, heads, D] seen as [1, heads, L, D]. GQA goes
through enable_gqa=True; a backend that refuses it gets K/V repeated to 32 heads (same FLOPs; the
table says so). Times are medians of CUDA-event-timed calls after a warm-up.

Usage: attention_peer.py [--ours bench_attention.json] [--json peers.json] [--max-len 131072]
With --ours, prints one markdown table with bench_attention's numbers beside the peers'.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D = 32, 8, 128


def median_ms(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(backend, q, k, v, reps):
    """(ms, how) for one backend; how says whether K/V had to be repeated for GQA."""
    def run(kk, vv, gqa):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)

    try:
        run(k, v, True)
        return median_ms(lambda: run(k, v, True), reps), "enable_gqa"
    except RuntimeError:
        pass
    kk, vv = k.repeat_interleave(HQ // HKV, dim=1), v.repeat_interleave(HQ // HKV, dim=1)
    try:
        run(kk, vv, False)
        return median_ms(lambda: run(kk, vv, False), reps), "kv repeated"
    except RuntimeError as e:
        return None, f"unsupported: {str(e).splitlines()[0][:80]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", help="bench_attention --json output to print beside the peers")
    ap.add_argument("--json", help="write the peers' numbers here")
    ap.add_argument("--max-len", type=int, default=131072)
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = []
    length = 8192
    while length <= args.max_len:
        flops = 4.0 * HQ * D * length * length / 2
        reps = int(min(30, max(3, 1e15 / 4 / flops)))

        def rand(heads):
            x = torch.empty(1, length, heads, D, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
            return x.transpose(1, 2)

        q, k, v = rand(HQ), rand(HKV), rand(HKV)
        row = {"len": length}
        for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            ms, how = measure(backend, q, k, v, reps)
            row[name] = {"ms": ms, "tflops": flops / ms * 1e-9 if ms else None, "how": how}
            shown = f"{flops / ms * 1e-9:7.1f} TFLOP/s ({ms:8.3f} ms, {how})" if ms else how
            print(f"L={length:<7} {name:5} {shown}", flush=True)
        rows.append(row)
        del q, k, v
        torch.cuda.empty_cache()
        length *= 2

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "results": rows}, f, indent=1)

    ours = {}
    if args.ours:
        with open(args.ours) as f:
            for r in json.load(f)["results"]:
                if r["op"] == "prefill_dense_causal":
                    ours[r["len"]] = r

    def cell(x):
        return f"{x:.0f}" if x else "-"

    print(f"\nDense causal prefill, {dev}: TFLOP/s = 4*Hq*D*L^2/2 / time (Hq 32, Hkv 8, D 128, bf16)")
    print("| length | ours (plan) | ours (router) | torch FA2 | torch cuDNN |")
    print("|---|---|---|---|---|")
    for r in rows:
        o = ours.get(r["len"], {})
        print(f"| {r['len'] // 1024}K | {cell(o.get('tflops'))} | {cell(o.get('router_tflops'))} | "
              f"{cell(r['fa2']['tflops'])} | {cell(r['cudnn']['tflops'])} |")


if __name__ == "__main__":
    main()
