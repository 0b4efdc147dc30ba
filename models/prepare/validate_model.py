#!/usr/bin/env python3
"""Checks a converted model folder, in two depths.

Basic (`convert_gguf.py validate`, every preparation): the tokenizer loads and round-trips text,
the chat template renders, the safetensors header agrees with config.json, and — where torch and
transformers are installed — the model answers a question sensibly when run greedily.

Full (this script; `prepare_model.sh NAME --validate full`): Hugging Face transformers against
stemserve on the same folder. It writes a reference folder (transformers' teacher-forced logits on
a real prompt, greedy answers to chat prompts, the `tokenizers` package's ids for texts with code
and non-ASCII, transformers' chat-template renderings) and runs stemserve's check of it, the
`[real]` test of tests/models/test_hf_reference.cc (CPU backend) or, on the GPU machine,
tests/gpu_model/test_cuda_hf_reference.cc (CUDA backend; scripts/gpu_model_test.sh real):

    validate_model.py --model DIR [--name NAME] [--test-binary BIN] [--json OUT]
    validate_model.py --model DIR --reference-only REF_DIR --device cuda --dtype bfloat16 \\
                      --tokens 4096        # the GPU check's reference (no stemserve run)

Only torch, transformers, tokenizers and numpy are imported for the full check (not gguf): the
GPU machine has those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safetensors_writer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ROUND_TRIP_TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Digits 1234567890 and 3.14159, year 2024.",
    "def add(a, b):\n    return a + b  # 😀 café naïve Ω ß 東京",
    "<|im_start|>user\nHi there<|im_end|>\n",
]
QUESTION = "What is the capital of France?"

# The full check's inputs.
TOKENIZER_TEXTS = ROUND_TRIP_TEXTS + [
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];   // dot\r\n}\n",
    "    async def fetch(self, url: str) -> dict[str, int]:\n        return {'ok': 200}\n\n\n",
    "Ünïcödé: Grüße aus Köln — naïve café, 北京欢迎你, Привет мир, مرحبا, 🚀🔥 e\u0301 (decomposed)",
    "I'M SURE they'LL say it's fine; we've 12,345.67 items... x=1e-6",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
    "<tool_call>\n{\"name\": \"get\", \"arguments\": {}}\n</tool_call><|endoftext|>",
    "   \n\n  \t  trailing   ",
]
CHATS = [
    [{"role": "user", "content": QUESTION}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
    [{"role": "user", "content": "What does this function return, in one sentence?\n```python\n"
                                 "def f(xs):\n    return sorted(set(xs))[-2]\n```"}],
    [{"role": "user", "content": "Say hello in French."},
     {"role": "assistant", "content": "Bonjour !"},
     {"role": "user", "content": "Et en japonais ? Réponds en une ligne."}],
]
GREEDY_NEW = 48


class ValidationError(RuntimeError):
    pass


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ValidationError(msg)


# ---------------------------------------------------------------- basic

def check_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    cfg = json.loads((out / "config.json").read_text())
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    n = tok.get_vocab_size(with_added_tokens=True)
    # Equal, or smaller where llama.cpp padded the embedding past the tokenizer (Qwen2).
    _expect(n == cfg["vocab_size"] or (cfg["model_type"] == "qwen2" and n < cfg["vocab_size"]),
            f"tokenizer has {n} tokens, config says {cfg['vocab_size']}")
    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        _expect(back == text, f"round trip failed: {text!r} -> {ids} -> {back!r}")
    digits = tok.encode("12345", add_special_tokens=False).tokens
    _expect(digits == list("12345"), f"digits are not split one per token: {digits}")
    for key in ("bos_token", "eos_token", "pad_token"):
        name = tcfg.get(key)
        if name is None:
            continue
        ids = tok.encode(name, add_special_tokens=False).ids
        _expect(ids == [tok.token_to_id(name)], f"{key} {name!r} encodes as {ids}")
    if tcfg.get("bos_token") is not None:
        _expect(tok.token_to_id(tcfg["bos_token"]) == cfg["bos_token_id"], "bos id mismatch")
    _expect(tok.token_to_id(tcfg["eos_token"]) == cfg["eos_token_id"], "eos id mismatch")

    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(tcfg["chat_template"]).render(
        messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    specials = {int(i) for i, t in tcfg["added_tokens_decoder"].items() if t["special"]}
    _expect(ids.count(cfg["eos_token_id"]) >= 1 and ids[0] in specials,
            f"chat prompt {prompt!r} did not tokenize to special tokens: {ids[:8]}...")
    print(f"tokenizer: ok ({n} tokens; chat prompt is {len(ids)} tokens)")


def check_weights(out: Path) -> None:
    cfg = json.loads((out / "config.json").read_text())
    header, _ = safetensors_writer.read_header(out / "model.safetensors")
    header.pop("__metadata__", None)
    h, d, inter = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    biases = cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2"
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
        if biases:
            want.update({p + "self_attn.q_proj.bias": [nq * d], p + "self_attn.k_proj.bias": [nkv * d],
                         p + "self_attn.v_proj.bias": [nkv * d]})
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


# ---------------------------------------------------------------- full: the reference

def real_text(tok, n_tokens: int) -> list[int]:
    """n_tokens ids of real text that both machines have: this repository's docs and C++ sources,
    in a fixed order (prose and code)."""
    files = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "engine").glob("*.cc"))
    ids: list[int] = []
    for f in files:
        ids += tok.encode(f.read_text(encoding="utf-8") + "\n\n", add_special_tokens=False).ids
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise ValidationError(f"docs/ and engine/ hold fewer than {n_tokens} tokens")


def make_reference(model_dir: Path, ref_dir: Path, device: str, dtype: str, n_tokens: int,
                   greedy: bool = True) -> dict:
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    ref_dir.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype,
                                                 attn_implementation="sdpa").to(device).eval()
    print(f"transformers {transformers.__version__}: loaded {model_dir.name} ({dtype}, {device}) "
          f"in {time.time() - t0:.1f} s")

    tokenizer_cases = []
    for text in TOKENIZER_TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        hf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        _expect(ids == hf_ids, f"tokenizers and transformers' {type(hf_tok).__name__} disagree on "
                               f"{text!r}: {ids} vs {hf_ids}")
        tokenizer_cases.append({"text": text, "ids": ids})

    chat_cases = []
    for messages in CHATS:
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat_cases.append({"messages": messages, "text": text,
                           "ids": raw.encode(text, add_special_tokens=False).ids})

    ids = real_text(raw, n_tokens)
    t0 = time.time()
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0]
    print(f"teacher-forced logits over {len(ids)} tokens in {time.time() - t0:.1f} s")
    if logits.dtype == torch.bfloat16:  # stored as computed (bf16 bits), not rounded again
        raw_logits = logits.contiguous().view(torch.int16).cpu().numpy().astype("<i2")
        logits_dtype = "bf16"
    else:
        raw_logits = logits.float().cpu().numpy().astype("<f4")
        logits_dtype = "f32"
    raw_logits.tofile(ref_dir / "logits.bin")
    del logits

    greedy_cases = []
    eos = set(model.generation_config.eos_token_id if isinstance(
        model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])
    for case, messages in zip(chat_cases, CHATS) if greedy else []:
        prompt = torch.tensor([case["ids"]], device=device)
        t0 = time.time()
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=GREEDY_NEW, do_sample=False, top_k=None,
                                 top_p=None, temperature=None, output_logits=True,
                                 return_dict_in_generate=True)
        gen = out.sequences[0, prompt.shape[1]:].tolist()
        margins = []
        for step in out.logits:
            top = torch.topk(step[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        gen = gen[:len(margins)]
        name = messages[-1]["content"][:40]
        text = hf_tok.decode(gen, skip_special_tokens=True)
        print(f"greedy {name!r}: {len(gen)} tokens in {time.time() - t0:.1f} s: {text!r}")
        greedy_cases.append({"name": name, "prompt_ids": case["ids"], "generated_ids": gen,
                             "top2_margins": margins, "text": text,
                             "stopped_at_eos": bool(gen) and gen[-1] in eos})

    # fp32 against fp32 differs only by summation order; bf16 activations on both sides differ
    # by their roundings, which compound over the layers.
    tolerance = ({"relative": 1e-3, "argmax_agreement": 0.98} if dtype == "float32"
                 else {"relative": 5e-2, "argmax_agreement": 0.95})
    ref = {
        "model": str(model_dir.resolve()),
        "dtype": dtype, "device": device, "attn_implementation": "sdpa",
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "tolerance": tolerance,
        "tokenizer": tokenizer_cases,
        "chat": chat_cases,
        "teacher_forced": [{"name": f"docs+engine sources, {len(ids)} tokens", "input_ids": ids,
                            "logits_file": "logits.bin", "logits_dtype": logits_dtype}],
        "greedy": greedy_cases,
        "numpy": np.__version__,
    }
    (ref_dir / "reference.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    return ref


def rope_layout_check(model_dir: Path, n_tokens: int = 256) -> dict:
    """Whether the Q/K rows are in Hugging Face's order: perplexity on real text as converted, and
    with llama.cpp's llama reordering undone once more (convert_gguf.unpermute_rows). The right
    layout is the far better one; a converter that reordered a qwen2 model (or left a llama one
    reordered) shows up here as the opposite."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    import convert_gguf
    cfg = json.loads((model_dir / "config.json").read_text())
    ids = torch.tensor([real_text(Tokenizer.from_file(str(model_dir / "tokenizer.json")), n_tokens)])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def ppl() -> float:
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        return float(torch.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))

    as_converted = ppl()
    sd = model.state_dict()
    with torch.no_grad():
        for i in range(cfg["num_hidden_layers"]):
            for proj, heads in (("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])):
                for suffix in ("weight", "bias"):
                    key = f"model.layers.{i}.self_attn.{proj}.{suffix}"
                    if key in sd:
                        sd[key].copy_(torch.from_numpy(convert_gguf.unpermute_rows(sd[key].numpy(), heads)))
    reordered = ppl()
    print(f"rope layout: perplexity over {n_tokens} tokens {as_converted:.3f} as converted, "
          f"{reordered:.3f} with the Q/K rows reordered as for llama")
    _expect(as_converted < reordered, "the Q/K rows look reordered: the converter's layout is wrong")
    return {"tokens": n_tokens, "perplexity_as_converted": round(as_converted, 4),
            "perplexity_llama_reordered": round(reordered, 4)}


def find_test_binary(name: str) -> Path | None:
    builds = [os.environ.get("STEM_BUILD_DIR", ""), "build-test", "build"]
    for b in builds:
        if b:
            p = (ROOT / b if not os.path.isabs(b) else Path(b)) / "tests" / name
            if p.is_file():
                return p
    return None


def full(model_dir: Path, name: str, binary: Path | None, json_out: Path | None,
         n_tokens: int, keep: Path | None) -> int:
    import tempfile

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    binary = binary or find_test_binary("models_test_hf_reference")
    if binary is None:
        print("validate_model: no models_test_hf_reference binary; build it: cmake --build build "
              "--target models_test_hf_reference (or set STEM_BUILD_DIR / --test-binary)",
              file=sys.stderr)
        return 2
    rope = rope_layout_check(model_dir)
    with tempfile.TemporaryDirectory(prefix="stem-hfref-") as tmp:
        ref_dir = keep or Path(tmp)
        t0 = time.time()
        make_reference(model_dir, ref_dir, "cpu", "float32", n_tokens)
        t_ref = time.time() - t0
        result_file = ref_dir / "result.json"
        env = dict(os.environ, STEM_HF_REFERENCE=str(ref_dir), STEM_HF_REFERENCE_RESULT=str(result_file))
        t0 = time.time()
        rc = subprocess.run([str(binary), "[real]"], env=env).returncode
        t_ours = time.time() - t0
        if not result_file.is_file():
            print("validate_model: the stemserve check wrote no result", file=sys.stderr)
            return 1
        result = json.loads(result_file.read_text())
    result.update({"name": name, "passed": rc == 0, "rope_layout": rope,
                   "seconds": {"transformers_reference": round(t_ref, 1), "stemserve_check": round(t_ours, 1)}})
    print(f"validate_model: {name}: {'PASSED' if rc == 0 else 'FAILED'} (transformers {t_ref:.0f} s, "
          f"stemserve {t_ours:.0f} s)")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0 if rc == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the converted folder")
    ap.add_argument("--name", default=None, help="the model's name, for the report")
    ap.add_argument("--test-binary", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--tokens", type=int, default=None,
                    help="teacher-forced prompt length (default: 128 on cpu, 4096 on cuda)")
    ap.add_argument("--keep-reference", type=Path, default=None,
                    help="write the reference folder here instead of a temporary one")
    ap.add_argument("--reference-only", type=Path, default=None, metavar="REF_DIR",
                    help="only write the reference folder (the GPU check makes it so)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--no-greedy", action="store_true", help="reference-only: no greedy answers")
    a = ap.parse_args()
    name = a.name or a.model.name
    try:
        if a.reference_only:
            make_reference(a.model, a.reference_only, a.device, a.dtype,
                           a.tokens or (4096 if a.device != "cpu" else 128), greedy=not a.no_greedy)
            print(f"validate_model: reference written to {a.reference_only}")
            return 0
        return full(a.model, name, a.test_binary, a.json, a.tokens or 128, a.keep_reference)
    except ValidationError as e:
        print(f"validation failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
