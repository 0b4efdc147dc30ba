"""Soak test: the real CPU server under mixed load for any duration.

Clients (more of them than --max-num-seqs + --max-queue, so that some are refused) send, at
random: non-streamed completions, streamed completions, streamed chats, streams they drop after
a few events, and non-streamed requests they give up on (the server sees the connection close).
Checked: the process never dies; every request is answered (200 with a whole answer) or refused
with 429 (dropped ones excepted, by design); once idle, no KV pages and no sequences are left in
use (prefix caching on: half the prompts start with one shared preamble, so cached pages are
shared, evicted and let go under cancellations and preemptions, and must all be evictable at the
end, with hits counted); resident memory after warm-up stays within --rss-tolerance of the warm-up's peak; SIGTERM
then ends the process with 0.

  .venv/bin/python tests/soak/soak.py --duration 60            # CI
  nice -n 10 .venv/bin/python tests/soak/soak.py --duration 1800 --json soak.json
"""
import argparse
import collections
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Shared by half the prompts (about 40 tokens: two full KV pages and more for the prefix cache).
PREAMBLE = "You are a careful assistant. Read the words that follow and continue them as a story about a river. "
WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be "
         "river mountain city light garden music winter ocean forest letter engine window story").split()


def find_binary():
    for p in (os.environ.get("STEMSERVE_BIN"), ROOT / "build-test/server/stemserve", ROOT / "build/server/stemserve"):
        if p and pathlib.Path(p).exists():
            return str(p)
    sys.exit("soak: no stemserve binary (set STEMSERVE_BIN or pass --binary)")


def rss_bytes(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def metrics(url):
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Soak:
    def __init__(self, args):
        self.args = args
        self.url = None
        self.counts = collections.Counter()
        self.failures = []
        self.lock = threading.Lock()
        self.rss = []  # (seconds since start, bytes)
        self.stop = threading.Event()

    def start_server(self):
        a = self.args
        self.log = tempfile.NamedTemporaryFile(prefix="stemserve-soak-", suffix=".log", delete=False)
        cmd = [a.binary, "serve", "--model", a.model, "--host", "127.0.0.1", "--port", "0", "--grpc-port", "-1",
               "--max-model-len", str(a.max_model_len), "--max-num-seqs", str(a.max_num_seqs),
               "--max-queue", str(a.max_queue), "--shutdown-timeout", "10"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            m = re.search(r"ready: http://127\.0\.0\.1:(\d+)", pathlib.Path(self.log.name).read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        sys.exit("soak: the server did not start:\n" + pathlib.Path(self.log.name).read_text())

    def record(self, kind, outcome, detail=None):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if outcome == "FAIL":
                self.failures.append(f"{kind}: {detail}")
        return outcome

    def prompt(self, rng):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, self.args.max_prompt_words)))
        return PREAMBLE + words if rng.random() < 0.5 else words

    def one(self, rng, http):
        kind = rng.choices(["plain", "stream", "chat_stream", "drop_stream", "give_up"], [3, 3, 2, 2, 1])[0]
        try:
            return self.send(kind, rng, http)
        except Exception as e:  # a connection error, a timeout or a malformed answer
            return self.record(kind, "FAIL", repr(e))

    def send(self, kind, rng, http):
        max_tokens = rng.randint(1, self.args.max_tokens)
        body = {"prompt": self.prompt(rng), "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 1000)}
        path = "/v1/completions"
        if kind == "chat_stream":
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
        if kind == "plain":
            r = http.post(self.url + path, json=body)
            if r.status_code == 429:
                return self.record(kind, "429")
            if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != max_tokens:
                return self.record(kind, "FAIL", f"{r.status_code} {r.text[:200]}")
            return self.record(kind, "ok")
        if kind == "give_up":
            try:
                r = http.post(self.url + path, json={**body, "max_tokens": self.args.max_tokens},
                              timeout=httpx.Timeout(60, read=rng.uniform(0.05, 0.5)))
                if r.status_code in (200, 429):
                    return self.record(kind, "ok" if r.status_code == 200 else "429")
                return self.record(kind, "FAIL", f"{r.status_code} {r.text[:200]}")
            except httpx.ReadTimeout:
                return self.record(kind, "dropped")
        body["stream"] = True
        drop_after = rng.randint(1, 4) if kind == "drop_stream" else None
        with http.stream("POST", self.url + path, json=body) as r:
            if r.status_code == 429:
                r.read()
                return self.record(kind, "429")
            if r.status_code != 200:
                r.read()
                return self.record(kind, "FAIL", f"{r.status_code} {r.text[:200]}")
            events = 0
            last = None
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                last = line[6:]
                if drop_after and events >= drop_after:
                    return self.record(kind, "dropped")  # leaving the block closes the connection
                if last != "[DONE]" and "error" in json.loads(last):
                    return self.record(kind, "FAIL", last[:200])
            if last != "[DONE]":
                return self.record(kind, "FAIL", f"stream ended without [DONE] after {events} events")
            return self.record(kind, "ok")

    def client(self, seed):
        rng = random.Random(seed)
        # A request waits behind max-num-seqs + max-queue others; on a busy 2-core machine that
        # can take minutes. Longer than this counts as a failure (a request left hanging).
        with httpx.Client(timeout=httpx.Timeout(self.args.request_timeout)) as http:
            while not self.stop.is_set():
                try:
                    if self.one(rng, http) == "429":  # refused: back off a little, as a real client would
                        self.stop.wait(rng.uniform(0.25, 1.0))
                except Exception as e:  # a connection error or a malformed answer
                    self.record("any", "FAIL", repr(e))
                    if self.proc.poll() is not None:
                        return

    def sample_rss(self, t0):
        while not self.stop.wait(1.0):
            if self.proc.poll() is not None:
                return
            self.rss.append((time.time() - t0, rss_bytes(self.proc.pid)))

    def wait_idle(self, timeout=60):
        deadline = time.time() + timeout
        m = {}
        while time.time() < deadline:
            m = metrics(self.url)
            if (m.get("stemserve_kv_cache_used_pages") == 0 and m.get("stemserve_num_requests_running") == 0
                    and m.get("stemserve_num_requests_waiting") == 0):
                return m
            time.sleep(0.2)
        raise AssertionError(f"not idle after {timeout} s: {m}")

    def run(self):
        a = self.args
        self.start_server()
        t0 = time.time()
        threads = [threading.Thread(target=self.client, args=(a.seed + i,), daemon=True) for i in range(a.concurrency)]
        threads.append(threading.Thread(target=self.sample_rss, args=(t0,), daemon=True))
        for t in threads:
            t.start()
        while time.time() - t0 < a.duration and self.proc.poll() is None:
            time.sleep(0.5)
        self.stop.set()
        for t in threads:
            t.join(timeout=a.request_timeout + 60)
        elapsed = time.time() - t0
        problems = list(self.failures)
        if self.proc.poll() is not None:
            problems.append(f"the server died with {self.proc.returncode}")
            idle = {}
        else:
            try:
                idle = self.wait_idle(timeout=120)
                if not idle.get("stemserve_prefix_cache_hits_total"):
                    problems.append("no prefix cache hit although half the prompts share a preamble")
                if idle.get("stemserve_prefix_cache_pages", 0) > idle.get("stemserve_kv_cache_total_pages", 0):
                    problems.append(f"more cached pages than the pool holds: {idle}")
            except AssertionError as e:
                problems.append(str(e))
                idle = {}
        warm = [b for t, b in self.rss if t <= a.warmup]
        after = [b for t, b in self.rss if t > a.warmup]
        baseline = max(warm) if warm else 0
        peak_after = max(after) if after else 0
        growth = (peak_after - baseline) / baseline if baseline and after else 0.0
        if after and growth > a.rss_tolerance:
            problems.append(f"RSS grew {growth:.1%} after warm-up ({baseline >> 20} -> {peak_after >> 20} MiB)")
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                problems.append("no exit within 60 s of SIGTERM")
            if rc not in (0, None):
                problems.append(f"exit code {rc} after SIGTERM")
        by_outcome = collections.Counter()
        for (kind, outcome), n in self.counts.items():
            by_outcome[outcome] += n
        report = {
            "duration_s": round(elapsed, 1), "concurrency": a.concurrency, "max_num_seqs": a.max_num_seqs,
            "max_queue": a.max_queue, "requests": sum(self.counts.values()), "by_outcome": dict(by_outcome),
            "by_kind": {f"{k}/{o}": n for (k, o), n in sorted(self.counts.items())},
            "rss_warmup_peak_mib": round(baseline / 2**20, 1), "rss_after_peak_mib": round(peak_after / 2**20, 1),
            "rss_final_mib": round(self.rss[-1][1] / 2**20, 1) if self.rss else None,
            "rss_growth": round(growth, 4), "warmup_s": a.warmup,
            "preemptions": idle.get("stemserve_num_preemptions_total"),
            "generation_tokens": idle.get("stemserve_generation_tokens_total"),
            "prefix_cache_hits": idle.get("stemserve_prefix_cache_hits_total"),
            "prefix_cache_queries": idle.get("stemserve_prefix_cache_queries_total"),
            "prefix_cache_pages": idle.get("stemserve_prefix_cache_pages"),
            "exit_code": rc, "problems": problems[:20], "log": self.log.name,
        }
        print(json.dumps(report, indent=1))
        print(f"soak: {report['requests']} requests in {report['duration_s']} s "
              f"({', '.join(f'{n} {o}' for o, n in sorted(by_outcome.items()))}), RSS growth {growth:.1%}, "
              f"{len(problems)} problem(s)")
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
        return 1 if problems else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60, help="seconds of load")
    p.add_argument("--warmup", type=float, default=None, help="seconds before RSS must stay flat (default: "
                   "a fifth of the duration, 20 to 120 s)")
    p.add_argument("--concurrency", type=int, default=12, help="clients (above max-num-seqs + max-queue)")
    p.add_argument("--max-num-seqs", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=4)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=24, help="most tokens a request asks for")
    p.add_argument("--max-prompt-words", type=int, default=60)
    p.add_argument("--rss-tolerance", type=float, default=0.05)
    p.add_argument("--request-timeout", type=float, default=600, help="seconds a request may take")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--binary", default=None)
    p.add_argument("--model", default=str(ROOT / "models/cache/SmolLM2-135M-Instruct"))
    p.add_argument("--json", default=None, help="also write the report here")
    a = p.parse_args()
    a.binary = a.binary or find_binary()
    if a.warmup is None:
        a.warmup = min(120.0, max(20.0, a.duration / 5))
    if a.concurrency <= a.max_num_seqs + a.max_queue:
        sys.exit("soak: --concurrency must exceed --max-num-seqs + --max-queue (some requests must be refused)")
    sys.exit(Soak(a).run())


if __name__ == "__main__":
    main()
