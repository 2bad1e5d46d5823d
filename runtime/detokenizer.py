"""Incremental detokenization that never emits a broken character.

Byte-level BPE tokens can end in the middle of a UTF-8 sequence; decoding such a prefix yields
U+FFFD. The detokenizer decodes a short window of recent tokens and only releases text once it
no longer ends in U+FFFD, the scheme vLLM and Hugging Face's streamers use. Decoding the window
(rather than everything) keeps each step O(window), and decoding it with the tokens before it
keeps decoders that strip a leading space (SentencePiece) correct mid-sequence.

Each token's step is the tokenizers library's ``DecodeStream`` (the same scheme in Rust: one call
per token instead of two decodes and the slicing around them, which the engine pays for every
sequence of every step); the offsets are kept here too, for ``flush``.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids one by one; get back the new text each adds."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        context = list(prompt_ids or [])[-6:]
        self.ids: list[int] = context
        self.prefix_offset = 0
        self.read_offset = len(context)
        self._stream = DecodeStream(ids=list(context), skip_special_tokens=skip_special_tokens)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self.ids.append(token)
        delta = self._stream.step(self.tokenizer, token)
        if delta is None:
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Text still held back at the end of generation, minus any incomplete final character."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :].rstrip(REPLACEMENT)
