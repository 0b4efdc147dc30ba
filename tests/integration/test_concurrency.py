"""Many concurrent mixed requests: every one answered with the same greedy text as alone, the
engine batching them (batches larger than one in /metrics); a cancelled or disconnected request
frees its KV pages."""
import concurrent.futures
import json
import socket
import time

import httpx
import pytest

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The three primary colours are",
]
MAX_TOKENS = 6


def complete(client, model, prompt, stream, chat):
    if chat:
        kw = dict(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                  temperature=0, extra_body={"ignore_eos": True})
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        return client.chat.completions.create(**kw).choices[0].message.content
    kw = dict(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    if stream:
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    return client.completions.create(**kw).choices[0].text


def test_concurrent_mixed_requests_match_alone_and_are_batched(server, client, model_name):
    kinds = [(p, chat) for p in PROMPTS for chat in (False, True)]
    alone = {k: complete(client, model_name, k[0], False, k[1]) for k in kinds}
    before = server.metrics()
    jobs = [(kinds[i % len(kinds)], i % 3 == 0) for i in range(32)]  # 32 requests, a third streamed
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(complete, client, model_name, k[0], stream, k[1]) for k, stream in jobs]
        results = [f.result(timeout=300) for f in futures]
    for (k, stream), got in zip(jobs, results):
        assert got == alone[k], f"{k} stream={stream}"
    after = server.metrics()
    steps = after["stemserve_batch_size_count"] - before["stemserve_batch_size_count"]
    seqs = after["stemserve_batch_size_sum"] - before["stemserve_batch_size_sum"]
    assert steps > 0 and seqs / steps > 1.5, f"{seqs} sequences in {steps} steps"
    # Some step held more than 8 sequences at once.
    le8 = after['stemserve_batch_size_bucket{le="8"}'] - before['stemserve_batch_size_bucket{le="8"}']
    assert le8 < steps
    # The KV gauges are refreshed after the step that sent the last answer: wait for it.
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def test_disconnected_stream_frees_its_pages(server, model_name):
    body = {"model": model_name, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            events = 0
            for line in lines:
                events += line.startswith("data: ")
                if events == 3:
                    break
            assert server.metrics()["stemserve_kv_cache_used_pages"] > 0
    # The connection is closed: the server cancels and frees the pages at its next step.
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    server.wait_metric("stemserve_num_requests_running", lambda v: v == 0)


def test_disconnected_non_streamed_request_frees_its_pages(server, model_name):
    body = {"model": model_name, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.5))
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    text = httpx.get(server.url + "/metrics").text
    assert 'stemserve_request_success_total{finished_reason="cancelled"}' in text
