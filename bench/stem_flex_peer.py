#!/usr/bin/env python3
"""A block-sparse peer for Stem's attention: torch FlexAttention over a Stem-shaped block mask.

The mask has Stem's shape exactly as DESIGN.md §3 gives it (128-token blocks, the position-decay
budget k(i) with alpha 0.7, 4 sink and 4 window blocks, one selection per query head), with the
top-k(i) taken over random scores instead of Stem's estimate: the peer computes the same number
of blocks in the same pattern of row lengths, which is what its time depends on. FlexAttention
skips the blocks a BlockMask leaves out and applies the causal mask inside the diagonal blocks
only (they are its "partial" blocks; every other kept block is "full").

    stem_flex_peer.py [--lengths 16384,...,131072]     # one layer, median ms per length

Imported by bench_stem_peer.py (a column beside cuDNN) and prefill_work_peer.py.
"""
import argparse
import math

import torch

BLOCK = 128
SINK, WINDOW, ALPHA = 4, 4, 0.7


def start_budget(nb):
    """k_s, as models/stem_policy.cc computes it (Python's int() of a double)."""
    if nb < 56:
        ks = nb
    elif nb < 160:
        ks = int(0.2 * nb + 30)
    else:
        ks = int(0.1 * nb) + 30
    return max(1, min(ks, nb))


def row_budgets(nb):
    ks = start_budget(nb)
    span = nb - ks - 1
    out = []
    for i in range(nb):
        if i < ks:
            out.append(ks)
            continue
        frac = (i - ks) / span if span > 0 else 0.0
        out.append(max(1, min(ks, math.floor(ks + frac * (ALPHA - 1.0) * ks))))
    return out


def stem_selection(length, heads, device, seed=0):
    """[heads, nb, nb] bool: the kept key blocks of each query block, per query head."""
    nb = (length + BLOCK - 1) // BLOCK
    gen = torch.Generator(device=device).manual_seed(seed)
    scores = torch.rand(heads, nb, nb, generator=gen, device=device)
    i = torch.arange(nb, device=device).view(nb, 1)
    j = torch.arange(nb, device=device).view(1, nb)
    causal = j <= i
    scores = scores.masked_fill(~causal, -1.0)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.argsort(order, dim=-1)
    k = torch.tensor(row_budgets(nb), device=device).view(nb, 1)
    keep = (rank < k) & causal
    keep |= (j < SINK) & causal
    keep |= (j <= i) & (j > i - WINDOW)
    return keep


def block_mask(keep, length):
    """FlexAttention's BlockMask for a [heads, nb, nb] selection: the diagonal block is partial
    (causal inside), every other kept block full."""
    from torch.nn.attention.flex_attention import BlockMask

    heads, nb, _ = keep.shape
    device = keep.device
    diag = torch.eye(nb, dtype=torch.bool, device=device).expand(heads, nb, nb)
    full = keep & ~diag
    full_num = full.sum(-1, dtype=torch.int32)
    full_idx = torch.argsort((~full).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    part_num = torch.ones(heads, nb, dtype=torch.int32, device=device)
    part_idx = torch.zeros(heads, nb, nb, dtype=torch.int32, device=device)
    part_idx[:, :, 0] = torch.arange(nb, dtype=torch.int32, device=device)

    def causal(b, h, q, kv):
        return q >= kv

    return BlockMask.from_kv_blocks(part_num[None], part_idx[None], full_num[None], full_idx[None],
                                    BLOCK_SIZE=BLOCK, mask_mod=causal, seq_lengths=(length, length))


def density(keep):
    nb = keep.shape[-1]
    return keep.sum().item() / (keep.shape[0] * nb * (nb + 1) / 2)


class FlexStem:
    """One layer's Stem-shaped attention through compiled FlexAttention (Hq 32, Hkv 8, D 128)."""

    def __init__(self, length, hq=32, hkv=8, d=128, seed=0, device="cuda", keep=None):
        from torch.nn.attention.flex_attention import flex_attention

        self.flex = torch.compile(flex_attention, dynamic=False)
        self.keep = stem_selection(length, hq, device, seed) if keep is None else keep
        self.mask = block_mask(self.keep, length)
        self.density = density(self.keep)
        g = torch.Generator(device=device).manual_seed(seed + 1)

        def rand(heads):
            x = torch.empty(1, length, heads, d, dtype=torch.bfloat16, device=device)
            return x.uniform_(-1, 1, generator=g).transpose(1, 2)

        self.q, self.k, self.v = rand(hq), rand(hkv), rand(hkv)
        # FLOPs on the kept blocks, the diagonal ones counted whole (as bench_stem's "listed").
        self.flops = 4.0 * d * BLOCK * BLOCK * self.keep.sum().item()

    def __call__(self):
        return self.flex(self.q, self.k, self.v, block_mask=self.mask, enable_gqa=True)


def check_small(device="cuda"):
    """The mask against a dense reference at 2K tokens (a third of the causal blocks kept at
    random, the diagonal always: Stem's schedule keeps every block of so short a prompt): the same
    output as SDPA with the token-level mask the selection implies."""
    length, nb = 2048, 2048 // BLOCK
    g = torch.Generator(device=device).manual_seed(7)
    keep = torch.rand(32, nb, nb, generator=g, device=device) < 0.33
    keep = (keep | torch.eye(nb, dtype=torch.bool, device=device)) & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
    f = FlexStem(length, device=device, keep=keep)
    out = f().float()
    tok = f.keep.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :length, :length]
    tok &= torch.ones(length, length, dtype=torch.bool, device=device).tril()
    kk = f.k.repeat_interleave(4, dim=1).float()
    vv = f.v.repeat_interleave(4, dim=1).float()
    ref = torch.nn.functional.scaled_dot_product_attention(f.q.float(), kk, vv, attn_mask=tok[None])
    return (out - ref).abs().max().item()


def main():
    from attention_peer import median_ms

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="16384,32768,65536,131072")
    args = ap.parse_args()
    print(f"flex check at 2K against SDPA with the token mask: max |diff| {check_small():.2e}")
    for length in map(int, args.lengths.split(",")):
        f = FlexStem(length)
        ms = median_ms(f, 5, warmup=2)
        print(f"L={length:<7} density {100 * f.density:.1f}%  flex {ms:.2f} ms  {f.flops / ms * 1e-9:.0f} TFLOP/s on the kept blocks")
        del f
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
