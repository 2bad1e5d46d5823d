"""``/v1/chat/completions`` and ``/v1/completions`` on an ``LlmInferenceEngine``.

``build_request`` checks what needs the served model (token ids of ``logit_bias`` and
``stop_token_ids`` within its vocabulary, an engine that can follow an output grammar) and renders
the chat (with its tools); the engine validates and admits the request before anything is sent
(so bad requests get a plain 4xx), then the chunk stream is either collected into one response or
forwarded as SSE. With tools, text that is tool calls becomes ``message.tool_calls`` (streamed as
tool-call deltas, one per call as it completes) and the finish reason ``tool_calls``.
The engine's stream is always closed when the handler ends: a client that disconnects (the
handler is cancelled, or a write fails) cancels its request and frees its KV pages.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ferrum.engine import LlmInferenceEngine
from ferrum.errors import FerrumError, InvalidRequestError, UnsupportedFeatureError
from ferrum.types import FinishReason, InferenceRequest, SamplingParams, StreamChunk, TokenLogprob, TokenUsage
from runtime.server import sse
from runtime.server.errors import REQUEST_ID, error_body, ferrum_error_body
from runtime.server.openai_responses import Shaper
from runtime.server.openai_schema import GenerationRequest
from runtime.server.tools import (
    CallStream,
    default_prompt_messages,
    template_messages,
)

log = logging.getLogger("ferrum.server")


def build_request(engine: LlmInferenceEngine, parsed: GenerationRequest, request_id: str) -> InferenceRequest:
    """Render the prompt (chat template), tokenize it once, and fill in the default max_tokens:
    whatever room the context leaves, as the OpenAI API does."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedFeatureError(f"model {parsed.model} exposes no tokenizer to the server", status=400)
    prompt = parsed.prompt or ""
    if parsed.kind == "chat":
        prompt = _render_chat(tokenizer, parsed)
    sampling = parsed.sampling
    _check_vocabulary(sampling, tokenizer.vocab_size)
    if sampling.grammar is not None and getattr(engine, "grammars", None) is None:
        raise UnsupportedFeatureError(f"model {parsed.model}'s engine has no constrained decoding",
                                      param="tools" if parsed.tools else "response_format", status=400)
    ids = parsed.prompt_token_ids if parsed.prompt_token_ids is not None else tokenizer.encode(prompt)
    if not parsed.max_tokens_given:
        limit = getattr(engine, "max_model_len", None)
        sampling.max_tokens = max(limit - len(ids), 1) if limit else sampling.max_tokens
    return InferenceRequest(prompt=prompt, model_id=parsed.model, sampling_params=sampling, stream=parsed.stream,
                            id=request_id, prompt_token_ids=ids)


def _render_chat(tokenizer, parsed: GenerationRequest) -> str:
    """The prompt: a template that renders tools gets them and the calls in Hugging Face's shape;
    any other gets the default tool prompt (``runtime.server.tools``)."""
    spec = parsed.tools
    if tokenizer.renders_tools:
        tools = [{"type": "function", "function": t} for t in spec.tools] if spec and spec.active else None
        return tokenizer.apply_chat_template(template_messages(parsed.messages),
                                             add_generation_prompt=parsed.add_generation_prompt, tools=tools)
    return tokenizer.apply_chat_template(default_prompt_messages(parsed.messages, spec),
                                         add_generation_prompt=parsed.add_generation_prompt)


def _split_calls(parsed: GenerationRequest, texts: list[str]) -> tuple[list[str], list[list[dict]] | None]:
    """Per choice, the text left and the tool calls it made, split as a stream splits them, when
    the request has tools."""
    if parsed.tools is None or not parsed.tools.active:
        return texts, None
    left, calls = [], []
    for text in texts:
        split = CallStream(parsed.tools.names)
        content, deltas = split.feed(text)
        left.append(content + split.finish())
        calls.append([{k: v for k, v in d.items() if k != "index"} for d in deltas])
    return left, calls


def _check_vocabulary(sampling: SamplingParams, vocab_size: int) -> None:
    """Token ids the client names must exist: the sampler would silently skip a bias on a token
    past the vocabulary, and a stop id that no token has never stops anything."""
    for name, ids in (("logit_bias", sampling.logit_bias), ("stop_token_ids", sampling.stop_token_ids)):
        outside = [t for t in ids if not 0 <= t < vocab_size]
        if outside:
            raise InvalidRequestError(f"'{name}' names token {outside[0]}, outside this model's vocabulary "
                                      f"[0, {vocab_size})", param=name)


class _Choices:
    """Per completion index: text, finish reason, logprobs and usage, as chunks arrive."""

    def __init__(self, n: int):
        self.text = [[] for _ in range(n)]
        self.reason: list[FinishReason | None] = [None] * n
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self.usage: list[TokenUsage | None] = [None] * n
        self.offsets = [0] * n

    def add(self, chunk: StreamChunk) -> None:
        i = chunk.index
        self.text[i].append(chunk.text)
        self.offsets[i] += len(chunk.text)
        if chunk.logprobs:
            self.logprobs[i].extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.reason[i] = chunk.finish_reason
            self.usage[i] = chunk.usage

    def total_usage(self) -> TokenUsage:
        done = [u for u in self.usage if u is not None]
        prompt = done[0].prompt_tokens if done else 0
        return TokenUsage.of(prompt, sum(u.completion_tokens for u in done))


def _token_text(engine: LlmInferenceEngine):
    tokenizer = engine.tokenizer
    return lambda token: tokenizer.decode([token], skip_special_tokens=False)


async def generate(request: web.Request, engine: LlmInferenceEngine, parsed: GenerationRequest) -> web.StreamResponse:
    inference = build_request(engine, parsed, request[REQUEST_ID])
    stream = await engine.infer_stream(inference)
    n = inference.sampling_params.n
    shaper = Shaper(parsed.kind, inference.id, parsed.model, _token_text(engine))
    want_logprobs = inference.sampling_params.logprobs
    choices = _Choices(n)
    try:
        if not parsed.stream:
            async for chunk in stream:
                choices.add(chunk)
            usage = choices.total_usage()
            texts, calls = _split_calls(parsed, ["".join(t) for t in choices.text])
            body = shaper.response(
                [(text, r, lp if want_logprobs else None)
                 for text, r, lp in zip(texts, choices.reason, choices.logprobs)], usage, calls)
            return web.json_response(body)
        return await _stream(request, stream, shaper, parsed, n, choices)
    finally:
        await stream.aclose()


async def _stream(request: web.Request, stream, shaper: Shaper, parsed: GenerationRequest, n: int,
                  choices: _Choices) -> web.StreamResponse:
    response = await sse.open_stream(request)
    usage_flag = parsed.include_usage
    try:
        if parsed.kind == "chat":
            for index in range(n):
                await response.write(sse.event(shaper.chunk(index, "", None, role=True, include_usage=usage_flag)))
        calls = ([CallStream(parsed.tools.names) for _ in range(n)] if parsed.tools and parsed.tools.active
                 else None)
        async for chunk in stream:
            offset = choices.offsets[chunk.index]
            choices.add(chunk)
            text, deltas, called = chunk.text, None, False
            if calls is not None:
                split = calls[chunk.index]
                text, deltas = split.feed(chunk.text)
                if chunk.finish_reason is not None:
                    text += split.finish()
                called = split.count > 0
            if text or deltas or chunk.finish_reason is not None or chunk.logprobs:
                await response.write(sse.event(shaper.chunk(chunk.index, text, chunk.finish_reason,
                                                             chunk.logprobs, offset=offset,
                                                             include_usage=usage_flag, tool_calls=deltas,
                                                             called=called)))
        usage = choices.total_usage()
        if usage_flag:
            await response.write(sse.event(shaper.usage_chunk(usage)))
    except ConnectionResetError:
        log.info("client of request %s went away; request cancelled", request[REQUEST_ID])
        return response
    except FerrumError as exc:  # the engine failed mid-stream: the 200 is already sent
        log.warning("request %s failed mid-stream: %s", request[REQUEST_ID], exc.message)
        await _try_write(response, sse.event(ferrum_error_body(exc)))
    except Exception:
        rid = request[REQUEST_ID]
        log.exception("internal error while streaming request %s", rid)
        await _try_write(response, sse.event(error_body(f"internal server error (request id {rid})",
                                                        "internal_error", code="internal_error")))
    await _try_write(response, sse.DONE)
    return response


async def _try_write(response: web.StreamResponse, data: bytes) -> Any:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass
