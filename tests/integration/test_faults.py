"""Faults against the real server: clients killed mid-stream (HTTP and gRPC) leave no KV pages
in use; many long prompts in a small KV cache are preempted and all complete with the text they
get alone; SIGTERM under load ends every request with its answer or an error and the process
exits within the shutdown timeout, and SIGTERM while the model loads exits cleanly; a model folder missing a file fails at start with a clear
error. (A prompt longer than the context is in test_errors.py and test_grpc.py.)"""
import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import httpx
import pytest

from conftest import ROOT, Server, _binary, _model
from grpc_helpers import channel, stubs, wait_until

pb, pb_grpc = stubs()
HERE = pathlib.Path(__file__).resolve().parent

# A client in its own process: it starts a long stream, says so on stdout, then waits to be killed.
HTTP_CLIENT = """
import sys, httpx
body = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}
with httpx.stream("POST", sys.argv[1] + "/v1/completions", json=body, timeout=120) as r:
    for i, line in enumerate(r.iter_lines()):
        if i == 4:
            print("streaming", flush=True)
            break
    import time; time.sleep(600)
"""
GRPC_CLIENT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from grpc_helpers import channel, stubs
pb, pb_grpc = stubs()
st = pb_grpc.StemserveStub(channel(sys.argv[1]))
call = st.Generate(pb.GenerateRequest(text="Once upon a time", max_tokens=400, ignore_eos=True), timeout=120)
for i, _ in enumerate(call):
    if i == 2:
        print("streaming", flush=True)
        break
time.sleep(600)
"""


def cancelled_total(server):
    return server.metrics().get('stemserve_request_success_total{finished_reason="cancelled"}', 0)


@pytest.mark.parametrize("api", ["http", "grpc"])
def test_client_killed_mid_stream_frees_its_pages(server, api):
    before = cancelled_total(server)
    script, args = (HTTP_CLIENT, [server.url]) if api == "http" else (GRPC_CLIENT, [server.grpc_target, str(HERE)])
    client = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "streaming"
        assert server.metrics()["stemserve_kv_cache_used_pages"] > 0
        client.kill()  # no FIN from the client's code: the kernel closes its sockets
        client.wait(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    server.wait_metric("stemserve_num_requests_running", lambda v: v == 0)
    wait_until(lambda: cancelled_total(server) == before + 1, what="the request counted as cancelled")


def test_kv_exhaustion_preempts_and_every_request_completes(make_server):
    # 256 KV tokens (16 pages of 16): six ~26-token prompts all start at once (2 pages each), then
    # each grows to ~66 tokens (5 pages, 30 in all): the newest are preempted and recomputed.
    s = make_server("--kv-cache-tokens", "256", "--max-num-seqs", "6", "--max-num-batched-tokens", "256")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    prompts = [" ".join(words[(i + j) % len(words)] for j in range(20)) for i in range(6)]
    body = lambda p: {"prompt": p, "max_tokens": 40, "temperature": 0, "ignore_eos": True}  # noqa: E731
    alone = [httpx.post(s.url + "/v1/completions", json=body(p), timeout=120).json()["choices"][0]["text"]
             for p in prompts]
    assert s.metrics()["stemserve_num_preemptions_total"] == 0
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: httpx.post(s.url + "/v1/completions", json=body(p), timeout=300), prompts))
    for p, a, r in zip(prompts, alone, answers):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 40
        assert r.json()["choices"][0]["text"] == a  # recomputed after preemption: the same greedy text
    assert s.metrics()["stemserve_num_preemptions_total"] > 0
    s.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def test_sigterm_under_load(make_server):
    """Four run, the rest wait; SIGTERM with a 3 s timeout: short requests finish, long ones end
    with an error (503 JSON, an SSE error event, gRPC UNAVAILABLE); nobody hangs; exit 0 in time."""
    timeout = 3.0
    s = make_server("--max-num-seqs", "4", "--max-queue", "16", "--shutdown-timeout", str(timeout))
    st = pb_grpc.StemserveStub(channel(s.grpc_target))

    def http_plain(max_tokens):
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": max_tokens,
                                                         "ignore_eos": True}, timeout=120)
        if r.status_code == 200:
            return "done", r.json()["usage"]["completion_tokens"]
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"], r.text
        return "error", None

    def http_stream(max_tokens):
        body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        if "error" in chunks[-1]:
            return "error", None
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        return "done", len(chunks)

    def via_grpc(max_tokens):
        try:
            n = sum(len(m.token_ids) for m in st.Generate(
                pb.GenerateRequest(text="Once upon a time", max_tokens=max_tokens, ignore_eos=True), timeout=120))
            return "done", n
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
            return "error", None

    jobs = [(fn, 400) for fn in (http_plain, http_stream, via_grpc) for _ in range(3)]
    jobs += [(http_plain, 4), (via_grpc, 4)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(fn, n) for fn, n in jobs]
        wait_until(lambda: (lambda m: m["stemserve_num_requests_running"] == 4 and
                            m["stemserve_num_requests_waiting"] >= 4)(s.metrics()), timeout=60,
                   what="four running, the rest waiting")
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=60) for f in futures]
        rc = s.proc.wait(timeout=60)
        exited = time.monotonic() - t0
    assert rc == 0, s.log_text()
    assert exited < timeout + 10, f"exit took {exited:.1f} s"
    long_errors = sum(1 for (fn, n), r in zip(jobs, results) if n == 400 and r[0] == "error")
    assert long_errors >= 5, results  # at most four could have run, none of them 400 tokens in 3 s
    for (fn, n), (what, count) in zip(jobs, results):
        if what == "done" and fn is not http_stream:
            assert count == n
    assert "ended" in s.log_text() and "unfinished sequences with an error" in s.log_text()


def test_sigterm_while_the_model_loads_exits_cleanly(tmp_path):
    """SIGTERM between "listening" and "ready" (the model still loading; the main thread blocks the
    stop signals until it waits for them) is taken once loading ends, and the process exits 0. It
    used to be delivered to a thread OpenBLAS starts before main, which does not block it, and
    ended the process at once (status -15): with two or more cores, every time."""
    if not (_model() / "model.safetensors").exists():
        pytest.skip("default model not prepared")
    # The signal must land while the model loads: when loading won the race, start again (the
    # exit status is checked every time).
    for attempt in range(5):
        log = tmp_path / f"stemserve-{attempt}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(_binary()), "serve", "--model", str(_model()), "--host", "127.0.0.1",
                                     "--port", "0", "--grpc-port", "0", "--max-model-len", "512"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.time() + 30
            while "listening on http" not in log.read_text() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.002)
            loading = "ready:" not in log.read_text()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        text = log.read_text()
        assert rc == 0, text
        assert "SIGTERM: no longer accepting connections" in text, text
        if loading:
            return
    pytest.fail("in 5 starts the model was always loaded before the signal was sent: the case was not reached")


def model_copy_without(tmp_path, missing):
    """The default model folder as symlinks, less the file `missing`."""
    src = _model()
    if not (src / "model.safetensors").exists():
        pytest.skip(f"default model not prepared at {src}")
    dst = tmp_path / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != missing:
            (dst / f.name).symlink_to(f)
    return dst


@pytest.mark.parametrize("missing,message", [
    ("config.json", "config.json: cannot open"),
    ("model.safetensors", "no model.safetensors or model.safetensors.index.json"),
    ("tokenizer.json", "tokenizer"),
])
def test_serve_with_a_model_file_missing_exits_with_a_clear_error(tmp_path, missing, message):
    model = model_copy_without(tmp_path, missing)
    t0 = time.monotonic()
    p = subprocess.run([str(_binary()), "serve", "--model", str(model), "--port", "0", "--grpc-port", "0"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert "[error]" in p.stderr and message in p.stderr, p.stderr
    assert str(model) in p.stderr or missing in p.stderr
    assert time.monotonic() - t0 < 60
