"""API keys, a full queue (429), and graceful shutdown on SIGTERM."""
import json
import signal
import threading
import time

import httpx
import pytest

LONG = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}


def test_api_key_is_required_except_for_health(make_server):
    s = make_server(env={"STEMSERVE_API_KEY": "s3cret"})  # set through the environment variable
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Bearer s3cret-and-more"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")):
            r = httpx.request(method, s.url + path, json={"prompt": "Hi", "max_tokens": 1}, headers=headers,
                              timeout=10)
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["message"]
    ok = {"Authorization": "Bearer s3cret"}
    assert httpx.get(s.url + "/v1/models", headers=ok, timeout=10).status_code == 200
    r = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, headers=ok, timeout=60)
    assert r.status_code == 200

    from openai import AuthenticationError, OpenAI
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0).models.list().data


def test_full_queue_answers_429(make_server):
    s = make_server("--max-num-seqs", "1", "--max-queue", "1")
    # One runs, one waits; the third finds the queue full.
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
        with a.stream("POST", s.url + "/v1/completions", json={**LONG, "stream": True}) as ra:
            assert ra.status_code == 200
            with b.stream("POST", s.url + "/v1/completions", json={**LONG, "stream": True}) as rb:
                assert rb.status_code == 200
                r = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
                assert r.status_code == 429
                assert "queue" in r.json()["error"]["message"]
                assert r.headers["Retry-After"] == "1"  # as RFC 9110 lets a 429 say when to come back
    # Both streams were dropped: once the server has noticed, their room and pages come back.
    s.wait_metric('stemserve_request_success_total{finished_reason="cancelled"}', lambda v: v == 2)
    s.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60).status_code == 200


def test_sigterm_lets_requests_in_flight_finish(make_server):
    s = make_server("--shutdown-timeout", "60")
    result = {}

    def run():
        result["r"] = httpx.post(s.url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 24,
                                                                   "ignore_eos": True}, timeout=120)

    t = threading.Thread(target=run)
    t.start()
    s.wait_metric("stemserve_num_requests_running", lambda v: v == 1)
    s.proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert result["r"].status_code == 200
    assert result["r"].json()["usage"]["completion_tokens"] == 24
    assert s.proc.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=5)


def test_sigterm_ends_what_does_not_finish_in_time_with_an_error(make_server):
    s = make_server("--shutdown-timeout", "0.5")
    result = {}

    def run():
        with httpx.stream("POST", s.url + "/v1/completions", json={**LONG, "stream": True}, timeout=120) as r:
            result["events"] = [line for line in r.iter_lines() if line.startswith("data: ")]

    t = threading.Thread(target=run)
    t.start()
    s.wait_metric("stemserve_num_requests_running", lambda v: v == 1)
    s.proc.send_signal(signal.SIGTERM)
    t.join(timeout=60)
    events = result["events"]
    assert events[-1] == "data: [DONE]"
    assert "shutting down" in json.loads(events[-2][len("data: "):])["error"]["message"]
    assert s.proc.wait(timeout=60) == 0
