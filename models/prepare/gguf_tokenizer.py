"""Rebuild Hugging Face tokenizer files from a GGUF's `tokenizer.ggml.*` metadata.

Only the byte-level BPE family (`tokenizer.ggml.model == "gpt2"`) is handled, with the
pre-tokenizers we know how to express: SmolLM's (`pre == "smollm"`: every digit its own piece,
then GPT-2's byte-level regex) and Qwen2's (`pre == "qwen2"`: NFC, then Qwen2's split regex, then
the byte-level mapping without a regex of its own, as Qwen2's tokenizer.json has them). Anything
else is refused with a message rather than guessed.

What the GGUF cannot say, and we put back:
- llama.cpp pads the vocab to the embedding's rows with `[PAD<id>]` tokens of type UNUSED; they
  are not the tokenizer's (no merge makes them), so tokenizer.json leaves them out, as the
  original does (its vocab is smaller than config.json's vocab_size).
- llama.cpp marks every added token that looks like `<|...|>` CONTROL; Qwen2's tokenizer has
  its code-completion markers as added but *not* special tokens (they are text a coder model
  reads and writes), so for `pre == "qwen2"` those names are written back as not special.
"""

from __future__ import annotations

import re
from typing import Any

# llama.cpp token types (gguf.TokenType): which become HF "added tokens", and whether special.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
_ADDED_TYPES = {TOKEN_UNKNOWN: True, TOKEN_CONTROL: True, TOKEN_USER_DEFINED: False}


# Qwen2's pre-tokenizer regex, as its tokenizer.json writes it (llama.cpp spells the
# case-insensitive contractions out as character classes; this is the original form).
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Added tokens of Qwen2.5's tokenizer that are not special (llama.cpp made them CONTROL).
QWEN2_NOT_SPECIAL = frozenset({"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                               "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"})
_PAD_TOKEN = re.compile(r"\[PAD(\d+)\]")


def _qwen2(meta: dict[str, Any]) -> bool:
    return meta.get("pre") == "qwen2"


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if pre == "qwen2":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}
    if pre == "smollm":
        return {"type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    if pre in ("gpt-2", "default"):
        return byte_level
    raise ValueError(f"tokenizer.ggml.pre = '{pre}' is not supported by this converter "
                     "(known: smollm, gpt-2, qwen2)")


def vocab_size(meta: dict[str, Any]) -> int:
    """The tokenizer's own ids: the GGUF's tokens less llama.cpp's trailing [PAD<id>] padding."""
    n = len(meta["tokens"])
    while n > 0 and meta["token_type"][n - 1] == TOKEN_UNUSED:
        m = _PAD_TOKEN.fullmatch(meta["tokens"][n - 1])
        if not m or int(m.group(1)) != n - 1:
            break
        n -= 1
    return n


def added_tokens(meta: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    n = vocab_size(meta)
    for i, (tok, ty) in enumerate(zip(meta["tokens"][:n], meta["token_type"][:n])):
        if ty in _ADDED_TYPES:
            special = _ADDED_TYPES[ty]
            if _qwen2(meta) and tok in QWEN2_NOT_SPECIAL:
                special = False
            # Qwen2 writes every added token unnormalized; elsewhere the plain ones are.
            normalized = not special and not _qwen2(meta)
            out.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": normalized, "special": special})
    return out


def tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """meta: tokens, token_type, merges, model, pre (plain Python values from the GGUF)."""
    if meta["model"] != "gpt2":
        raise ValueError(f"tokenizer.ggml.model = '{meta['model']}': only byte-level BPE "
                         "('gpt2') is supported")
    tokens = meta["tokens"][:vocab_size(meta)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("tokenizer.ggml.tokens holds duplicate strings")
    for m in meta["merges"]:
        left, sep, right = m.partition(" ")
        if not sep or " " in right or (left + right) not in vocab:
            raise ValueError(f"merge '{m}' is malformed or makes a token outside the vocab")
    if _qwen2(meta):
        # Qwen2's own: NFC first; post-processor and decoder are plain byte-level mappings.
        normalizer: dict[str, Any] | None = {"type": "NFC"}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                      "use_regex": False}
        post_processor, decoder, affix = byte_level, dict(byte_level), ""
    else:
        normalizer = None
        post_processor = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                          "use_regex": True}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                   "use_regex": True}
        affix = None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens(meta),
        "normalizer": normalizer,
        "pre_tokenizer": _pre_tokenizer(meta["pre"]),
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": affix,
            "end_of_word_suffix": affix,
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
    if _qwen2(meta):
        # As Qwen2's tokenizer_config.json: no BOS token at all (the GGUF names <|endoftext|>,
        # which config.json keeps as bos_token_id), the special added tokens listed.
        added = added_tokens(meta)
        cfg.update({
            "bos_token": None,
            "additional_special_tokens": [t["content"] for t in added
                                          if t["special"] and t["id"] not in
                                          (meta.get("pad_id"), meta.get("bos_id"))],
            "errors": "replace",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
        })
    if meta.get("chat_template") is not None:
        cfg["chat_template"] = meta["chat_template"]
    return cfg
