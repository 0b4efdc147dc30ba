"""Writes the seed corpora of the libFuzzer targets into tests/fuzz/corpus/<target>/ (committed;
rerun after changing a target's input format): small valid inputs of each kind, from the test
fixtures and by hand, so that the fuzzers start from the formats' real shapes.
Run with the project's virtualenv: .venv/bin/python tests/fuzz/make_corpus.py"""
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fuzz/corpus"
FIX = ROOT / "tests/fixtures"


def target(name):
    """The corpus folder, emptied except for regression_* files (inputs that once found a bug)."""
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if not f.name.startswith("regression_"):
            f.unlink()
    return d


def write(d, name, data):
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: {name: (dtype, shape, raw bytes)}"""
    header, blobs, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs += raw
        offset += len(raw)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blobs


d = target("fuzz_safetensors")
write(d, "one_f32", safetensors({"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))}))
write(d, "mixed", safetensors({"a": ("BF16", [3], b"\x80\x3f" * 3), "b": ("F16", [1, 2], b"\x00\x3c" * 2),
                               "c": ("F32", [], struct.pack("<f", 7)), "e": ("F32", [0, 4], b"")},
                              metadata={"format": "pt"}))
write(d, "int_types", safetensors({"i": ("I64", [2], struct.pack("<2q", 1, -1)), "u": ("U8", [3], b"abc"),
                                   "q": ("I32", [1], struct.pack("<i", 5))}))
write(d, "header_only", safetensors({}))
write(d, "truncated", safetensors({"w": ("F32", [4], struct.pack("<4f", 1, 2, 3, 4))})[:-5])
# A real model's header with its data cut short (the fuzzer mutates the header).
real = (FIX / "models/llama-gqa/model.safetensors").read_bytes()
n = struct.unpack("<Q", real[:8])[0]
write(d, "llama_gqa_header", real[:8 + n] + real[8 + n:8 + n + 64])

d = target("fuzz_config")
for cfg in sorted((FIX / "models").glob("*/config.json")):
    write(d, cfg.parent.name, cfg.read_bytes())
write(d, "minimal", json.dumps({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                                "num_hidden_layers": 1, "num_attention_heads": 2}))
write(d, "llama3_scaling", json.dumps({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}, "eos_token_id": [1, 2], "bos_token_id": 0}))

d = target("fuzz_tokenizer")
texts = ["Hello world", "The capital of France is", " leading  spaces\tand\nnewlines\r\n",
         "ünïcödé 日本語 🙂 emoji", "<|im_start|>user\nHi<|im_end|>\n", "<s>[INST] hi [/INST]</s>",
         "def f(x):\n    return x ** 2  # 123456789", "caf\xc3\x28 invalid", "a" * 300, ""]
for tok in range(3):  # the first byte: tokenizer in bits 2-3, add_special in bit 0, decode in bit 1
    for i, t in enumerate(texts):
        raw = t.encode("utf-8", "surrogateescape") if "\xc3" not in t else b"caf\xc3\x28 invalid"
        write(d, f"encode_{tok}_{i}", bytes([tok << 2 | (i & 1)]) + raw)
    ids = [1, 2, 3, 100, 1000, 49151, 31999, 0, 220, 28705, 13, 29871]
    write(d, f"decode_{tok}", bytes([tok << 2 | 2]) + struct.pack(f"<{len(ids)}i", *ids))
    write(d, f"decode_mod_{tok}", bytes([0x40 | tok << 2 | 3]) + struct.pack("<8i", -5, 7, 1 << 30, 256, 257, 3, 4, 5))

d = target("fuzz_chat_template")
for t in sorted((FIX / "chat_templates").glob("*.jinja")):
    write(d, "template_" + t.stem, b"\x01" + t.read_bytes())
write(d, "template_features", b"\x01" + (
    "{% for m in messages %}{{ loop.index }}:{{ m.role|upper }}={{ m['content']|trim }}{% if not loop.last %},"
    "{% endif %}{% endfor %}{% set x = nums|sort %}{{ x|join('-') }}{{ d|tojson }}{{ 'a' ~ 1 }}"
    "{% if add_generation_prompt %}<gen>{% endif %}{{ raise_exception('stop') if false }}").encode())
conversations = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"}],
    [{"role": "tool", "content": "{\"x\": 1}"}, {"role": "user", "content": ""}],
    [{"role": "user", "content": "ünïcödé 🙂", "name": "bob"}],
]
for i, c in enumerate(conversations):
    write(d, f"messages_{i}", bytes([2 * (i & 1)]) + json.dumps(c).encode())
write(d, "messages_nul", b"\x02user\x00Hello\x00assistant\x00Hi there\x00user\x00Bye")

d = target("fuzz_request")
bodies = [
    {"prompt": "Hello", "max_tokens": 8, "temperature": 0},
    {"prompt": [1, 2, 3], "max_tokens": 2, "n": 2, "logprobs": 3, "stop": ["\n", "END"], "seed": 7},
    {"prompt": ["one prompt"], "stream": True, "stream_options": {"include_usage": True}, "top_k": 40,
     "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5},
    {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5,
     "logprobs": True, "top_logprobs": 2},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
     "add_generation_prompt": False, "sparse_prefill": "dense", "ignore_eos": True, "stop_token_ids": [2]},
    {"prompt": "x", "max_tokens": 1.0, "best_of": 1, "echo": False, "suffix": "", "include_stop_str_in_output": True},
    {"tokens": [1, 2, 3, 49151]},
    {"prompt": "Hello", "add_special_tokens": False},
    {"messages": [{"role": "user", "content": None}], "temperature": 2},
]
for i, b in enumerate(bodies):
    write(d, f"body_{i}", json.dumps(b))
write(d, "body_response_format", json.dumps({"messages": [{"role": "user", "content": "x"}], "response_format": {
    "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}}))
for name, extra in {"regex": {"structured_outputs": {"regex": "\\d{3}-[a-z]+"}},
                    "choice": {"structured_outputs": {"choice": ["yes", "no"]}},
                    "json": {"structured_outputs": {"json": {"type": "string", "pattern": "^a+$", "maxLength": 4}}},
                    "grammar": {"guided_grammar": 'root ::= "(" root ")" | [a-z]'},
                    "guided": {"prompt": "x", "guided_regex": "[0-9]+", "guided_choice": ["a"]}}.items():
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    if "prompt" in extra:
        del body["messages"]
    write(d, f"body_structured_{name}", json.dumps(body))
weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
for name, extra in {"named": {"type": "function", "function": {"name": "get_weather"}}, "required": "required",
                    "none": "none"}.items():
    write(d, f"body_tools_{name}", json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"}],
        "tools": [weather], "tool_choice": extra, "parallel_tool_calls": False}))

# fuzz_json_schema: a schema on the first line, then the bytes that steer a walk through its grammar.
d = target("fuzz_json_schema")
steer = bytes(range(32, 127)) * 2
schemas = {
    "object": {"type": "object", "required": ["a", "b"], "additionalProperties": False, "properties": {
        "a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "c": {"anyOf": [{"type": "number"}, {"type": "null"}]}}},
    "recursive": {"$defs": {"n": {"type": "object", "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
                  "$ref": "#/$defs/n"},
    "enum": {"enum": ["x", "xy", 1, None, {"k": True}]},
    "any": {},
    "string": {"type": "string"},
    "types": {"type": ["integer", "boolean", "null"], "title": "t"},
    "array": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 4},
    "pattern": {"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(x|\"|\\\\)?$"},
        "nick": {"type": "string", "minLength": 1, "maxLength": 4}}},
    "refused": {"type": "string", "pattern": "a(?=b)"},
}
for name, schema in schemas.items():
    write(d, name, json.dumps(schema).encode() + b"\n" + steer)

# fuzz_regex: a pattern on the first line, then the bytes that steer a walk through its grammar.
d = target("fuzz_regex")
patterns = {
    "phone": r"\(\d{3}\) \d{3}-\d{4}",
    "classes": r"[A-Za-z_][\w.-]{0,8}@[^\s@]+\.(com|org)",
    "groups": r"^(?:ab|c(?P<x>d|e)*){1,3}f?$",
    "escapes": r"\x41\u00e9\t\n\\\.\[\]\{\}\/\"",
    "unicode": "[\u0100-\uffffé-ÿ]+.{2}",
    "negated": r"[^a-z\d]{2,}[^\x00-\x7f]",
    "quantifiers": r"a*?b+c??d{2}e{1,}f{,2}g{0,3}",
    "alternation": r"|x|(y|)z",
    "refused": r"(a)\1(?=b)\bc",
}
for name, pattern in patterns.items():
    write(d, name, pattern.encode() + b"\n" + steer)

# fuzz_gbnf: a GBNF grammar, a NUL byte, then the bytes that steer a walk through it.
d = target("fuzz_gbnf")
grammars = {
    "json": r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ( string ":" value ("," string ":" value)* )? "}"
array  ::= "[" ( value ("," value)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
""",
    "parens": 'root ::= "(" root ")" root | ""  # balanced',
    "arith": 'root ::= expr\nexpr ::= term (" " [+*-] " " term){0,3}\nterm ::= [1-9] [0-9]? | "(" expr ")"',
    "unicode": 'root ::= [\\u00e0-\\u00ff]+ . "\\U0001F600"? [^a-z]{1,2}',
    "left": 'root ::= x "a"\nx ::= y?\ny ::= root',
}
for name, grammar in grammars.items():
    write(d, name, grammar.encode() + b"\0" + steer)

# fuzz_tool_calls: a mode byte (0 Hermes, 1 Llama-3 JSON, 2 Mistral: a model's output follows; 3: a
# tools list on the first line, then a "required" answer), as the models write their calls.
d = target("fuzz_tool_calls")
outputs = {
    "hermes": (0, 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                  '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'),
    "hermes_open": (0, '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": [1, {\\"y\\": null}]}"}'),
    "hermes_text": (0, "Just words, a < b and <tool"),
    "llama": (1, '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "now", "parameters": {}}'),
    "llama_tag": (1, 'Sure.<|python_tag|>{"name": "f", "parameters": {"q": "}{"}}'),
    "mistral": (2, 'Sure. [TOOL_CALLS] [{"name": "f", "arguments": {"a": 1.5e3}}, {"name": "g", "arguments": {}}]'),
}
for name, (mode, text) in outputs.items():
    write(d, name, bytes([mode]) + text.encode())
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "now"}}]
write(d, "tools", bytes([3]) + json.dumps(tools).encode() + b'\n[{"name":"get_weather","parameters":{"city":"x"}}]')
write(d, "tools_bad", bytes([3]) + b'[{"type": "function", "function": {"name": "a b"}}]\n[]')
print("corpora written under", OUT)
