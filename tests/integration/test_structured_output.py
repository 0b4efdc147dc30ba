"""Structured output over HTTP with the official openai client: response_format json_object and
json_schema, vLLM's structured_outputs (json, regex, choice) and guided_* on the default model;
each answer parses and validates against its schema (the jsonschema package), matches its regex in
full (Python's re) or is one of its choices; schemas and patterns outside the served subset get a
400 naming the keyword or the construct."""
import json
import re

import httpx
import jsonschema
import openai
import pytest

PERSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "age", "hobbies", "address"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "employed": {"type": "boolean"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "pet": {"anyOf": [{"type": "string", "enum": ["cat", "dog"]}, {"type": "null"}]},
        "address": {
            "type": "object",
            "additionalProperties": False,
            "required": ["city", "country"],
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        },
    },
}
ASK = [{"role": "user", "content": "Invent a person and describe them as JSON."}]


def response_format(schema, name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_json_schema_answers_validate(client, model_name):
    for seed in range(4):
        r = client.chat.completions.create(model=model_name, messages=ASK, response_format=response_format(PERSON),
                                           temperature=1.0, seed=seed, max_tokens=256)
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue  # cut inside a long string; a complete answer is checked below
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    r = client.chat.completions.create(model=model_name, messages=ASK, response_format=response_format(PERSON),
                                       temperature=0, max_tokens=256)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_json_schema_streamed_and_with_n(client, model_name):
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "confidence"],
              "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "number"}}}
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Is the sky blue?"}],
        response_format=response_format(schema, "answer"), stream=True, temperature=0, max_tokens=64)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Is water wet?"}],
                                       response_format=response_format(schema, "answer"), n=3, temperature=1.0,
                                       seed=5, max_tokens=64)
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_and_completions(client, model_name):
    r = client.chat.completions.create(model=model_name,
                                       messages=[{"role": "user", "content": "A JSON object about Paris."}],
                                       response_format={"type": "json_object"}, temperature=0, max_tokens=200)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    # /v1/completions takes response_format too.
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}
    c = httpx.post(client.base_url.join("completions").__str__(), timeout=60, json={
        "model": model_name, "prompt": "Four prime numbers:", "max_tokens": 40, "temperature": 0,
        "response_format": response_format(schema, "primes")})
    assert c.status_code == 200, c.text
    assert c.json()["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(c.json()["choices"][0]["text"]), schema)


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "string", "pattern": "^(?=a)a+$"}, "pattern"),
    ({"type": "string", "pattern": "a", "minLength": 2}, "minLength"),
    ({"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}, "format"),
    ({"type": "integer", "minimum": 3}, "minimum"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties"),
])
def test_unsupported_schema_keywords_are_400(client, model_name, schema, keyword):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=ASK, response_format=response_format(schema),
                                       max_tokens=8)
    assert keyword in str(e.value)
    assert e.value.body["param"] == "response_format"


@pytest.mark.parametrize("body,param,text", [
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format", "name"),
    ({"response_format": "json"}, "response_format", "object"),
    ({"guided_grammar": "root ::= other"}, "guided_grammar", "'other' is used but not defined"),
    ({"structured_outputs": {"grammar": "root ::= root \"a\""}}, "structured_outputs", "left recursion"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs", "structured_outputs.structural_tag"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "only one"),
    ({"structured_outputs": {}}, "structured_outputs", "one of"),
    ({"structured_outputs": {"regex": "(a)\\1"}}, "structured_outputs", "backreference '\\1'"),
    ({"structured_outputs": {"regex": "\\bword"}}, "structured_outputs", "word boundary"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty"),
    ({"guided_regex": "a(?<=b)"}, "guided_regex", "lookbehind"),
    ({"guided_choice": "yes"}, "guided_choice", "list"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs",
     "cannot be combined"),
])
def test_bad_response_formats_are_400(server, model_name, body, param, text):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"model": model_name, "messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"]
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


PHONE = r"\(\d{3}\) \d{3}-\d{4}"
REGEXES = [PHONE, r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?", r"(yes|no), because [a-z ]{5,30}\.",
           r"-?\d{1,3}(\.\d{1,2})?", r"[^\n]{0,40}"]


@pytest.mark.parametrize("pattern", REGEXES)
def test_structured_outputs_regex_chat_and_completions(client, model_name, pattern):
    for seed in range(3):
        r = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Answer briefly: who are you?"}],
            extra_body={"structured_outputs": {"regex": pattern}}, temperature=1.0, seed=seed, max_tokens=64)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert re.fullmatch(pattern, choice.message.content), (pattern, choice.message.content)
    c = client.completions.create(model=model_name, prompt="My phone number is", max_tokens=32, temperature=0,
                                  extra_body={"guided_regex": pattern})
    assert c.choices[0].finish_reason == "stop", c.choices[0].text
    assert re.fullmatch(pattern, c.choices[0].text), (pattern, c.choices[0].text)


def test_structured_outputs_regex_streamed_and_n(client, model_name):
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Call me."}],
        extra_body={"structured_outputs": {"regex": PHONE}}, stream=True, temperature=0, max_tokens=32)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert re.fullmatch(PHONE, text), text
    r = client.completions.create(model=model_name, prompt="Phone:", n=3, temperature=1.0, seed=3, max_tokens=32,
                                  extra_body={"structured_outputs": {"regex": PHONE}})
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        assert re.fullmatch(PHONE, choice.text), choice.text


def test_structured_outputs_choice(client, model_name):
    choices = ["positive", "negative", "neutral", "mixed feelings"]
    for seed in range(4):
        r = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "The sentiment of 'I love it'?"}],
            extra_body={"structured_outputs": {"choice": choices}}, temperature=1.0, seed=seed, max_tokens=16)
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content in choices
    c = client.completions.create(model=model_name, prompt="Paris is in", max_tokens=8, temperature=0,
                                  extra_body={"guided_choice": ["France", "Spain", "Japan"]})
    assert c.choices[0].text in ["France", "Spain", "Japan"]


def test_structured_outputs_json_and_string_keywords(client, model_name):
    schema = {"type": "object", "additionalProperties": False, "required": ["code", "nick", "motto"],
              "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
                             "nick": {"type": "string", "minLength": 2, "maxLength": 6},
                             "motto": {"type": "string", "maxLength": 20}}}
    for seed in range(3):
        r = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Invent a spy as JSON."}],
            extra_body={"structured_outputs": {"json": schema}}, temperature=1.0, seed=seed, max_tokens=128)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    # The same keywords through response_format, and guided_json as JSON text.
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "A spy as JSON."}],
                                       response_format=response_format(schema, "spy"), temperature=0, max_tokens=128)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    c = client.completions.create(model=model_name, prompt="A spy:", max_tokens=128, temperature=0,
                                  extra_body={"guided_json": json.dumps(schema)})
    assert c.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(c.choices[0].text), schema)


ARITH = r'''
root ::= expr
expr ::= term (" " [+*-] " " term){0,3}
term ::= [1-9] [0-9]? | "(" expr ")"
'''


def arith_ok(text):
    """Whether `text` is in the ARITH language: a recursive-descent reading of its three rules."""
    def term(i):
        if text.startswith("(", i):
            j = expr(i + 1)
            if j is None or not text.startswith(")", j):
                return None
            return j + 1
        m = re.compile(r"[1-9][0-9]?").match(text, i)
        return m.end() if m else None

    def expr(i):
        i = term(i)
        for _ in range(3):
            if i is None or not re.compile(r" [+*-] ").match(text, i):
                break
            i = term(i + 3)
        return i

    return expr(0) == len(text)


def test_structured_outputs_grammar(client, model_name):
    for seed in range(3):
        r = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Write a sum."}],
            extra_body={"structured_outputs": {"grammar": ARITH}}, temperature=1.0, seed=seed, max_tokens=64)
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue  # nested parentheses can outgrow max_tokens; the greedy answer below must end
        assert arith_ok(choice.message.content), choice.message.content
    c = client.completions.create(model=model_name, prompt="2 + 2 =", max_tokens=48, temperature=0,
                                  extra_body={"guided_grammar": ARITH})
    assert c.choices[0].finish_reason == "stop", c.choices[0].text
    assert arith_ok(c.choices[0].text), c.choices[0].text
    yesno = 'root ::= answer "."\nanswer ::= "yes" | "no"'
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Is it?"}],
                                       extra_body={"structured_outputs": {"grammar": yesno}}, max_tokens=8)
    assert r.choices[0].message.content in ("yes.", "no.")
