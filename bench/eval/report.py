#!/usr/bin/env python3
"""The Stem accuracy evaluation's table (markdown) and plot (PNG) from stem_eval's JSON.

    report.py stem_eval.json [more.json ...] [--table table.md] [--png stem_accuracy.png]

(A result of the long-context evaluation, stem_eval --data, goes to report_long.py instead.)

More files add their passkey and perplexity records to the first one's methods (runs of the same
methods split over several processes, e.g. with stem_eval --methods-from and --methods).

One row per method: its block density on the attention prompt (the x axis of the plot), passkey
accuracy per prompt length, perplexity per document and its change against dense, and the mean
relative error of the attention output. The plot has one line per method family against density
(passkey accuracy, perplexity change, attention error), dense as the reference. matplotlib is
optional: without it only the table is written.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict

FAMILY_LABELS = {
    "stem": "Stem",
    "stem-no-bonus": "Stem w/o value bonus",
    "stem-no-decay": "Stem w/o position decay",
    "uniform-topk": "uniform top-k (plain score)",
    "sink-window": "sink + window",
    "xattention": "XAttention threshold",
}


def load(paths):
    with open(paths[0]) as f:
        res = json.load(f)
    for path in paths[1:]:
        with open(path) as f:
            more = json.load(f)
        for key in ("passkey", "perplexity"):
            res.setdefault(key, []).extend(more.get(key, []))
        # The title names every device the records came from (e.g. attention on the cpu, the rest on cuda).
        devices = res["device"].split(" + ")
        if more.get("device") and more["device"] not in devices:
            res["device"] = " + ".join(devices + [more["device"]])
        names = {d["name"] for d in res.get("documents", [])}
        res.setdefault("documents", []).extend(d for d in more.get("documents", []) if d["name"] not in names)
    return res


def summarize(res):
    """Per method: density, passkey accuracy by length, ppl by document, attention error."""
    rows = []
    passkey = defaultdict(lambda: defaultdict(list))
    for r in res.get("passkey", []):
        passkey[r["method"]][r["length"]].append(1.0 if r["correct"] else 0.0)
    ppl = defaultdict(dict)
    ppl_tail = defaultdict(dict)
    ppl_density = defaultdict(list)
    for r in res.get("perplexity", []):
        ppl[r["method"]][r["doc"]] = r["ppl"]
        if "density" in r:
            ppl_density[r["method"]].append(r["density"])
        if "ppl_tail" in r:
            ppl_tail[r["method"]][r["doc"]] = r["ppl_tail"]
    dense_name = next((m["name"] for m in res["methods"] if m["family"] == "dense"), None)
    for m in res["methods"]:
        name = m["name"]
        row = {
            "name": name,
            "family": m["family"],
            "target": m.get("target_density"),
            "density": m.get("density"),
            "knob": knob_text(m),
            "error": m.get("attention_error_mean"),
            "passkey": {length: sum(v) / len(v) for length, v in sorted(passkey[name].items())},
            "passkey_all": mean([x for v in passkey[name].values() for x in v]),
            "ppl": ppl[name],
            "ppl_tail": ppl_tail[name],
            "ppl_density": mean(ppl_density[name]),
        }
        if dense_name and ppl[dense_name] and ppl[name]:
            # Mean over documents of the perplexity's relative change against dense.
            row["ppl_change"] = mean([ppl[name][d] / ppl[dense_name][d] - 1 for d in ppl[name] if d in ppl[dense_name]])
            tails = [ppl_tail[name][d] / ppl_tail[dense_name][d] - 1 for d in ppl_tail[name] if d in ppl_tail[dense_name]]
            row["ppl_tail_change"] = mean(tails) if tails else None
        rows.append(row)
    return rows


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def knob_text(m):
    s = m.get("settings")
    if not s:
        return ""
    if m["family"] == "sink-window":
        return f"sink {s['sink_blocks']} + window {s['window_blocks']}"
    if m["family"] == "xattention":
        return f"tau {s['threshold']:.4g}"
    text = f"rate {s['budget_rate']:.3g}"
    if s["sink_blocks"] != 4 or s["window_blocks"] != 4:
        text += f", sink {s['sink_blocks']}, window {s['window_blocks']}"
    return text


def fmt(x, spec):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(res, rows):
    lengths = sorted({length for r in rows for length in r["passkey"]})
    docs = [d["name"] for d in res.get("documents", []) if any(d["name"] in r["ppl"] for r in rows)]
    tail = next((r["tail_from"] for r in res.get("perplexity", []) if "tail_from" in r), None)
    has_ppl = bool(docs)
    head = ["method", "knob", f"density @{res.get('attention_tokens', '?')}"]
    if lengths:
        head += [f"passkey {length // 1024}K" if length % 1024 == 0 else f"passkey {length}" for length in lengths]
        head += ["passkey all"]
    if has_ppl:
        head += [f"ppl {d}" for d in docs] + ["ppl vs dense", f"ppl from token {tail} vs dense", "density (ppl runs)"]
    head += ["attn error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["knob"], fmt(r["density"], ".1%")]
        if lengths:
            cells += [fmt(r["passkey"].get(length), ".0%") for length in lengths] + [fmt(r["passkey_all"], ".1%")]
        if has_ppl:
            cells += [fmt(r["ppl"].get(d), ".3f") for d in docs]
            cells += [fmt(r.get("ppl_change"), "+.2%"), fmt(r.get("ppl_tail_change"), "+.2%"), fmt(r["ppl_density"], ".1%")]
        cells += [fmt(r["error"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    # The attention error per sampled layer.
    layers = res.get("attention_layers")
    errs = {m["name"]: m.get("attention_error_by_layer") for m in res["methods"]}
    if layers and any(errs.values()):
        head = ["method"] + [f"layer {layer}" for layer in layers]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            e = errs.get(r["name"])
            if e and r["family"] != "dense":
                lines.append("| " + " | ".join([r["name"]] + [fmt(x, ".4f") for x in e]) + " |")
        text += "\nAttention output error per layer (relative to dense, sampled query blocks):\n\n" + "\n".join(lines) + "\n"
    return text


def plot(res, rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: no matplotlib: no plot", file=sys.stderr)
        return False
    longest = max((length for r in rows for length in r["passkey"]), default=None)
    for r in rows:
        r["passkey_longest"] = r["passkey"].get(longest)
    panels = [
        ("passkey_all", "passkey accuracy (all lengths)", lambda v: 100 * v, "%"),
        ("passkey_longest", f"passkey accuracy at {longest} tokens", lambda v: 100 * v, "%"),
        ("ppl_change", "perplexity vs dense", lambda v: 100 * v, "% change"),
        ("error", "attention output error (rel., mean of layers)", lambda v: v, ""),
    ]
    # Only the measures this run has (e.g. the attention stage alone has no passkey or perplexity).
    panels = [p for p in panels if any(r.get(p[0]) is not None for r in rows if r["family"] != "dense")]
    if not panels:
        print("report.py: nothing to plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4.8), squeeze=False)
    axes = axes[0]
    dense = next((r for r in rows if r["family"] == "dense"), None)
    for ax, (key, title, scale, unit) in zip(axes, panels):
        for family, label in FAMILY_LABELS.items():
            pts = sorted((r["density"], r[key]) for r in rows
                         if r["family"] == family and r["target"] and r.get(key) is not None and r["density"] is not None)
            if pts:
                ax.plot([100 * d for d, _ in pts], [scale(v) for _, v in pts], marker="o", label=label)
        default = [r for r in rows if r["family"] == "stem" and not r["target"] and r.get(key) is not None]
        for r in default:
            ax.scatter([100 * r["density"]], [scale(r[key])], marker="*", s=160, color="black", zorder=5,
                       label="Stem defaults" if r["name"] == "stem" else r["name"])
        if dense and dense.get(key) is not None and key != "error":  # dense's error is 0
            ax.axhline(scale(dense[key]), color="gray", linestyle="--", label="dense")
        ax.set_xlabel(f"block density at {res.get('attention_tokens', '?')} tokens (%)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if key == "error":
            ax.set_yscale("log") if any(r.get(key) for r in rows if r["family"] != "dense") else None
    axes[0].legend(fontsize=8)
    missing = [name for name, key in (("passkey", "passkey"), ("perplexity", "perplexity")) if not res.get(key)]
    note = f"; {' and '.join(missing)} not run" if missing else ""
    fig.suptitle(f"Stem accuracy on {res['model'].rstrip('/').split('/')[-1]} ({res['device']}{note})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    # The long-context evaluation's results (stem_eval --data) have their own report.
    first = next((x for x in sys.argv[1:] if x.endswith(".json")), None)
    if first:
        with open(first) as f:
            if json.load(f).get("kind") == "stem_eval_long":
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                import report_long

                return report_long.main()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--table")
    ap.add_argument("--png")
    a = ap.parse_args()
    res = load(a.json)
    rows = summarize(res)
    text = table(res, rows)
    print(text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text)
    if a.png and plot(res, rows, a.png):
        print(f"report.py: plot in {a.png}")


if __name__ == "__main__":
    main()
