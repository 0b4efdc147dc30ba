#!/usr/bin/env python3
"""Tables (markdown) and the Pareto plot (PNG) of the long-context evaluation (stem_eval --data;
issue 21; docs/stem.md "Long-context accuracy").

    report_long.py results.json [more.json ...] [--table table.md] [--png stem_pareto.png]
                   [--check-scores] [--length 32768]

Several files merge: records keyed by method × task × length × index, a later file's replacing an
earlier one's; methods by name (the first file's description wins). Per method: its knob and the
density it was calibrated to, the attention time and block density of one prefill of the
calibration prompt (timing records), RULER's mean string_match_all per length over the six tasks
(with the number of answers it rests on), next-line completion's exact match and edit similarity,
and perplexity's mean change against dense over the documents. The plot puts each method's RULER
score at the longest length (and perplexity, and the code task) against its attention time, with
the Pareto front. --check-scores recomputes every record's score from its stored prediction with
scoring.py and fails on any difference from stem_eval's.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scoring  # noqa: E402

RULER = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe"]
FAMILIES = {
    "dense": "dense",
    "stem": "Stem (paper schedule, rate-scaled)",
    "stem-hpc": "Stem, reference HPC point (stride 16, λ 0.3, α 1)",
    "stem-no-bonus": "Stem w/o value bonus",
    "stem-no-decay": "Stem w/o position decay",
    "uniform-topk": "uniform top-k (plain score)",
    "xattention": "XAttention-style threshold",
    "stem-mass": "threshold on Stem's score (value bonus kept)",
    "stem-causal": "Stem, causal schedule (k(i) = k_s of i + 1 blocks)",
    "stem-mass-fine": "threshold on Stem's score, stride 4",
    "stem-mass-deep": "threshold on Stem's score, 4 dense layers",
    "stem-mass-tail": "threshold on Stem's score, last 2 query blocks dense",
    "stem-mass-tail4": "threshold on Stem's score, last 4 query blocks dense",
    "sink-window": "sink + window",
    "stem-adaptive": "Stem adaptive (threshold within the decay envelope)",
}


def load(paths):
    head, methods, records = None, {}, {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("kind") != "stem_eval_long":
            sys.exit(f"report_long.py: {path} is not a stem_eval --data result")
        if head is None:
            head = {k: v for k, v in doc.items() if k not in ("methods", "records", "sessions")}
        for m in doc.get("methods", []):
            methods.setdefault(m["name"], m)
        for r in doc.get("records", []):
            records[(r["method"], r["task"], r["length"], r["index"])] = r
    return head, list(methods.values()), list(records.values())


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def fmt(x, spec, none="–"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def knob_text(m):
    s = m.get("settings")
    if not s:
        return ""
    if m["family"] == "sink-window":
        text = f"sink {s['sink_blocks']} + window {s['window_blocks']}"
    elif m["family"] in ("xattention", "stem-adaptive"):
        text = f"τ {s['threshold']:.4g}"
        if m["family"] == "stem-adaptive":
            text += f", rate {s['budget_rate']:.3g}"
    else:
        text = f"rate {s['budget_rate']:.4g}"
        if "k_s" in m.get("calibration", {}):
            text += f" (k_s {m['calibration']['k_s']})"
    return text


def summarize(methods, records):
    by = defaultdict(list)
    for r in records:
        by[(r["method"], r["task"])].append(r)
    # The baseline: bf16 dense ("dense") where it ran, else the first dense method (e.g. "dense+fp8").
    names = [m["name"] for m in methods if m["family"] == "dense"]
    dense = "dense" if "dense" in names else next(iter(names), None)
    dense_nll = {r["doc"]: r["nll"] for r in by.get((dense, "ppl"), [])}
    rows = []
    for m in methods:
        name = m["name"]
        row = {"name": name, "family": m["family"], "target": m.get("target_density"), "knob": knob_text(m),
               "calibration": m.get("calibration")}
        t = next(iter(by.get((name, "timing"), [])), None)
        row["attention_ms"] = t.get("attention_ms") if t else None
        row["gpu"] = t.get("gpu") if t else None
        row["step_ms"] = t.get("step_ms") if t else None
        row["density"] = t["density"] if t else (m.get("calibration") or {}).get("density")
        ruler = defaultdict(list)
        per_task = defaultdict(list)
        for task in RULER:
            for r in by.get((name, task), []):
                ruler[r["length"]].append(r["score"])
                per_task[(task, r["length"])].append(r["score"])
        row["ruler"] = {length: (mean(v), len(v)) for length, v in ruler.items()}
        row["per_task"] = {k: (mean(v), len(v)) for k, v in per_task.items()}
        code = defaultdict(list)
        for r in by.get((name, "code"), []):
            code[r["length"]].append(r)
        row["code"] = {length: (mean(r["em"] for r in v), mean(r["es"] for r in v), len(v)) for length, v in code.items()}
        ppl = {r["doc"]: r for r in by.get((name, "ppl"), [])}
        row["ppl"] = {d: r["ppl"] for d, r in ppl.items()}
        changes = [math.exp(r["nll"] - dense_nll[d]) - 1 for d, r in ppl.items() if d in dense_nll]
        row["ppl_change"] = mean(changes) if changes else None
        row["ppl_docs"] = len(changes)
        rows.append(row)
    return rows


def pct(pair, digits=1):
    if not pair or pair[0] is None:
        return "–"
    return f"{100 * pair[0]:.{digits}f} ({pair[1]})"


def tables(head, rows, records):
    lengths = sorted({r["length"] for r in records if r["task"] in RULER})
    code_lengths = sorted({r["length"] for r in records if r["task"] == "code"})
    calib = head.get("calibrate_length", "?")
    out = []
    gpus = sorted({r["gpu"] for r in rows if r.get("gpu")})
    if len(gpus) > 1:
        out.append(f"**The attention times come from different cards ({', '.join(gpus)}): not comparable.**\n")
    elif gpus:
        out.append(f"Attention and prefill times on {gpus[0]}.\n")
    h = ["method", "knob", f"density @{calib}", f"attention ms @{calib}", "prefill ms"]
    h += [f"RULER {length // 1024}K (n)" for length in lengths]
    h += [f"code EM / ES {length // 1024}K (n)" for length in code_lengths]
    h += ["ppl vs dense (docs)"]
    out.append("| " + " | ".join(h) + " |")
    out.append("|" + "---|" * len(h))
    for r in rows:
        cells = [r["name"], r["knob"], fmt(r["density"] and 100 * r["density"], ".1f") + "%" if r["density"] else "–",
                 fmt(r["attention_ms"], ".2f"), fmt(r["step_ms"], ".1f")]
        cells += [pct(r["ruler"].get(length)) for length in lengths]
        for length in code_lengths:
            c = r["code"].get(length)
            cells.append(f"{100 * c[0]:.1f} / {100 * c[1]:.1f} ({c[2]})" if c else "–")
        cells.append(f"{fmt(r['ppl_change'] and 100 * r['ppl_change'], '+.2f')}% ({r['ppl_docs']})"
                     if r["ppl_change"] is not None else "–")
        out.append("| " + " | ".join(cells) + " |")
    text = "\n".join(out) + "\n"
    # Per task, at each length.
    for length in lengths:
        h = ["method"] + RULER
        lines = ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
        for r in rows:
            lines.append("| " + " | ".join([r["name"]] + [pct(r["per_task"].get((t, length))) for t in RULER]) + " |")
        text += f"\nRULER-style tasks at {length} tokens (string_match_all, %; answers):\n\n" + "\n".join(lines) + "\n"
    docs = sorted({d for r in rows for d in r["ppl"]})
    if docs:
        h = ["method"] + docs
        lines = ["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
        for r in rows:
            lines.append("| " + " | ".join([r["name"]] + [fmt(r["ppl"].get(d), ".4f") for d in docs]) + " |")
        text += "\nPerplexity per document (teacher-forced through the sparse path):\n\n" + "\n".join(lines) + "\n"
    return text


def pareto(points):
    """The points no other beats on both axes (lower time, higher score), by time."""
    front, best = [], -math.inf
    for t, s in sorted(points):
        if s > best:
            front.append((t, s))
            best = s
    return front


def plot(head, rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report_long.py: no matplotlib: no plot", file=sys.stderr)
        return False
    longest = max((length for r in rows for length in r["ruler"]), default=None)
    code_len = max((length for r in rows for length in r["code"]), default=None)
    panels = [("ruler", f"RULER-style average at {longest} tokens (%)", lambda r: r["ruler"].get(longest, (None,))[0], 100, True),
              ("ppl", "perplexity vs dense (%)", lambda r: r["ppl_change"], 100, False),
              ("code", f"next-line exact match at {code_len} tokens (%)",
               lambda r: r["code"].get(code_len, (None,))[0], 100, True)]
    panels = [p for p in panels if any(p[2](r) is not None for r in rows)]
    if not panels or not any(r["attention_ms"] for r in rows):
        print("report_long.py: no timed methods with scores: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    colors = dict(zip(FAMILIES, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    for ax, (key, title, get, scale, higher) in zip(axes[0], panels):
        pts = []
        for fam, label in FAMILIES.items():
            xs = [(r["attention_ms"], scale * get(r), r) for r in rows
                  if r["family"] == fam and r["attention_ms"] and get(r) is not None]
            if not xs:
                continue
            ax.scatter([x for x, _, _ in xs], [y for _, y, _ in xs], color=colors[fam], label=label,
                       marker="*" if fam == "dense" else "o", s=140 if fam == "dense" else 40, zorder=3)
            for x, y, r in xs:
                if not r["target"]:
                    ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            pts += [(x, y if higher else -y) for x, y, _ in xs]
        front = pareto(pts)
        ax.plot([t for t, _ in front], [s if higher else -s for _, s in front], color="gray", linestyle="--",
                linewidth=1, label="Pareto front", zorder=2, drawstyle="steps-post")
        ax.set_xlabel(f"attention time of one {head.get('calibrate_length')}-token prefill (ms, all layers)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Stem and baselines on {head.get('model')}: accuracy against attention time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def check_scores(records):
    bad = 0
    for r in records:
        if r["task"] not in RULER + ["code"] or "answers" not in r:
            continue
        want = scoring.rescore(r, r["answers"])
        for k, v in want.items():
            if abs(r[k] - v) > 1e-9:
                bad += 1
                if bad <= 5:
                    print(f"score mismatch: {r['method']} {r['task']} {r['length']} #{r['index']}: {k} {r[k]} vs {v}",
                          file=sys.stderr)
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--table")
    ap.add_argument("--png")
    ap.add_argument("--check-scores", action="store_true")
    a = ap.parse_args()
    head, methods, records = load(a.json)
    rows = summarize(methods, records)
    text = tables(head, rows, records)
    print(text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text)
    if a.check_scores:
        bad = check_scores(records)
        n = sum(1 for r in records if "answers" in r)
        print(f"report_long.py: {n} scores recomputed, {bad} differ", file=sys.stderr)
        if bad:
            sys.exit(1)
    if a.png and plot(head, rows, a.png):
        print(f"report_long.py: plot in {a.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
