#!/usr/bin/env python3
"""Peers for bench_stem: torch SDPA dense causal prefill (cuDNN and FlashAttention-2 backends) on
the same shapes and lengths (one L-token prompt, 32 q heads over 8 KV heads, D 128, bf16), timed
the way bench/attention_peer.py times them (its measure(): medians of CUDA-event-timed calls), and
a block-sparse peer: compiled FlexAttention over a Stem-shaped mask (stem_flex_peer.py); then one
markdown table with bench_stem's numbers beside them and, with --png, a plot of attention time
against prompt length.

Usage: bench_stem_peer.py --ours stem.json [--json peers.json] [--png stem.png]
                          [--min-len 16384] [--max-len 131072]
"""
import argparse
import json
import os
import sys

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_peer import D, HKV, HQ, measure, median_ms  # noqa: E402
from stem_flex_peer import FlexStem  # noqa: E402


def peers(min_len, max_len):
    rows = []
    length = min_len
    while length <= max_len:
        flops = 4.0 * HQ * D * length * length / 2
        reps = int(min(20, max(3, 4e14 / flops)))

        def rand(heads):
            x = torch.empty(1, length, heads, D, dtype=torch.bfloat16, device="cuda").uniform_(-1, 1)
            return x.transpose(1, 2)

        q, k, v = rand(HQ), rand(HKV), rand(HKV)
        row = {"len": length}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            ms, how = measure(backend, q, k, v, reps)
            row[name] = {"ms": ms, "tflops": flops / ms * 1e-9 if ms else None, "how": how}
            print(f"L={length:<7} {name:5} " + (f"{ms:9.3f} ms ({how})" if ms else how), flush=True)
        del q, k, v
        try:
            flex = FlexStem(length)
            ms = median_ms(flex, reps, warmup=2)
            row["flex"] = {"ms": ms, "density": flex.density, "tflops_listed": flex.flops / ms * 1e-9}
            print(f"L={length:<7} flex  {ms:9.3f} ms (Stem-shaped mask, density {100 * flex.density:.1f}%)", flush=True)
            del flex
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is a table cell, not a failure
            row["flex"] = {"ms": None, "how": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"}
            print(f"L={length:<7} flex  failed: {row['flex']['how']}", flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
        length *= 2
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="bench_stem --json output")
    ap.add_argument("--json", help="write the peers' numbers here")
    ap.add_argument("--png", help="draw attention time against prompt length here")
    ap.add_argument("--min-len", type=int, default=16384)
    ap.add_argument("--max-len", type=int, default=131072)
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = peers(args.min_len, args.max_len)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "results": rows}, f, indent=1)
    with open(args.ours) as f:
        ours = {r["len"]: r for r in json.load(f)["results"] if r["op"] == "stem_prefill"}

    def ms(x):
        return f"{x:.2f}" if x is not None else "-"

    print(f"\nStem prefill attention, one layer, {dev}: Hq 32, Hkv 8, D 128, bf16, one prompt of L tokens")
    print("| length | density | estimate | select | attention | Stem total | est+sel | TFLOP/s listed "
          "| ours dense | torch cuDNN | torch FA2 | torch flex, Stem mask | vs cuDNN | vs flex | vs ours dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = ours.get(r["len"])
        if not o:
            continue
        cudnn, fa2, flex = r["cudnn"]["ms"], r["fa2"]["ms"], r["flex"]["ms"]
        print(f"| {r['len'] // 1024}K | {100 * o['density']:.1f}% | {ms(o['estimate_ms'])} ms | {ms(o['select_ms'])} ms "
              f"| {ms(o['attention_ms'])} ms | {ms(o['total_ms'])} ms "
              f"| {100 * (o['estimate_ms'] + o['select_ms']) / o['total_ms']:.2f}% | {o['tflops_listed']:.0f} "
              f"| {ms(o['dense_ms'])} ms | {ms(cudnn)} ms | {ms(fa2)} ms | {ms(flex)} ms "
              f"| {cudnn / o['total_ms'] if cudnn else 0:.2f}x | {flex / o['total_ms'] if flex else 0:.2f}x "
              f"| {o['dense_ms'] / o['total_ms']:.2f}x |")

    if args.png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("no matplotlib: no plot")
            return
        lens = [r["len"] for r in rows if r["len"] in ours]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(lens, [ours[n]["total_ms"] for n in lens], "o-", label="Stem (estimate + select + attention)")
        ax.plot(lens, [ours[n]["dense_ms"] for n in lens], "s-", label="ours, dense")
        for key, label in (("cudnn", "torch SDPA cuDNN, dense"), ("fa2", "torch SDPA FA2, dense"),
                           ("flex", "torch FlexAttention, Stem-shaped mask")):
            pts = [(n, next(r[key]["ms"] for r in rows if r["len"] == n)) for n in lens]
            pts = [(n, t) for n, t in pts if t]
            if pts:
                ax.plot([n for n, _ in pts], [t for _, t in pts], "^--", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lens, [f"{n // 1024}K" for n in lens])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("one layer's prefill attention (ms)")
        ax.set_title(f"Llama-3.1-8B heads (32 q / 8 kv, D 128), bf16, {dev}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
