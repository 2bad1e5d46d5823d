"""Constrained decoding with llguidance: grammars from request formats, matchers, token masks.

A constrained request carries an llguidance grammar (``SamplingParams.grammar``, the serialized
form ``LLMatcher`` takes); ``grammar_from`` builds one from what a client sends (a JSON schema,
any JSON object, a regular expression, a choice among strings, a Lark grammar). The engine keeps
one ``LLMatcher`` per sequence: before each sampling step the matchers write a bitmask of the
tokens the grammar allows (in parallel, on llguidance's own threads, outside the GIL), the
sampler sees only those tokens (``apply_mask``), and the chosen token advances the matcher.

Why llguidance: no dependencies (xgrammar pulls in torch), a numpy bitmask API, and it builds
its token trie straight from our ``tokenizer.json`` (GGUF-built ones too) without transformers.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from llguidance import LLExecutor, LLMatcher, LLTokenizer
from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark
from tokenizers import Tokenizer

from ferrum.errors import InvalidRequestError
from ferrum.manifest import mask_words

# JSON output may put at most this much whitespace between tokens: a small model left free
# whitespace can fill max_tokens with newlines inside an object that never closes
JSON_WHITESPACE = r"[ \n]{0,8}"
JSON_OPTIONS = {"whitespace_flexible": False, "whitespace_pattern": JSON_WHITESPACE}


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    """Output that parses as JSON and validates against ``schema`` (``True``/``{}``: any object)."""
    if schema is True or schema == {}:
        schema = {"type": "object"}
    return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)


def regex_grammar(pattern: str) -> str:
    return LLMatcher.grammar_from_regex(pattern)


def choice_grammar(choices: list[str]) -> str:
    """Exactly one of ``choices`` (literal strings)."""
    return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


def lark_grammar(text: str) -> str:
    """A Lark grammar (llguidance's dialect, ``%json {...}`` included) or a GBNF one (llama.cpp's,
    converted); a GBNF text that does not parse raises ``ValueError``."""
    try:
        return LLMatcher.grammar_from_lark(any_to_lark(text))
    except GbnfToLarkError as exc:
        raise ValueError(f"GBNF grammar: {exc}") from None


def grammar_error(grammar: str) -> str | None:
    """What is wrong with ``grammar`` (an unsupported JSON-schema keyword, a bad regex, an unknown
    Lark rule), or None; checked without a tokenizer, so the HTTP layer can name the field."""
    return LLMatcher.validate_grammar(grammar) or None


class GrammarCompiler:
    """The model's tokenizer as llguidance sees it, and matchers over it (one per engine).

    The token trie takes ~0.4 s to build for a 49k vocabulary, so it is built on first use, not
    when an engine that may never see a constrained request opens."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._llt: LLTokenizer | None = None
        self._masks: MaskComputer | None = None

    @property
    def masks(self) -> MaskComputer:
        """The engine's mask computer (its threads start with the first constrained request)."""
        if self._masks is None:
            self._masks = MaskComputer(self.vocab_size)
        return self._masks

    @property
    def lltokenizer(self) -> LLTokenizer:
        if self._llt is None:
            self._llt = LLTokenizer(self._tokenizer.to_str(), n_vocab=self.vocab_size, eos_token=self._eos)
        return self._llt

    def matchers(self, grammar: str, n: int) -> list[LLMatcher]:
        """``n`` matchers at the grammar's start (one per completion); a grammar llguidance refuses
        is a 400 saying why."""
        matcher = LLMatcher(self.lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"the output grammar is invalid: {matcher.get_error()[:500]}")
        return [matcher] + [matcher.deep_copy() for _ in range(1, n)]


def apply_mask(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of one logits row with every token the bitmask excludes at -inf (bit ``t % 32`` of
    word ``t // 32`` set = token ``t`` allowed; columns past the mask are excluded)."""
    vocab = logits.shape[-1]
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
    out = np.full(vocab, -np.inf, dtype=np.float32)
    out[: allowed.shape[0]][allowed] = logits[: allowed.shape[0]][allowed]
    return out


class PendingMasks:
    """A step's masks while they are computed; ``result()`` waits for them and counts the wait
    (time the step stood still for the grammar instead of overlapping it with the forward)."""

    def __init__(self, future: Future[np.ndarray], computer: MaskComputer):
        self._future = future
        self._computer = computer

    def result(self) -> np.ndarray:
        t0 = time.perf_counter()
        grid = self._future.result()
        self._computer.waited += time.perf_counter() - t0
        return grid


class MaskComputer:
    """Fills the masks of a step's constrained rows on a background thread (the model's forward
    runs meanwhile) with llguidance's parallel executor."""

    def __init__(self, vocab_size: int, threads: int | None = None):
        """``threads``: llguidance's pool (None: its default, 80 % of the cores, at most 32)."""
        self.words = mask_words(vocab_size)
        self._executor = LLExecutor(threads)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferrum-grammar")
        self.seconds = 0.0  # time spent computing masks, and the steps that computed any
        self.steps = 0
        self.waited = 0.0  # time the engine waited for masks the forward had not hidden

    def start(self, matchers: list[tuple[LLMatcher, int]], rows: int) -> PendingMasks:
        """Masks for ``rows`` batch entries: row ``i`` of each ``(matcher, i)`` gets that matcher's
        mask, the others allow every token. No matcher may change until the result is read."""
        return PendingMasks(self._thread.submit(self._fill, matchers, rows), self)

    def _fill(self, matchers: list[tuple[LLMatcher, int]], rows: int) -> np.ndarray:
        t0 = time.perf_counter()
        masks = np.full((rows, self.words), -1, dtype=np.int32)
        self._executor.unsafe_compute_mask_ptr(matchers, masks.ctypes.data, self.words * 4, rows)
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        return masks
