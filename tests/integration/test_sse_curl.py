"""SSE framing as curl sees it on the wire: `data: <json>` events separated by blank lines,
ending with `data: [DONE]`."""
import json
import subprocess


def curl_stream(server, path, body):
    out = subprocess.run(["curl", "-sS", "-N", "-i", "--max-time", "120", "-H", "Content-Type: application/json",
                          "-d", json.dumps(body), server.url + path], capture_output=True, timeout=150, check=True)
    head, _, payload = out.stdout.decode().partition("\r\n\r\n")
    return head, payload


def check_framing(payload):
    assert payload.endswith("data: [DONE]\n\n")
    events = payload.split("\n\n")
    assert events[-1] == ""
    events = events[:-1]
    for e in events:
        assert e.startswith("data: "), repr(e)
        assert "\n" not in e, repr(e)
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_completion_sse_framing(server):
    head, payload = curl_stream(server, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 6,
                                                            "temperature": 0, "stream": True})
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    chunks = check_framing(payload)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "Paris" in "".join(c["choices"][0]["text"] for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


def test_chat_sse_framing_with_usage(server):
    head, payload = curl_stream(server, "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5,
                                 "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    chunks = check_framing(payload)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["usage"] is None for c in chunks[:-1])
