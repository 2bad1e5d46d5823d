"""Build a Hugging Face ``tokenizers`` tokenizer.json from a GGUF's vocabulary.

GGUF stores the vocabulary (``tokenizer.ggml.tokens``), token types, and either BPE merges
(``tokenizer.ggml.model == "gpt2"``: byte-level BPE) or SentencePiece scores (``"llama"``). The
pre-tokenizer is named by ``tokenizer.ggml.pre``; the splitting rules below are the ones
llama.cpp applies for those names, written as ``tokenizers`` components.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferrum.errors import ModelSourceError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_REGEX = (  # llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2: Llama 3's rule with single digits
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "default": _byte_level(True),
    "gpt2": _byte_level(True),
    "mpt": _byte_level(True),
    "olmo": _byte_level(True),
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    },
    "starcoder": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    },
    "llama-bpe": {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_REGEX), _byte_level(False)]},
    "llama3": {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_REGEX), _byte_level(False)]},
    "qwen2": {"type": "Sequence", "pretokenizers": [_split(_QWEN2_REGEX), _byte_level(False)]},
}


def _added_tokens(tokens: list[str], types: list[int]) -> list[dict[str, Any]]:
    added = []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN):
            added.append(
                {
                    "id": i,
                    "content": tok,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": kind == TOKEN_USER_DEFINED,
                    "special": kind != TOKEN_USER_DEFINED,
                }
            )
    return added


def _bpe_model(vocab: dict[str, int], merges: list[list[str]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": extra.get("unk_token"),
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": extra.get("fuse_unk", False),
        "byte_fallback": extra.get("byte_fallback", False),
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    }


def _gpt2_tokenizer(field: Callable, path: Path, tokens: list[str], types: list[int]) -> dict[str, Any]:
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ModelSourceError(
            f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(sorted(_PRE_TOKENIZERS))})"
        )
    merges = [m.split(" ", 1) for m in field("tokenizer.ggml.merges", [])]
    if not merges:
        raise ModelSourceError(f"{path}: BPE tokenizer without merges")
    return {
        "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZERS[pre],
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": _bpe_model({t: i for i, t in enumerate(tokens)}, merges),
    }


def _spm_merges(tokens: list[str], types: list[int], scores: list[float]) -> list[list[str]]:
    """Merges that make BPE reproduce SentencePiece: a pair merges if its concatenation is a
    normal token; higher-scoring results merge first."""
    normal = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == TOKEN_NORMAL}
    ranked = []
    for merged, idx in normal.items():
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[idx], normal[left], normal[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _spm_tokenizer(field: Callable, path: Path, tokens: list[str], types: list[int]) -> dict[str, Any]:
    scores = field("tokenizer.ggml.scores")
    if scores is None:
        raise ModelSourceError(f"{path}: SentencePiece tokenizer without scores")
    unk_id = field("tokenizer.ggml.unknown_token_id", 0)
    normalizer_steps = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if field("tokenizer.ggml.add_space_prefix", True):
        normalizer_steps.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    return {
        "normalizer": {"type": "Sequence", "normalizers": normalizer_steps},
        "pre_tokenizer": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": _bpe_model(
            {t: i for i, t in enumerate(tokens)},
            _spm_merges(tokens, types, [float(s) for s in scores]),
            unk_token=tokens[unk_id],
            fuse_unk=True,
            byte_fallback=True,
        ),
    }


def build_tokenizer_json(field: Callable, path: Path) -> tuple[str, dict[str, int | None]]:
    """Return (tokenizer.json text, special token ids ``bos``/``eos``/``eot``/``pad``/``unk``).

    ``field(key, default=None)`` reads a GGUF metadata value.
    """
    model = field("tokenizer.ggml.model")
    tokens = field("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ModelSourceError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.model/tokens missing)")
    tokens = list(tokens)
    types = list(field("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    if model == "gpt2":
        body = _gpt2_tokenizer(field, path, tokens, types)
    elif model == "llama":
        body = _spm_tokenizer(field, path, tokens, types)
    else:
        raise ModelSourceError(f"{path}: tokenizer model {model!r} is not supported (gpt2 BPE or llama SentencePiece)")
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types),
        "post_processor": None,
        **body,
    }

    def special(key: str) -> int | None:
        value = field(f"tokenizer.ggml.{key}_token_id")
        return None if value is None else int(value)

    ids = {k: special(k) for k in ("bos", "eos", "eot", "pad")}
    ids["unk"] = special("unknown")
    for key, value in ids.items():
        if value is not None and not 0 <= value < len(tokens):
            raise ModelSourceError(f"{path}: {key} token id {value} is outside the vocabulary")
    return json.dumps(tokenizer, ensure_ascii=False), ids
