"""Request, response and configuration types used by the engine traits.

Mirrors ``ferrum_types`` (requests.rs, sampling.rs): same type names and JSON field names.
Where Python adds fields the Rust original keeps elsewhere (prompt token ids, logprobs, ``n``),
they are documented as extensions. Validation lives here so every entry point (CLI, server,
engine) rejects the same bad input with the same message.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ferrum.errors import InvalidRequestError
from ferrum.serde import utc_now

TokenId = int


class Priority(enum.IntEnum):
    """Request priority (Rust ``Priority``); higher is scheduled first."""

    Low = 0
    Normal = 1
    High = 2
    Critical = 3


class FinishReason(str, enum.Enum):
    """Why generation stopped (Rust ``FinishReason``; serde variant names)."""

    Length = "Length"
    Stop = "Stop"
    EOS = "EOS"
    Cancelled = "Cancelled"
    Error = "Error"
    ContentFilter = "ContentFilter"

    @property
    def openai(self) -> str:
        """The OpenAI ``finish_reason`` string for this reason."""
        return {
            FinishReason.Length: "length",
            FinishReason.Stop: "stop",
            FinishReason.EOS: "stop",
            FinishReason.Cancelled: "abort",
            FinishReason.Error: "error",
            FinishReason.ContentFilter: "content_filter",
        }[self]


MAX_COMPLETIONS = 128  # completions per request (``n``), as OpenAI bounds it
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI bounds ``top_logprobs``
MAX_LOGIT_BIAS = 100.0  # |bias| per token, as OpenAI bounds ``logit_bias`` values
MAX_SEED = (1 << 64) - 1  # seeds numpy's generator, which takes no negative seed


@dataclass
class SamplingParams:
    """Per-request sampling parameters (Rust ``SamplingParams``).

    Extensions over the Rust struct: ``stop_token_ids``, ``logit_bias``, ``n``, ``logprobs``,
    ``top_logprobs``, ``ignore_eos``, ``grammar`` (an llguidance grammar, the serialized form
    ``runtime.grammar`` builds from a JSON schema, regex, choice or Lark text: every sampled token
    must keep the output inside it, and its end state ends the completion).
    """

    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_sequences: list[str] = field(default_factory=list)
    seed: int | None = None
    min_p: float | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    grammar: str | None = None

    @classmethod
    def greedy(cls, **overrides: Any) -> SamplingParams:
        """Deterministic argmax decoding."""
        return cls(temperature=0.0, **overrides)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        """Raise ``InvalidRequestError`` naming the first parameter that is out of range."""

        def bad(param: str, message: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise bad("top_k", f"top_k must be a positive integer, got {self.top_k!r}")
        if self.min_p is not None and (not _finite(self.min_p) or not 0 <= self.min_p <= 1):
            raise bad("min_p", f"min_p must be in [0, 1], got {self.min_p!r}")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                raise bad(name, f"{name} must be in [-2, 2], got {value!r}")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= MAX_COMPLETIONS:
            raise bad("n", f"n must be an integer in [1, {MAX_COMPLETIONS}], got {self.n!r}")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad("top_logprobs",
                      f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            raise bad("seed", f"seed must be an integer in [0, 2^64 - 1], got {self.seed!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop_sequences):
            raise bad("stop", "stop sequences must be non-empty strings")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or token < 0:
                raise bad("logit_bias", f"logit_bias keys must be token ids, got {token!r}")
            if not _finite(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise bad("logit_bias", f"logit_bias values must be in [-100, 100], got {bias!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TokenUsage:
    """Token counts of one request (Rust ``models::TokenUsage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int) -> TokenUsage:
        return cls(prompt, completion, prompt + completion)


@dataclass
class TokenLogprob:
    """Log-probability of a sampled token and its most likely alternatives (extension)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class InferenceRequest:
    """One generation request (Rust ``InferenceRequest``).

    ``prompt`` is the rendered model input (chat templates are applied before the engine).
    Extension: ``prompt_token_ids``, when given, is used instead of tokenizing ``prompt``.
    """

    prompt: str = ""
    model_id: str = ""
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    priority: Priority = Priority.Normal
    client_id: str | None = None
    session_id: str | None = None
    id: str = field(default_factory=new_request_id)
    created_at: datetime = field(default_factory=utc_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_token_ids: list[int] | None = None


@dataclass
class InferenceResponse:
    """The finished result of one request (Rust ``InferenceResponse``).

    Extension: ``logprobs`` when the request asked for them; ``choices`` holds the other
    completions when ``n`` > 1 (each itself an ``InferenceResponse``).
    """

    request_id: str
    text: str
    tokens: list[int]
    finish_reason: FinishReason
    usage: TokenUsage
    latency_ms: int
    created_at: datetime = field(default_factory=utc_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None
    choices: list[InferenceResponse] = field(default_factory=list)


@dataclass
class StreamChunk:
    """One streamed piece of a request's output (Rust ``StreamChunk``).

    ``text`` is always valid UTF-8 text (a token that ends mid-character is held back until the
    character completes). Extension: ``index`` is the completion index when ``n`` > 1,
    ``logprobs`` the log-probabilities of the tokens this chunk carries.
    """

    request_id: str
    text: str
    token: int | None = None
    finish_reason: FinishReason | None = None
    usage: TokenUsage | None = None
    created_at: datetime = field(default_factory=utc_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineConfig:
    """Engine configuration: what to load and how to size its queues and KV cache.

    ``max_num_seqs`` bounds the running batch, ``max_num_batched_tokens`` the tokens one step
    may process (chunked prefill splits longer prompts), ``kv_cache_tokens`` the paged KV cache
    (``None``: sized from free device memory times ``gpu_memory_utilization`` on GPU, or from
    ``max_model_len`` * ``max_num_seqs`` capped by memory on CPU). ``load_format`` ``dummy``
    generates the weights on the device instead of loading them (speed measurements of
    shape-only artifacts; ``runtime/dummy_weights.py``).
    """

    model_id: str = ""
    artifact_path: str = ""
    device: str = "auto"
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    kv_page_size: int = 16
    kv_cache_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_queue_size: int = 1024
    seed: int | None = None
    load_format: str = "auto"
