"""The official openai client against the real server: completions and chat, streamed and not."""
import json
import time
import urllib.request

import pytest

PROMPT = "The capital of France is"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def post(server, path, body):
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def test_tokenize_and_detokenize_round_trip(server):
    ids = post(server, "/tokenize", {"prompt": PROMPT})
    assert ids["count"] == len(ids["tokens"]) == 5
    assert ids["max_model_len"] == 512
    assert post(server, "/detokenize", {"tokens": ids["tokens"]})["prompt"] == PROMPT
    chat = post(server, "/tokenize", {"messages": QUESTION})
    assert chat["count"] > ids["count"]


def test_models_lists_the_served_model(client, model_name):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]
    # "created": when the server loaded it (Unix seconds), as vLLM reports; not 0.
    assert time.time() - 3600 < models.data[0].created <= time.time() + 1


def test_completion(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices) == 1
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == 5
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream_equals_the_whole_response(client, model_name):
    whole = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model=model_name, prompt=PROMPT, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_from_token_ids(server, client, model_name):
    by_text = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=4, temperature=0)
    ids = post(server, "/tokenize", {"prompt": PROMPT})["tokens"]
    by_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_chat(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=24, temperature=0)
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant"
    assert "Paris" in msg.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0


def test_chat_stream_equals_the_whole_response(client, model_name):
    whole = client.chat.completions.create(model=model_name, messages=QUESTION, max_completion_tokens=24,
                                           temperature=0)
    stream = client.chat.completions.create(model=model_name, messages=QUESTION, max_completion_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_chat_logprobs(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_completion_logprobs(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    assert all(len(t) == 2 for t in lp.top_logprobs)


def test_stop_string_ends_the_completion_without_it(client, model_name):
    r = client.completions.create(model=model_name, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0,
                                  stop=[" 7"])
    assert r.choices[0].finish_reason == "stop"
    assert " 7" not in r.choices[0].text
    assert "6" in r.choices[0].text


def test_n_choices_with_a_seed_repeat(client, model_name):
    kw = dict(model=model_name, prompt="My three favourite words are", max_tokens=6, temperature=1.2, n=3,
              seed=7)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    assert 3 <= a.usage.completion_tokens <= 18


def test_sampling_fields_are_accepted(client, model_name):
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=4, temperature=0.8, top_p=0.9,
                                  presence_penalty=0.5, frequency_penalty=0.5, seed=1,
                                  extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
                                              "ignore_eos": True})
    assert r.usage.completion_tokens == 4


def test_completion_logprobs_list_the_chosen_token(client, model_name):
    """The legacy completions API gives "the logprobs most likely tokens, as well the chosen tokens":
    with logprobs 0, each entry is the chosen token alone (it was an empty object)."""
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3
    for tok, top, logprob in zip(lp.tokens, lp.top_logprobs, lp.token_logprobs):
        assert top == {tok: logprob}
    r = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=3, temperature=0.9, seed=5, logprobs=1)
    lp = r.choices[0].logprobs
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert tok in top and 1 <= len(top) <= 2
