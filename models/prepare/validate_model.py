"""Checks that a converted folder is usable: the tokenizer loads and round-trips text, the
chat template renders, the safetensors header agrees with config.json, and — where torch and
transformers are installed — the model answers a question sensibly when run greedily."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safetensors_writer  # noqa: E402

ROUND_TRIP_TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Digits 1234567890 and 3.14159, year 2024.",
    "def add(a, b):\n    return a + b  # 😀 café naïve Ω ß 東京",
    "<|im_start|>user\nHi there<|im_end|>\n",
]
QUESTION = "What is the capital of France?"


class ValidationError(RuntimeError):
    pass


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ValidationError(msg)


def check_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    cfg = json.loads((out / "config.json").read_text())
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    _expect(tok.get_vocab_size(with_added_tokens=True) == cfg["vocab_size"],
            f"tokenizer has {tok.get_vocab_size()} tokens, config says {cfg['vocab_size']}")
    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        _expect(back == text, f"round trip failed: {text!r} -> {ids} -> {back!r}")
    digits = tok.encode("12345", add_special_tokens=False).tokens
    _expect(digits == list("12345"), f"digits are not split one per token: {digits}")
    for key in ("bos_token", "eos_token"):
        name = tcfg[key]
        ids = tok.encode(name, add_special_tokens=False).ids
        _expect(ids == [tok.token_to_id(name)], f"{key} {name!r} encodes as {ids}")
    _expect(tok.token_to_id(tcfg["bos_token"]) == cfg["bos_token_id"], "bos id mismatch")
    _expect(tok.token_to_id(tcfg["eos_token"]) == cfg["eos_token_id"], "eos id mismatch")

    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(tcfg["chat_template"]).render(
        messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    _expect(ids.count(cfg["eos_token_id"]) >= 1 and ids[0] == cfg["bos_token_id"],
            f"chat prompt {prompt!r} did not tokenize to special tokens: {ids[:8]}...")
    print(f"tokenizer: ok ({tok.get_vocab_size()} tokens; chat prompt is {len(ids)} tokens)")


def check_weights(out: Path) -> None:
    cfg = json.loads((out / "config.json").read_text())
    header, _ = safetensors_writer.read_header(out / "model.safetensors")
    header.pop("__metadata__", None)
    h, d, inter = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    want = {"model.embed_tokens.weight": [cfg["vocab_size"], h], "model.norm.weight": [h]}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = [cfg["vocab_size"], h]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [nq * d, h], p + "self_attn.k_proj.weight": [nkv * d, h],
            p + "self_attn.v_proj.weight": [nkv * d, h], p + "self_attn.o_proj.weight": [h, nq * d],
            p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
            p + "mlp.down_proj.weight": [h, inter],
        })
    _expect(set(header) == set(want),
            f"tensor names differ: missing {sorted(set(want) - set(header))[:5]}, "
            f"extra {sorted(set(header) - set(want))[:5]}")
    for name, shape in want.items():
        _expect(header[name]["shape"] == shape,
                f"model.safetensors: tensor '{name}' has shape {header[name]['shape']}, "
                f"config says {shape}")
    print(f"weights: ok ({len(header)} tensors)")


def check_transformers(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    model.eval()
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"transformers: {QUESTION!r} -> {answer!r}")
    _expect("Paris" in answer, "the model did not answer Paris")


def run(out: Path, use_transformers: str) -> int:
    try:
        check_tokenizer(out)
        check_weights(out)
        if use_transformers != "no":
            try:
                import torch  # noqa: F401
                import transformers  # noqa: F401
            except ImportError:
                if use_transformers == "yes":
                    raise ValidationError("torch/transformers are not installed")
                print("transformers: not installed, generation check skipped")
                return 0
            check_transformers(out)
    except ValidationError as e:
        print(f"validation failed: {e}", file=sys.stderr)
        return 1
    return 0
