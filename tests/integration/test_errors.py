"""Malformed requests get a 4xx with an OpenAI-style error object, and the server stays up."""
import httpx
import pytest

GOOD = {"prompt": "Hello", "max_tokens": 2}

CASES = [
    # (name, path, raw body bytes or a JSON value, status, param)
    ("bad JSON", "/v1/completions", b'{"prompt": "Hello", ', 400, None),
    ("not an object", "/v1/completions", b'["Hello"]', 400, None),
    ("invalid UTF-8", "/v1/completions", b'{"prompt": "caf\xc3\x28"}', 400, None),
    ("prompt of the wrong type", "/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("max_tokens of the wrong type", "/v1/completions", {"prompt": "Hi", "max_tokens": "5"}, 400, "max_tokens"),
    ("temperature of the wrong type", "/v1/completions", {"prompt": "Hi", "temperature": "hot"}, 400,
     "temperature"),
    ("stream of the wrong type", "/v1/completions", {"prompt": "Hi", "stream": "yes"}, 400, "stream"),
    ("temperature out of range", "/v1/completions", {"prompt": "Hi", "temperature": -1}, 400, "temperature"),
    ("top_p out of range", "/v1/completions", {"prompt": "Hi", "top_p": 0}, 400, "top_p"),
    ("n of zero", "/v1/completions", {"prompt": "Hi", "n": 0}, 400, "n"),
    ("unknown model", "/v1/completions", {"prompt": "Hi", "model": "gpt-17"}, 404, "model"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("empty token list", "/v1/completions", {"prompt": []}, 400, "prompt"),
    ("missing prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("token id outside the vocabulary", "/v1/completions", {"prompt": [1, 999999]}, 400, None),
    ("prompt longer than the context", "/v1/completions", {"prompt": "hello " * 600}, 400, "prompt"),
    ("max_tokens over the limit", "/v1/completions", {"prompt": "Hi", "max_tokens": 100000}, 400, "max_tokens"),
    ("max_tokens of zero", "/v1/completions", {"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
    ("messages missing", "/v1/chat/completions", {"max_tokens": 3}, 400, "messages"),
    ("messages empty", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("message without role", "/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ("message content of the wrong type", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ("chat max_completion_tokens over the limit", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100000}, 400,
     "max_completion_tokens"),
    ("content part with a type that is not a string", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": [{"type": 5, "text": "hi"}]}]}, 400, "messages[0].content"),
    ("top_logprobs without logprobs", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ("stop of the wrong type", "/v1/completions", {"prompt": "Hi", "stop": 5}, 400, "stop"),
    ("detokenize without tokens", "/detokenize", {"ids": [1]}, 400, "tokens"),
    # Rendering a chat recursed once per level: this body used to overflow the stack.
    ("JSON nested too deep", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi", "x": ' + b"[" * 200000 + b"]" * 200000 + b"}]}", 400, None),
    ("tokenize without a prompt", "/tokenize", {}, 400, "prompt"),
    # A field we do not serve is refused by name, never ignored (issue 19's client findings).
    ("a field we do not serve", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ("a misspelt field", "/v1/completions", {"prompt": "Hi", "max_token": 5}, 400, "max_token"),
    ("a chat field in completions", "/v1/completions", {"prompt": "Hi", "tools": []}, 400, "tools"),
    ("a completions field in chat", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "echo": False}, 400, "echo"),
    ("stream_options without stream", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}, 400,
     "stream_options"),
    ("an unknown message role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages[0].role"),
]


@pytest.mark.parametrize("name,path,body,status,param", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_4xx_with_a_message(server, name, path, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    else:
        r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    assert err["type"]
    if param:
        assert err["param"] == param
    # The server is still up and serving.
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_unknown_route_and_oversized_body(make_server):
    s = make_server("--max-request-bytes", "1000")
    r = httpx.get(s.url + "/v2/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]
    # A route asked with the wrong method: 405, with the method it takes.
    for method, path, allow in (("GET", "/v1/completions", "POST"), ("POST", "/v1/models", "GET"),
                                ("DELETE", "/v1/chat/completions", "POST")):
        r = httpx.request(method, s.url + path, timeout=10)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["Allow"] == allow and allow in r.json()["error"]["message"]
    r = httpx.post(s.url + "/v1/completions", json={"prompt": "x" * 5000}, timeout=10)
    assert r.status_code == 413
    assert httpx.post(s.url + "/v1/completions", json=GOOD, timeout=60).status_code == 200


def test_number_too_large_for_a_double_is_400(server):
    # nlohmann reports it as out_of_range, not parse_error: this was a 500.
    for body in (b'{"prompt": "Hi", "max_tokens": 1E400}', b'{"prompt": "Hi", "x": -1e99999}'):
        r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"},
                       timeout=30)
        assert r.status_code == 400, r.text
        assert "not valid JSON" in r.json()["error"]["message"]
