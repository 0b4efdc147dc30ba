"""models/prepare/convert_gguf.py on a tiny synthetic qwen2 GGUF written here with the `gguf` package
the way llama.cpp exports a Qwen2 model (no Q/K row permutation, q/k/v biases, a byte-level BPE
vocab padded with [PAD<id>] tokens, <|...|> markers as control tokens), then the folder served by
the real stemserve binary. No network and no real model: seconds.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "prepare"))
import convert_gguf  # noqa: E402
import safetensors_writer  # noqa: E402

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 320
HEAD_DIM = HIDDEN // HEADS
ADDED = [("<|endoftext|>", gguf.TokenType.CONTROL), ("<|im_start|>", gguf.TokenType.CONTROL),
         ("<|im_end|>", gguf.TokenType.CONTROL), ("<tool_call>", gguf.TokenType.USER_DEFINED),
         ("<|fim_prefix|>", gguf.TokenType.CONTROL)]
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
            " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = 0
    out = {}
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = byte_alphabet()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "e r"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for t, ty in ADDED:
        tokens.append(t)
        types.append(ty)
    while len(tokens) < VOCAB:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types], merges


def weights(rng, head: str) -> dict[str, np.ndarray]:
    def w(*shape, scale=None):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1] if scale is None else scale)).astype(np.float32)

    emb = w(VOCAB, HIDDEN, scale=1)
    out = {"token_embd.weight": emb, "output_norm.weight": 1 + 0.1 * w(HIDDEN, scale=1)}
    if head == "copy":
        out["output.weight"] = emb + 0.01 * w(VOCAB, HIDDEN, scale=1)  # the same matrix, requantized
    elif head == "own":
        out["output.weight"] = w(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"blk.{i}."
        out.update({
            p + "attn_norm.weight": 1 + 0.1 * w(HIDDEN, scale=1), p + "ffn_norm.weight": 1 + 0.1 * w(HIDDEN, scale=1),
            p + "attn_q.weight": w(HEADS * HEAD_DIM, HIDDEN), p + "attn_q.bias": 0.5 * w(HEADS * HEAD_DIM, scale=1),
            p + "attn_k.weight": w(KV_HEADS * HEAD_DIM, HIDDEN), p + "attn_k.bias": 0.5 * w(KV_HEADS * HEAD_DIM, scale=1),
            p + "attn_v.weight": w(KV_HEADS * HEAD_DIM, HIDDEN), p + "attn_v.bias": 0.5 * w(KV_HEADS * HEAD_DIM, scale=1),
            p + "attn_output.weight": w(HIDDEN, HEADS * HEAD_DIM),
            p + "ffn_gate.weight": w(INTER, HIDDEN), p + "ffn_up.weight": w(INTER, HIDDEN),
            p + "ffn_down.weight": w(HIDDEN, INTER),
        })
    return out


# Matrices quantized as a Q4_K_M file mixes them (Q8_0 stands in for the finer type: rows of 64
# fit its blocks of 32, not K-quants' 256); vectors stay F32.
QTYPE = {"output.weight": gguf.GGMLQuantizationType.Q8_0, "token_embd.weight": gguf.GGMLQuantizationType.Q4_0}


def write_gguf(path: pathlib.Path, head: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = weights(rng, head)
    tokens, types, merges = vocab()
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(LAYERS)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    stored = {}
    for name, arr in tensors.items():
        qtype = QTYPE.get(name, gguf.GGMLQuantizationType.Q8_0 if arr.ndim == 2 else None)
        if qtype is None:
            w.add_tensor(name, arr)
            stored[name] = arr
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            stored[name] = gguf.quants.dequantize(q, qtype).reshape(arr.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def read_bf16(folder: pathlib.Path) -> dict[str, np.ndarray]:
    header, start = safetensors_writer.read_header(folder / "model.safetensors")
    header.pop("__metadata__")
    raw = (folder / "model.safetensors").read_bytes()
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        bits = np.frombuffer(raw[start + a:start + b], dtype="<u2")
        out[name] = safetensors_writer.bf16_bits_to_fp32(bits).reshape(h["shape"])
    return out


def bf16(x: np.ndarray) -> np.ndarray:
    return safetensors_writer.bf16_bits_to_fp32(safetensors_writer.fp32_to_bf16_bits(x))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """head -> (folder, what the GGUF stores, dequantized)."""
    out = {}
    for head in ("copy", "none", "own"):
        d = tmp_path_factory.mktemp(f"qwen2-{head}")
        stored = write_gguf(d / "tiny.gguf", head)
        convert_gguf.convert(d / "tiny.gguf", d / "model")
        out[head] = (d / "model", stored)
    return out


def test_config_is_qwen2s(converted):
    folder, _ = converted["copy"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["rope_theta"] == 1000000.0 and cfg["rms_norm_eps"] == 1e-06
    assert cfg["max_position_embeddings"] == 4096 and cfg["sliding_window"] == 4096
    assert cfg["use_sliding_window"] is False and cfg["max_window_layers"] == LAYERS
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (HEADS, KV_HEADS, HEAD_DIM)
    assert cfg["vocab_size"] == VOCAB and "attention_bias" not in cfg
    tokens, _, _ = vocab()
    assert cfg["eos_token_id"] == tokens.index("<|im_end|>") and cfg["bos_token_id"] == tokens.index("<|endoftext|>")
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")]
    assert gen["pad_token_id"] == tokens.index("<|endoftext|>")


def test_weights_are_the_gguf_s_without_permutation(converted):
    """qwen2 rows stay in place (llama.cpp runs qwen2 with the NEOX rope, HF's rotate-half), biases
    included; every tensor is the dequantized GGUF tensor rounded to bf16."""
    folder, stored = converted["none"]
    got = read_bf16(folder)
    for i in range(LAYERS):
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
            for suffix in ("weight", "bias"):
                np.testing.assert_array_equal(got[f"model.layers.{i}.self_attn.{h}.{suffix}"],
                                              bf16(stored[f"blk.{i}.{g}.{suffix}"]))
        np.testing.assert_array_equal(got[f"model.layers.{i}.mlp.down_proj.weight"], bf16(stored[f"blk.{i}.ffn_down.weight"]))
    np.testing.assert_array_equal(got["model.embed_tokens.weight"], bf16(stored["token_embd.weight"]))


def test_tied_head(converted):
    """No output.weight: tied. output.weight a second quantization of token_embd: tied, the finer copy
    (Q8_0 over Q4_0) kept. Another matrix: untied, both kept."""
    for head, tied, embedding in (("none", True, "token_embd.weight"), ("copy", True, "output.weight"),
                                  ("own", False, "token_embd.weight")):
        folder, stored = converted[head]
        cfg = json.loads((folder / "config.json").read_text())
        got = read_bf16(folder)
        assert cfg["tie_word_embeddings"] is tied, head
        assert ("lm_head.weight" in got) is (not tied), head
        np.testing.assert_array_equal(got["model.embed_tokens.weight"], bf16(stored[embedding]))
        if not tied:
            np.testing.assert_array_equal(got["lm_head.weight"], bf16(stored["output.weight"]))
    manifest = json.loads((converted["copy"][0] / "stemserve_manifest.json").read_text())
    assert manifest["source"]["head"]["embedding_from"] == "output.weight"


def test_tokenizer_is_qwen2s(converted):
    from tokenizers import Tokenizer

    folder, _ = converted["copy"]
    tj = json.loads((folder / "tokenizer.json").read_text())
    assert tj["normalizer"] == {"type": "NFC"}
    split, byte_level = tj["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"].startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|")
    assert byte_level == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokens, _, _ = vocab()
    n_real = sum(not t.startswith("[PAD") for t in tokens)
    assert len(tj["model"]["vocab"]) == n_real, "llama.cpp's [PAD] tokens are not the tokenizer's"
    special = {t["content"]: t["special"] for t in tj["added_tokens"]}
    assert special == {"<|endoftext|>": True, "<|im_start|>": True, "<|im_end|>": True, "<tool_call>": False,
                       "<|fim_prefix|>": False}
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tcfg["bos_token"] is None and tcfg["eos_token"] == "<|im_end|>" and tcfg["pad_token"] == "<|endoftext|>"
    assert tcfg["chat_template"] == TEMPLATE and tcfg["tokenizer_class"] == "Qwen2Tokenizer"
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tok.encode("the<|im_end|> 12", add_special_tokens=False).ids
    assert ids == [tokens.index("t"), tokens.index("he"), tokens.index("<|im_end|>"), tokens.index("Ġ"),
                   tokens.index("1"), tokens.index("2")]


def test_stemserve_serves_the_folder(converted):
    """The engine takes the folder: Qwen2 config, its tokenizer (PCRE2 regex, NFC) and the template."""
    binary = os.environ.get("STEMSERVE_BIN")
    if not binary:
        for build in ("build-test", "build"):
            if (ROOT / build / "server" / "stemserve").exists():
                binary = str(ROOT / build / "server" / "stemserve")
    if not binary:
        pytest.skip("no stemserve binary")
    folder, _ = converted["copy"]
    r = subprocess.run([binary, "generate", "--model", str(folder), "--chat", "--prompt", "the thin inn",
                        "--max-tokens", "4", "--temperature", "0", "--ignore-eos"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
