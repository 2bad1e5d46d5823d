"""What happens to one sequence's tokens after sampling, independent of how it is scheduled.

``SequenceOutput`` takes each sampled token, decides whether generation ends (EOS, a stop token,
a stop string, ``max_tokens``), turns tokens into text deltas that are always whole characters
and never contain (part of) a stop string, and produces the ``StreamChunk``s and the final
``InferenceResponse``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ferrum.errors import ContextLengthExceededError, InvalidRequestError
from ferrum.types import (
    FinishReason,
    InferenceRequest,
    InferenceResponse,
    StreamChunk,
    TokenLogprob,
    TokenUsage,
)
from runtime.detokenizer import IncrementalDetokenizer
from runtime.stop import StopStringMatcher
from runtime.tokenizer import ChatTokenizer


def prepare_prompt(request: InferenceRequest, tokenizer: ChatTokenizer, max_model_len: int) -> list[int]:
    """Validate the request and return its prompt token ids (checked against the context)."""
    request.sampling_params.validate()
    if request.prompt_token_ids is not None:
        ids = list(request.prompt_token_ids)
        _check_context(len(ids), request.sampling_params.max_tokens, max_model_len)  # before scanning every id
        vocab = tokenizer.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must be integers in [0, {vocab})", param="prompt")
    else:
        ids = tokenizer.encode(request.prompt, add_bos=request.metadata.get("add_bos"))
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    _check_context(len(ids), request.sampling_params.max_tokens, max_model_len)
    return ids


def _check_context(prompt_len: int, max_tokens: int, max_model_len: int) -> None:
    wanted = prompt_len + max_tokens
    if wanted > max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{wanted} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). Please reduce "
            "the prompt or max_tokens.",
            param="max_tokens",
        )


class SequenceOutput:
    """One completion of a request: tokens in, text deltas and finish state out."""

    def __init__(self, request: InferenceRequest, prompt_ids: list[int], tokenizer: ChatTokenizer, index: int = 0):
        self.request = request
        self.index = index
        self.params = request.sampling_params
        self.prompt_len = len(prompt_ids)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text_parts: list[str] = []
        self.finish_reason: FinishReason | None = None
        self._eos = set() if self.params.ignore_eos else set(tokenizer.eos_token_ids)
        self._stop_ids = set(self.params.stop_token_ids)
        self._detok = IncrementalDetokenizer(tokenizer.tokenizer, prompt_ids)
        self._stops = StopStringMatcher(self.params.stop_sequences)
        self.started = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token: int, logprob: TokenLogprob | None = None, grammar_done: bool = False) -> StreamChunk:
        """Record one sampled token; the returned chunk carries its text (maybe empty) and, if
        generation just ended, the finish reason (``grammar_done``: the output grammar allows
        nothing after this token, a stop)."""
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        text = ""
        if token in self._eos:
            self.finish_reason = FinishReason.EOS
        elif token in self._stop_ids:
            self.finish_reason = FinishReason.Stop
        else:
            emitted, hit = self._stops.feed(self._detok.add(token))
            text = emitted
            if hit:
                self.finish_reason = FinishReason.Stop
        grammar_end = grammar_done and self.finish_reason is None
        if grammar_end:
            self.finish_reason = FinishReason.Stop
        elif self.finish_reason is None and len(self.tokens) >= self.params.max_tokens:
            self.finish_reason = FinishReason.Length
        if self.finish_reason in (FinishReason.EOS, FinishReason.Length) or grammar_end or (
            self.finish_reason is FinishReason.Stop and token in self._stop_ids
        ):
            tail, hit = self._stops.feed(self._detok.flush())
            text += tail if hit else tail + self._stops.flush()
            if hit:
                self.finish_reason = FinishReason.Stop
        self.text_parts.append(text)
        return StreamChunk(
            request_id=self.request.id,
            text=text,
            token=token,
            finish_reason=self.finish_reason,
            usage=self.usage() if self.finished else None,
            index=self.index,
            logprobs=[logprob] if logprob is not None else None,
        )

    def abort(self, reason: FinishReason) -> StreamChunk:
        """End the sequence early (cancelled or failed); the chunk carries no new text."""
        self.finish_reason = reason
        return StreamChunk(self.request.id, "", None, reason, self.usage(), index=self.index)

    def usage(self) -> TokenUsage:
        return TokenUsage.of(self.prompt_len, len(self.tokens))


async def collect(request: InferenceRequest, chunks: AsyncIterator[StreamChunk]) -> InferenceResponse:
    """Drain a chunk stream into the response ``infer`` returns (one per completion index)."""
    started = time.monotonic()
    parts: dict[int, list[StreamChunk]] = {}
    async for chunk in chunks:
        parts.setdefault(chunk.index, []).append(chunk)
    responses = []
    for index in sorted(parts):
        seq = parts[index]
        last = seq[-1]
        logprobs = [lp for c in seq for lp in (c.logprobs or [])]
        responses.append(
            InferenceResponse(
                request_id=request.id,
                text="".join(c.text for c in seq),
                tokens=[c.token for c in seq if c.token is not None],
                finish_reason=last.finish_reason or FinishReason.Error,
                usage=last.usage or TokenUsage(),
                latency_ms=int((time.monotonic() - started) * 1000),
                logprobs=logprobs if request.sampling_params.logprobs else None,
            )
        )
    first, rest = responses[0], responses[1:]
    if rest:
        first.choices = rest
        prompt = first.usage.prompt_tokens
        first.usage = TokenUsage.of(prompt, sum(r.usage.completion_tokens for r in responses))
    return first
