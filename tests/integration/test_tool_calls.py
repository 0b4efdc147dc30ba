"""Tool calling over HTTP with the official openai client, on the default model (SmolLM2-135M-
Instruct, whose chat template has no tool-call format and which does not call tools on its own):
forced calls (a named tool_choice and "required", enforced by token masks) parse and validate
against the function's parameters (jsonschema), streamed calls reassemble to the whole answer,
tool results fed back reach the prompt, and bad tool definitions get a 400 naming the field.
Reading the models' own formats (tool_choice "auto") from given text is tested in C++
(tests/toolcall, tests/server/test_tool_response.cc); here auto is checked for its plumbing."""
import json

import jsonschema
import openai
import pytest

from conftest import Server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["timezone"], "properties": {
        "timezone": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def hermes():
    """A server told the model writes Hermes tool calls (--tool-call-parser), so tool_choice auto is served."""
    s = Server("--tool-call-parser", "hermes")
    from openai import OpenAI
    yield OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert s.stop() == 0, s.log_text()


def check_call(call, names):
    assert call.type == "function"
    assert call.id.startswith("call_") and len(call.id) == 29
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def test_named_tool_choice(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER, TIME], temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI answers a forced function
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0], {"get_weather"})


def test_required_tool_choice(client, model_name):
    for parallel in (False, True):
        r = client.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER, TIME], temperature=0,
                                           tool_choice="required", parallel_tool_calls=parallel, max_tokens=128)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        calls = choice.message.tool_calls
        assert len(calls) >= 1 and (parallel or len(calls) == 1)
        for c in calls:
            check_call(c, {"get_weather", "get_time"})
        assert len({c.id for c in calls}) == len(calls)


def reassemble(stream):
    """The streamed tool calls by index: id, name and the arguments' pieces joined."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                if tc.index not in calls:
                    # The first chunk of a call has its id, type and name.
                    assert tc.id and tc.type == "function" and tc.function.name
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                else:
                    assert tc.id is None and tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)], content, finish


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_streamed_tool_calls_reassemble(client, model_name, tool_choice):
    kw = dict(model=model_name, messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
              tools=[WEATHER, TIME], tool_choice=tool_choice, temperature=0, max_tokens=128)
    whole = client.chat.completions.create(**kw).choices[0]
    calls, content, finish = reassemble(client.chat.completions.create(stream=True, **kw))
    assert finish == whole.finish_reason
    assert content == ""
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("call_") for c in calls)


def test_tool_results_fed_back(client, model_name):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"},
    ]
    before = client.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER], tool_choice="none",
                                            max_tokens=1)
    r = client.chat.completions.create(model=model_name, messages=history, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=16)
    assert r.choices[0].message.tool_calls is None
    assert isinstance(r.choices[0].message.content, str)
    # The tool's answer is in the prompt (the template renders the tool message).
    assert r.usage.prompt_tokens >= before.usage.prompt_tokens + 8
    # ... and the same history may ask for the next call, forced.
    again = client.chat.completions.create(model=model_name, messages=history, tools=[WEATHER, TIME],
                                           tool_choice="required", temperature=0, max_tokens=256)
    assert again.choices[0].finish_reason == "tool_calls", again.choices[0].message
    check_call(again.choices[0].message.tool_calls[0], {"get_weather", "get_time"})


def bad_request(client, model_name, **kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, **{"messages": ASK, "max_tokens": 4, **kw})
    return e.value.body["message"], e.value.body.get("param")


def test_bad_tool_definitions_get_400(client, model_name):
    cases = [
        ([{"type": "function", "function": {"name": "has spaces"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "retrieval"}], "tools[0].type"),
        ([WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
         "tools[1].function.parameters"),
        ([WEATHER, WEATHER], "tools[1].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}], "tools[0].function.parameters"),
    ]
    for tools, param in cases:
        message, got = bad_request(client, model_name, tools=tools, tool_choice="none")
        assert got == param and param in message, (tools, message)
    # A schema outside the enforced subset is refused when the call is forced.
    unserved = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "format": "date"}}}}}
    message, got = bad_request(client, model_name, tools=[WEATHER, unserved], tool_choice="required")
    assert got == "tools[1].function.parameters" and "format" in message
    message, got = bad_request(client, model_name, tools=[WEATHER],
                               tool_choice={"type": "function", "function": {"name": "other"}})
    assert got == "tool_choice" and "other" in message
    message, got = bad_request(client, model_name, tool_choice="required")
    assert got == "tool_choice"
    message, got = bad_request(client, model_name, messages=ASK + [{"role": "tool", "content": "x"}])
    assert got == "messages[1].tool_call_id"
    message, got = bad_request(client, model_name, messages=ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}])
    assert got == "messages[1].tool_calls[0].function.arguments"
    message, got = bad_request(client, model_name, extra_body={"functions": [WEATHER["function"]]})
    assert got == "functions"


def test_auto_needs_a_tool_call_format(client, model_name):
    # SmolLM2's template teaches no tool-call format: auto is refused unless the server names one.
    message, got = bad_request(client, model_name, tools=[WEATHER])
    assert got == "tools" and "--tool-call-parser" in message


def test_auto_with_a_parser(hermes, model_name):
    kw = dict(model=model_name, messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=24)
    whole = hermes.chat.completions.create(**kw).choices[0]
    calls, content, finish = reassemble(hermes.chat.completions.create(stream=True, **kw))
    # Whatever the model chose, the streamed answer is the whole one.
    assert finish == whole.finish_reason
    assert content == (whole.message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]
    if whole.finish_reason == "tool_calls":
        for c in whole.message.tool_calls:
            json.loads(c.function.arguments)
    # Forced calls work the same on this server.
    r = hermes.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER], tool_choice="required",
                                       temperature=0, max_tokens=64)
    check_call(r.choices[0].message.tool_calls[0], {"get_weather"})
