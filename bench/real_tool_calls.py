"""Tool calls and structured outputs on a real model (issue 19), with the official openai client
against a running stemserve: what a user of Qwen2.5-Coder-Instruct gets. Each case checks what
the server guarantees (forced calls and constrained outputs parse and validate; streamed calls
reassemble to the non-streamed answer; a tool result fed back is answered) and records what the
model chose where it is free to choose (tool_choice "auto"). Exits non-zero if a guarantee fails.

    stemserve serve --model models/cache/Qwen2.5-Coder-1.5B-Instruct --port 8011 --max-model-len 4096 &
    .venv/bin/python bench/real_tool_calls.py --url http://127.0.0.1:8011/v1

Greedy (temperature 0) throughout, so a rerun gives the same answers on the same backend."""
import argparse
import json
import re
import sys
import time

import jsonschema
import openai

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a timezone",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["timezone"], "properties": {
        "timezone": {"type": "string", "description": "an IANA timezone, e.g. Europe/Paris"}}}}}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
BOTH = [{"role": "user", "content": "What is the weather in Paris and what time is it in Tokyo?"}]


def valid_calls(calls):
    """Every call names a known function and its arguments validate against its parameters."""
    for c in calls:
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--max-tokens", type=int, default=80)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.url, api_key="none", timeout=600)
    model = client.models.list().data[0].id
    rows, failed = [], 0

    def case(name, fn):
        nonlocal failed
        start = time.time()
        try:
            what = fn()
            status = "ok"
        except Exception as e:  # a guarantee that did not hold
            what, status = f"{type(e).__name__}: {e}", "FAILED"
            failed += 1
        rows.append((name, status, time.time() - start, what))
        print(f"{status:6} {name:34} {time.time() - start:6.1f} s  {what}", flush=True)

    def chat(messages, **kw):
        kw.setdefault("max_tokens", a.max_tokens)
        return client.chat.completions.create(model=model, messages=messages, temperature=0, **kw)

    def auto():
        r = chat(ASK, tools=[WEATHER, TIME])
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            return f"model called {valid_calls(c.message.tool_calls)}"
        return f"model answered in text ({c.finish_reason}): {c.message.content[:90]!r}"

    def required():
        r = chat(ASK, tools=[WEATHER, TIME], tool_choice="required")
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        return f"{valid_calls(c.message.tool_calls)}"

    def named():
        r = chat(BOTH, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
        c = r.choices[0]
        assert [t.function.name for t in c.message.tool_calls] == ["get_time"], c
        return f"{valid_calls(c.message.tool_calls)} ({c.finish_reason})"

    def parallel():
        r = chat(BOTH, tools=[WEATHER, TIME], tool_choice="required", max_tokens=160)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        return f"{len(c.message.tool_calls)} call(s): {valid_calls(c.message.tool_calls)}"

    def streamed():
        whole = chat(BOTH, tools=[WEATHER, TIME], tool_choice="required", max_tokens=160).choices[0].message
        parts, finish = {}, None
        for chunk in chat(BOTH, tools=[WEATHER, TIME], tool_choice="required", max_tokens=160, stream=True):
            for ch in chunk.choices:
                finish = ch.finish_reason or finish
                for d in ch.delta.tool_calls or []:
                    p = parts.setdefault(d.index, {"name": "", "arguments": ""})
                    p["name"] += (d.function.name or "") if d.function else ""
                    p["arguments"] += (d.function.arguments or "") if d.function else ""
        got = [(p["name"], p["arguments"]) for _, p in sorted(parts.items())]
        want = [(t.function.name, t.function.arguments) for t in whole.tool_calls]
        assert got == want and finish == "tool_calls", (got, want, finish)
        return f"{len(got)} streamed call(s) reassemble to the whole answer"

    def fed_back():
        # The server's part: the call and its result reach the prompt (it grows by the result's
        # tokens and more). The model's part, recorded: with the tools offered again (auto) a small
        # model may call again; with tool_choice "none" the template gets no tools and it answers.
        r = chat(ASK, tools=[WEATHER], tool_choice="required")
        call = r.choices[0].message.tool_calls[0]
        msgs = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "22 degrees celsius, sunny"}]
        again = chat(msgs, tools=[WEATHER])
        assert again.usage.prompt_tokens > r.usage.prompt_tokens + 8, (again.usage, r.usage)
        told = chat(msgs, tools=[WEATHER], tool_choice="none").choices[0]
        first = again.choices[0].message
        said = f"calls again {valid_calls(first.tool_calls)}" if first.tool_calls else repr(first.content[:60])
        return f"auto: {said}; none: {told.message.content[:80]!r}"

    def json_schema():
        schema = {"type": "object", "additionalProperties": False, "required": ["name", "language", "year"],
                  "properties": {"name": {"type": "string"}, "language": {"type": "string", "enum": ["C", "C++", "Python"]},
                                 "year": {"type": "integer"}}}
        r = chat([{"role": "user", "content": "Describe the Python interpreter CPython as JSON."}],
                 response_format={"type": "json_schema", "json_schema": {"name": "project", "schema": schema}})
        c = r.choices[0]
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.message.content), schema)
        return c.message.content

    def regex():
        pattern = r"\d{4}-\d{2}-\d{2}"
        r = chat([{"role": "user", "content": "When was Python 3.0 released? Answer with the date only."}],
                 extra_body={"structured_outputs": {"regex": pattern}})
        text = r.choices[0].message.content
        assert re.fullmatch(pattern, text), text
        return text

    def choice():
        options = ["positive", "negative", "neutral"]
        r = chat([{"role": "user", "content": "Sentiment of: 'This compiler is wonderful.'"}],
                 extra_body={"structured_outputs": {"choice": options}})
        text = r.choices[0].message.content
        assert text in options, text
        return text

    for name, fn in [("tool_choice auto", auto), ("tool_choice required", required), ("tool_choice named", named),
                     ("two questions, required", parallel), ("streamed tool calls", streamed),
                     ("tool result fed back", fed_back), ("response_format json_schema", json_schema),
                     ("structured_outputs regex", regex), ("structured_outputs choice", choice)]:
        case(name, fn)
    print(f"real_tool_calls: {model}: {len(rows) - failed} of {len(rows)} guarantees held")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
