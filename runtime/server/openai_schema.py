"""OpenAI request bodies → Ferrum types, with the checks the OpenAI API makes.

Every field is type-checked here, so a wrong type answers 400 naming the parameter instead of
failing deep in the engine. Sizes a client chooses (``n``, stop lists, ``logit_bias``, logprobs,
messages, prompt length, seed) are bounded by ``RequestLimits`` here, before any engine sees the
request; other value ranges are checked by ``SamplingParams.validate`` (the same rules the CLI and
engines apply). Output constraints become an llguidance grammar (``structured``), tools a
``ToolSpec`` (``tools``). Features the engines do not have (images, several prompts per request)
are refused with a 400 that says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from ferrum.types import SamplingParams
from runtime.server.limits import DEFAULT_LIMITS, RequestLimits
from runtime.server.structured import output_grammar
from runtime.server.tools import ToolSpec, call_grammar, parse_message_calls, parse_tools

_KINDS: dict[str, tuple[str, Any]] = {
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("a boolean", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "list": ("an array", lambda v: isinstance(v, list)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 saying why not (also for integers longer than Python
    converts, 4300 digits, and nesting deeper than the parser's recursion limit)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise InvalidRequestError(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise InvalidRequestError("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return data


def _shown(value: Any) -> str:
    """A value for an error message, cut short (a huge integer must not become a huge message)."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Body:
    """Typed access to a JSON object's fields; a present field of the wrong type is a 400."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def get(self, name: str, kind: str, default: Any = None) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        label, check = _KINDS[kind]
        if not check(value):
            raise InvalidRequestError(f"'{name}' must be {label}, got {_shown(value)}", param=name)
        if kind == "number" and not math.isfinite(value):
            raise InvalidRequestError(f"'{name}' must be finite", param=name)
        return value

    def bounded(self, name: str, kind: str, low: float, high: float, default: Any = None) -> Any:
        """A numeric field that must lie in [low, high] when present."""
        value = self.get(name, kind, default)
        if value is not None and not low <= value <= high:
            raise InvalidRequestError(f"'{name}' must be in [{low}, {high}], got {_shown(value)}", param=name)
        return value

    def required(self, name: str, kind: str) -> Any:
        value = self.get(name, kind)
        if value is None:
            raise InvalidRequestError(f"'{name}' is required", param=name)
        return value


def check_count(name: str, count: int, limit: int) -> None:
    """400 naming ``name`` when an array or object the client sent holds more than ``limit`` entries."""
    if count > limit:
        raise InvalidRequestError(f"'{name}' may hold at most {limit} entries, got {count}", param=name)


def check_chars(name: str, count: int, limit: int, what: str | None = None) -> None:
    """400 naming ``name`` when a text the client sent is longer than ``limit`` characters."""
    if count > limit:
        raise InvalidRequestError(f"{what or repr(name)} must be at most {limit} characters, got {count}",
                                  param=name)


@dataclass
class GenerationRequest:
    """A parsed chat or completions request, before the served model resolves its prompt."""

    kind: str  # "chat" or "completion"
    model: str
    sampling: SamplingParams
    max_tokens_given: bool
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    add_generation_prompt: bool = True
    tools: ToolSpec | None = None


def _stop(body: Body, limits: RequestLimits) -> list[str]:
    stop = body.data.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("'stop' must be a string or an array of strings", param="stop")
    check_count("stop", len(stop), limits.max_stop_sequences)
    for s in stop:
        check_chars("stop", len(s), limits.max_stop_chars, "each stop sequence")
    return list(stop)


def _logit_bias(body: Body, limits: RequestLimits) -> dict[int, float]:
    raw = body.get("logit_bias", "dict", {})
    check_count("logit_bias", len(raw), limits.max_logit_bias)
    bias = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not _KINDS["number"][1](value):
            raise InvalidRequestError(f"logit_bias values must be numbers, got {value!r}", param="logit_bias")
        bias[token] = float(value)
    return bias


def _max_tokens(body: Body, chat: bool) -> int | None:
    """``max_completion_tokens`` (chat) or ``max_tokens``: a positive integer when given; the engine
    refuses what does not fit the context."""
    for name in ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",):
        value = body.get(name, "int")
        if value is not None:
            if value < 1:
                raise InvalidRequestError(f"'{name}' must be a positive integer, got {_shown(value)}", param=name)
            return value
    return None


def _sampling(body: Body, *, chat: bool, limits: RequestLimits, grammar: str | None) -> tuple[SamplingParams, bool]:
    max_tokens = _max_tokens(body, chat)
    top_k = body.get("top_k", "int")
    if top_k is not None and top_k in (-1, 0):  # vLLM's spelling of "no top-k"
        top_k = None
    elif top_k is not None:
        top_k = body.bounded("top_k", "int", 1, limits.max_top_k)
    if chat:
        logprobs = body.get("logprobs", "bool", False)
        top_logprobs = body.bounded("top_logprobs", "int", 0, limits.max_top_logprobs, 0)
        if top_logprobs and not logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    else:
        count = body.bounded("logprobs", "int", 0, limits.max_completion_logprobs)
        logprobs, top_logprobs = count is not None, count or 0
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else SamplingParams.max_tokens,
        temperature=float(body.get("temperature", "number", 1.0)),
        top_p=float(body.get("top_p", "number", 1.0)),
        top_k=top_k,
        min_p=body.get("min_p", "number"),
        repetition_penalty=float(body.get("repetition_penalty", "number", 1.0)),
        presence_penalty=float(body.get("presence_penalty", "number", 0.0)),
        frequency_penalty=float(body.get("frequency_penalty", "number", 0.0)),
        stop_sequences=_stop(body, limits),
        stop_token_ids=_int_list(body, "stop_token_ids", limits.max_stop_token_ids),
        seed=body.bounded("seed", "int", 0, limits.max_seed),
        logit_bias=_logit_bias(body, limits),
        n=body.bounded("n", "int", 1, limits.max_n, 1),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=body.get("ignore_eos", "bool", False),
        grammar=grammar,
    )
    params.validate()
    return params, max_tokens is not None


def _int_list(body: Body, name: str, limit: int) -> list[int]:
    values = body.get(name, "list", [])
    check_count(name, len(values), limit)
    if not all(_KINDS["int"][1](v) for v in values):
        raise InvalidRequestError(f"'{name}' must be an array of integers", param=name)
    return list(values)


def _stream_options(body: Body, stream: bool) -> bool:
    options = body.get("stream_options", "dict")
    if options is None:
        return False
    if not stream:
        raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequestError("stream_options.include_usage must be a boolean", param="stream_options")
    return include


def _message_text(index: int, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                if isinstance(part, dict) and part.get("type") in ("image_url", "input_audio", "file"):
                    raise UnsupportedFeatureError(f"messages[{index}]: {part['type']} content is not supported by "
                                                  "this model", param="messages", status=400)
                raise InvalidRequestError(f"messages[{index}].content parts must be {{'type': 'text', 'text': ...}}",
                                          param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequestError(f"messages[{index}].content must be a string or an array of text parts",
                              param="messages")


_ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_chat(data: dict[str, Any], limits: RequestLimits = DEFAULT_LIMITS) -> GenerationRequest:
    body = Body(data)
    model = body.required("model", "str")
    raw = body.required("messages", "list")
    if not raw:
        raise InvalidRequestError("'messages' must not be empty", param="messages")
    check_count("messages", len(raw), limits.max_messages)
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequestError(f"messages[{i}].role must be one of {', '.join(_ROLES)}", param="messages")
        entry = {"role": "system" if role == "developer" else role, "content": _message_text(i, message.get("content"))}
        if role == "assistant" and message.get("tool_calls") is not None:
            entry["tool_calls"] = parse_message_calls(i, message["tool_calls"])
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise InvalidRequestError(f"messages[{i}]: a tool message needs its 'tool_call_id'", param="messages")
            entry["tool_call_id"] = message["tool_call_id"]
        messages.append(entry)
    check_chars("messages", sum(len(m["content"]) for m in messages), limits.max_prompt_chars,
                "the messages' text")
    tools = parse_tools(data, limits)
    constraint = output_grammar(data, limits)
    grammar = constraint[0] if constraint else None
    if tools is not None and tools.active:
        if constraint:
            raise InvalidRequestError(f"'{constraint[1]}' cannot be combined with tools (tool_choice "
                                      f"{tools.choice!r}); send tool_choice 'none' or no constraint",
                                      param=constraint[1])
        grammar = call_grammar(tools)
    sampling, given = _sampling(body, chat=True, limits=limits, grammar=grammar)
    stream = body.get("stream", "bool", False)
    return GenerationRequest("chat", model, sampling, given, stream, _stream_options(body, stream), messages=messages,
                             add_generation_prompt=body.get("add_generation_prompt", "bool", True), tools=tools)


def parse_completion(data: dict[str, Any], limits: RequestLimits = DEFAULT_LIMITS) -> GenerationRequest:
    body = Body(data)
    model = body.required("model", "str")
    if "prompt" not in data or data["prompt"] is None:
        raise InvalidRequestError("'prompt' is required", param="prompt")
    prompt, token_ids = _prompt(data["prompt"])
    if prompt is not None:
        check_chars("prompt", len(prompt), limits.max_prompt_chars)
    if body.get("echo", "bool", False):
        raise UnsupportedFeatureError("echo is not supported by this engine", param="echo", status=400)
    if body.get("suffix", "str"):
        raise UnsupportedFeatureError("suffix (insertion) is not supported by this engine", param="suffix", status=400)
    if data.get("tools") is not None:
        raise InvalidRequestError("'tools' is a chat completions parameter", param="tools")
    constraint = output_grammar(data, limits)
    sampling, given = _sampling(body, chat=False, limits=limits, grammar=constraint[0] if constraint else None)
    best_of = body.bounded("best_of", "int", 1, limits.max_n)
    if best_of is not None and best_of < sampling.n:
        raise InvalidRequestError(f"'best_of' must be at least n ({sampling.n}), got {best_of}", param="best_of")
    if best_of is not None and best_of != sampling.n:
        raise UnsupportedFeatureError("best_of other than n is not supported", param="best_of", status=400)
    stream = body.get("stream", "bool", False)
    return GenerationRequest("completion", model, sampling, given, stream, _stream_options(body, stream),
                             prompt=prompt, prompt_token_ids=token_ids)


def _prompt(value: Any) -> tuple[str | None, list[int] | None]:
    """One prompt: a string or an array of token ids (also each wrapped in a one-element array)."""
    is_ids = isinstance(value, list) and value and all(_KINDS["int"][1](t) for t in value)
    if isinstance(value, str):
        return value, None
    if is_ids:
        return None, list(value)
    if isinstance(value, list) and len(value) == 1:
        return _prompt(value[0])
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, (str, list)) for v in value):
        raise UnsupportedFeatureError("several prompts in one request are not supported; send one request each",
                                      param="prompt", status=400)
    raise InvalidRequestError("'prompt' must be a string or an array of token ids", param="prompt")
