#!/usr/bin/env python3
"""The assertions of the quick evaluation (the CTest bench/eval_quick, run by run.sh --quick):
real figures of the default model on the CPU against the values recorded in quick_expected.json.

    check_quick.py --attention stem_eval.json --long long.json [--expected quick_expected.json] [--record]

  - the scorer (scoring.py) on known answers, and stem_eval's stored scores recomputed from its
    stored predictions (the C++ and Python definitions agree);
  - perplexity of every (method, document) within BAND (relative) of the recorded value, Stem's
    block density within 0.005 of it, and the issue-7 attention stage's mean attention error of
    Stem within 2%;
  - the greedy answers' scores equal to the recorded ones.
--record writes the expected file from these runs instead (after a deliberate change).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_long  # noqa: E402
import scoring  # noqa: E402

BAND = 0.005  # fp32 on the CPU: summation order (threads, BLAS) moves these by ~1e-5; a real change by far more
HERE = os.path.dirname(os.path.abspath(__file__))


def figures(attention_path, long_path):
    with open(attention_path) as f:
        att = json.load(f)
    with open(long_path) as f:
        lng = json.load(f)
    out = {"model": att["model"].rstrip("/").split("/")[-1], "ppl": {}, "density": {}, "score": {}, "error": {}}
    for r in att.get("perplexity", []):
        out["ppl"][f"issue7|{r['method']}|{r['doc']}"] = r["ppl"]
    for m in att.get("methods", []):
        if m.get("sparse") and "attention_error_mean" in m:
            out["error"][f"issue7|{m['name']}"] = m["attention_error_mean"]
            out["density"][f"issue7|{m['name']}"] = m["density"]
    for r in lng["records"]:
        if r["task"] == "ppl":
            out["ppl"][f"long|{r['method']}|{r['doc']}"] = r["ppl"]
            out["density"][f"long|{r['method']}|{r['doc']}"] = r["density"]
        elif "score" in r:
            out["score"][f"long|{r['method']}|{r['task']}|{r['length']}|{r['index']}"] = r["score"]
    return out, lng


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attention", required=True, help="stem_eval --quick's JSON (the issue-7 harness)")
    ap.add_argument("--long", required=True, help="stem_eval --data ... --quick's JSON")
    ap.add_argument("--expected", default=os.path.join(HERE, "quick_expected.json"))
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    failures = []
    print(f"check_quick: scorer self-test, {scoring.self_test()} known answers: ok")
    got, lng = figures(a.attention, a.long)
    bad = report_long.check_scores(lng["records"])
    n = sum(1 for r in lng["records"] if "answers" in r)
    if bad:
        failures.append(f"{bad} of {n} stored scores differ from scoring.py's")
    print(f"check_quick: {n} stored scores recomputed by scoring.py: {bad} differ")
    if a.record:
        with open(a.expected, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"check_quick: recorded {a.expected}")
        return
    with open(a.expected) as f:
        want = json.load(f)
    if want["model"] != got["model"]:
        sys.exit(f"check_quick: recorded for {want['model']}, this run is {got['model']}")
    for key, v in want["ppl"].items():
        g = got["ppl"].get(key)
        ok = g is not None and abs(g / v - 1) <= BAND
        print(f"  ppl     {key:<48} {g if g is None else round(g, 4)!s:>9} recorded {v:.4f} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"ppl {key}: {g} against {v} ± {BAND:.1%}")
    for key, v in want["density"].items():
        g = got["density"].get(key)
        ok = g is not None and abs(g - v) <= 0.005
        print(f"  density {key:<48} {g if g is None else round(g, 4)!s:>9} recorded {v:.4f} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"density {key}: {g} against {v}")
    for key, v in want.get("error", {}).items():
        g = got["error"].get(key)
        ok = g is not None and abs(g / v - 1) <= 0.02
        print(f"  error   {key:<48} {g if g is None else round(g, 4)!s:>9} recorded {v:.4f} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"attention error {key}: {g} against {v} ± 2%")
    for key, v in want["score"].items():
        g = got["score"].get(key)
        ok = g == v
        print(f"  score   {key:<48} {g!s:>9} recorded {v} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"score {key}: {g} against {v}")
    # Stem keeps fewer blocks than dense and costs some perplexity: the sparse path really ran.
    for key, v in got["density"].items():
        if "|stem" in key and not v < 0.9:
            failures.append(f"{key}: density {v}, the sparse path did not drop blocks")
    if failures:
        print("check_quick: FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("check_quick: all figures within their bands")


if __name__ == "__main__":
    main()
