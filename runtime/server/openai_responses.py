"""Ferrum results → OpenAI response and stream-chunk objects (chat and completions shapes)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ferrum.types import FinishReason, TokenLogprob, TokenUsage

TokenText = Callable[[int], str]


def usage_json(usage: TokenUsage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def finish_json(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.openai


def call_finish(reason: FinishReason | None, called: object) -> str | None:
    """The finish reason of a choice that made tool calls (``called`` truthy): ``tool_calls``,
    unless max_tokens cut it."""
    if called and reason is not None and reason is not FinishReason.Length:
        return "tool_calls"
    return finish_json(reason)


def chat_logprobs(entries: list[TokenLogprob], text_of: TokenText) -> dict:
    def one(token: int, logprob: float) -> dict:
        text = text_of(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def completion_logprobs(entries: list[TokenLogprob], text_of: TokenText, offset: int = 0) -> dict:
    tokens = [text_of(e.token) for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{text_of(t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


class Shaper:
    """Builds the objects of one request: ids, timestamps and model are fixed per request."""

    def __init__(self, kind: str, request_id: str, model: str, text_of: TokenText):
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.model = model
        self.created = int(time.time())
        self.text_of = text_of

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
        if entries is None:
            return None
        if self.kind == "chat":
            return chat_logprobs(entries, self.text_of)
        return completion_logprobs(entries, self.text_of, offset)

    # -- whole responses ----------------------------------------------------------------------
    def response(self, choices: list[tuple[str, FinishReason | None, list[TokenLogprob] | None]],
                 usage: TokenUsage, tool_calls: list[list[dict]] | None = None) -> dict:
        """``tool_calls[i]``: the calls choice ``i`` made (its text is then what the calls left, null
        when nothing, and its finish reason ``tool_calls`` unless it was cut at max_tokens)."""
        out = []
        for index, (text, reason, logprobs) in enumerate(choices):
            calls = tool_calls[index] if tool_calls else None
            choice = {"index": index, "logprobs": self.logprobs(logprobs), "finish_reason": call_finish(reason, calls)}
            if calls:
                choice["message"] = {"role": "assistant", "content": text or None, "tool_calls": calls}
            elif self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            out.append(choice)
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": out, "usage": usage_json(usage)}

    # -- stream chunks ------------------------------------------------------------------------
    def chunk(self, index: int, text: str | None, reason: FinishReason | None,
              logprobs: list[TokenLogprob] | None = None, *, role: bool = False, offset: int = 0,
              include_usage: bool = False, tool_calls: list[dict] | None = None, called: bool = False) -> dict:
        """``tool_calls``: call deltas of this chunk; ``called``: the choice made calls (its finish
        reason is then ``tool_calls``)."""
        finish = call_finish(reason, called)
        choice: dict = {"index": index, "logprobs": self.logprobs(logprobs, offset), "finish_reason": finish}
        if self.kind == "chat":
            delta: dict = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice["delta"] = delta
            obj = "chat.completion.chunk"
        else:
            choice["text"] = text or ""
            obj = "text_completion"
        payload = {**self._head(obj), "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return payload

    def usage_chunk(self, usage: TokenUsage) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_json(usage)}
