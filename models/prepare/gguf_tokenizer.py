"""Rebuild Hugging Face tokenizer files from a GGUF's `tokenizer.ggml.*` metadata.

Only the byte-level BPE family (`tokenizer.ggml.model == "gpt2"`) is handled, with the
pre-tokenizers we know how to express: SmolLM's (`pre == "smollm"`: every digit its own piece,
then GPT-2's byte-level regex). Anything else is refused with a message rather than guessed.
"""

from __future__ import annotations

from typing import Any

# llama.cpp token types (gguf.TokenType): which become HF "added tokens", and whether special.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
_ADDED_TYPES = {TOKEN_UNKNOWN: True, TOKEN_CONTROL: True, TOKEN_USER_DEFINED: False}


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if pre == "smollm":
        return {"type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    if pre in ("gpt-2", "default"):
        return byte_level
    raise ValueError(f"tokenizer.ggml.pre = '{pre}' is not supported by this converter "
                     "(known: smollm, gpt-2)")


def added_tokens(meta: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, (tok, ty) in enumerate(zip(meta["tokens"], meta["token_type"])):
        if ty in _ADDED_TYPES:
            special = _ADDED_TYPES[ty]
            out.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": not special, "special": special})
    return out


def tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """meta: tokens, token_type, merges, model, pre (plain Python values from the GGUF)."""
    if meta["model"] != "gpt2":
        raise ValueError(f"tokenizer.ggml.model = '{meta['model']}': only byte-level BPE "
                         "('gpt2') is supported")
    tokens = meta["tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("tokenizer.ggml.tokens holds duplicate strings")
    for m in meta["merges"]:
        left, sep, right = m.partition(" ")
        if not sep or " " in right or (left + right) not in vocab:
            raise ValueError(f"merge '{m}' is malformed or makes a token outside the vocab")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens(meta),
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(meta["pre"]),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            # The classic "left right" string form (as the GGUF stores it). Byte-level tokens
            # never contain a space, so the split is unambiguous.
            "merges": list(meta["merges"]),
        },
    }


def tokenizer_config(meta: dict[str, Any], model_max_length: int) -> dict[str, Any]:
    tokens = meta["tokens"]

    def tok(key: str) -> str | None:
        i = meta.get(key)
        return tokens[i] if i is not None else None

    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                 "single_word", "special")}
               for t in added_tokens(meta)}
    cfg: dict[str, Any] = {
        "add_bos_token": bool(meta.get("add_bos", False)),
        "add_eos_token": bool(meta.get("add_eos", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": tok("bos_id"),
        "eos_token": tok("eos_id"),
        "pad_token": tok("pad_id"),
        "unk_token": tok("unk_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if meta.get("chat_template") is not None:
        cfg["chat_template"] = meta["chat_template"]
    return cfg
