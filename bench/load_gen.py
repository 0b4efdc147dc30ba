#!/usr/bin/env python3
"""Open-loop load generator for stemserve's OpenAI-compatible HTTP API (standard library only).

Requests arrive as a Poisson process at --rate per second for --duration seconds, whatever the
server's state (open loop: a slow server builds a queue, as real traffic does). Each request
streams a completion of --output-len tokens (ignore_eos) for a prompt of about --prompt-len
tokens. Reports throughput and p50/p99 time to first token (TTFT) and inter-token latency (ITL).

    python3 bench/load_gen.py --url http://127.0.0.1:8000 --rate 4 --duration 30 \
        --prompt-len 512 --output-len 128 --json out.json
"""
import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse

WORDS = ("the of and to in is was for on that with as by at from his her an which or be are this "
         "have not had one were all we can but there their when so more time if who will them some "
         "would other into has two like our what about out these first been then no its only").split()


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, model, prompt, output_len, result):
    u = urllib.parse.urlparse(url)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    start = time.perf_counter()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            result.update(error=f"HTTP {resp.status}: {resp.read()[:200]!r}")
            return
        times, usage = [], None
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
        result.update(start=start, times=times, end=time.perf_counter(),
                      completion_tokens=(usage or {}).get("completion_tokens", len(times)),
                      prompt_tokens=(usage or {}).get("prompt_tokens", 0))
    except Exception as e:  # noqa: BLE001 - a failed request is a measurement, not a crash
        result.update(error=repr(e))
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="")
    ap.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    ap.add_argument("--prompt-len", type=int, default=256, help="prompt length in words (about tokens)")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    if not a.model:
        u = urllib.parse.urlparse(a.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("GET", "/v1/models")
        a.model = json.loads(conn.getresponse().read())["data"][0]["id"]
    threads, results = [], []
    t0 = time.perf_counter()
    next_arrival = 0.0
    while next_arrival < a.duration:
        delay = t0 + next_arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        prompt = " ".join(rng.choice(WORDS) for _ in range(a.prompt_len))
        r = {}
        results.append(r)
        th = threading.Thread(target=one_request, args=(a.url, a.model, prompt, a.output_len, r), daemon=True)
        th.start()
        threads.append(th)
        next_arrival += rng.expovariate(a.rate)
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r and r.get("times")]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["times"][0] - r["start"] for r in ok]
    itl = [b - a_ for r in ok for a_, b in zip(r["times"], r["times"][1:])]
    out_tokens = sum(r["completion_tokens"] for r in ok)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in ok) if ok else 0
    summary = {
        "rate": a.rate, "duration": a.duration, "prompt_len": a.prompt_len, "output_len": a.output_len,
        "requests": len(results), "completed": len(ok), "errors": len(errors), "mean_prompt_tokens": prompt_tokens,
        "output_tokens_per_s": out_tokens / wall, "requests_per_s": len(ok) / wall,
        "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
        "itl_p50_ms": 1e3 * percentile(itl, 50), "itl_p99_ms": 1e3 * percentile(itl, 99),
        "ttft_mean_ms": 1e3 * statistics.fmean(ttft) if ttft else float("nan"),
    }
    print(f"rate {a.rate:5.1f}/s  {len(ok)}/{len(results)} ok  prompt {prompt_tokens:.0f} tok  "
          f"{summary['output_tokens_per_s']:8.1f} tok/s  "
          f"TTFT p50 {summary['ttft_p50_ms']:7.1f} ms p99 {summary['ttft_p99_ms']:7.1f} ms  "
          f"ITL p50 {summary['itl_p50_ms']:6.1f} ms p99 {summary['itl_p99_ms']:6.1f} ms"
          + (f"  first error: {errors[0]}" if errors else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
