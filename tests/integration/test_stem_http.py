"""Stem sparse prefill over HTTP: the per-request field "sparse_prefill" in completions and chat.

The shared servers keep max_model_len at 512, so this server makes a ~450-token prompt long enough
for Stem: --stem-min-prompt-len 256, a small budget and one sink and one window block, so that
selection really drops key blocks (4 blocks; blocks 1..3 are sparse). Its debug log says when the
sparse path ran.
"""
import httpx
import pytest

STEM_FLAGS = ("--sparse-prefill", "dense", "--stem-min-prompt-len", "256", "--stem-budget-rate", "0.25",
              "--stem-sink-blocks", "1", "--stem-window-blocks", "1", "--log-level", "debug")


def counting(n):
    return ", ".join(str(i) for i in range(1, n))


@pytest.fixture
def stem_server(make_server):
    return make_server(*STEM_FLAGS)


def sparse_steps(server):
    return server.log_text().count("stem: ")


def complete(server, body):
    return httpx.post(server.url + "/v1/completions", json=body, timeout=120)


def test_the_same_long_prompt_dense_and_stem_and_chat(stem_server):
    prompt = counting(100)  # "1, 2, ..., 99": ~390 tokens
    r = httpx.post(stem_server.url + "/tokenize", json={"prompt": prompt}, timeout=30)
    assert 256 < len(r.json()["tokens"]) < 500

    before = sparse_steps(stem_server)
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    dense = complete(stem_server, {**body, "sparse_prefill": "dense"})
    assert dense.status_code == 200, dense.text
    default = complete(stem_server, body)  # the server's default: --sparse-prefill dense
    assert default.status_code == 200, default.text
    assert default.json()["choices"][0]["text"] == dense.json()["choices"][0]["text"]
    assert sparse_steps(stem_server) == before

    stem = complete(stem_server, {**body, "sparse_prefill": "stem"})
    assert stem.status_code == 200, stem.text
    assert sparse_steps(stem_server) == before + 1, stem_server.log_text()[-2000:]
    for r in (dense, stem):
        assert r.json()["choices"][0]["text"].startswith(", 100"), r.text
        assert r.json()["usage"]["completion_tokens"] == 6

    before = sparse_steps(stem_server)
    body = {"messages": [{"role": "user", "content": "Continue: " + counting(100)}], "max_tokens": 4,
            "temperature": 0, "sparse_prefill": "stem"}
    r = httpx.post(stem_server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert sparse_steps(stem_server) == before + 1


def test_a_bad_value_is_400_naming_the_field(server):
    for path, extra in [("/v1/completions", {"prompt": "Hi"}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})]:
        for value in ["sparse", "", "STEM", 1, True]:
            r = httpx.post(server.url + path, json={**extra, "max_tokens": 2, "sparse_prefill": value}, timeout=30)
            assert r.status_code == 400, (path, value, r.text)
            err = r.json()["error"]
            assert err["param"] == "sparse_prefill"
            assert "sparse_prefill" in err["message"]
        r = httpx.post(server.url + path, json={**extra, "max_tokens": 2, "sparse_prefill": None}, timeout=30)
        assert r.status_code == 200, r.text  # null: not given, as every optional field
