"""The OpenAPI 3.1 description of every route, served at ``GET /openapi.json``.

Request schemas list the fields the server reads, with the types ``openai_schema`` enforces and
the bounds of the server's ``RequestLimits`` (``maximum``, ``maxItems``, ``maxLength``), so the
document always states the limits this server runs with; every ``/v1`` operation documents the
OpenAI error body for its 4xx/5xx answers.
"""

from __future__ import annotations

from typing import Any

import ferrum
from runtime.server.limits import RequestLimits
from runtime.server.models import ServedModels

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STR = {"type": "string"}
_NULLABLE_OBJ = {"type": ["object", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {code: {"description": text, **_json(_ref("Error"))} for code, text in (
    ("400", "invalid request"), ("401", "missing or wrong API key"), ("404", "unknown model"),
    ("413", "body too large"), ("429", "engine queue full (see Retry-After)"), ("500", "internal error"),
    ("501", "not implemented by this engine"), ("503", "shutting down"))}

def _sampling(limits: RequestLimits) -> dict[str, Any]:
    stop = {"type": "string", "maxLength": limits.max_stop_chars}
    grammar = {"type": "string", "minLength": 1, "maxLength": limits.max_grammar_chars}
    choices = {"type": "array", "minItems": 1, "maxItems": limits.max_choices, "items": {"type": "string", "minLength": 1}}
    return {
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1, "maximum": limits.max_top_k,
                  "description": "-1 or 0: no top-k"},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stop": {"oneOf": [stop, {"type": "array", "items": stop, "maxItems": limits.max_stop_sequences}]},
        "stop_token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0},
                           "maxItems": limits.max_stop_token_ids},
        "seed": {"type": "integer", "minimum": 0, "maximum": limits.max_seed},
        "n": {"type": "integer", "minimum": 1, "maximum": limits.max_n},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
        "logit_bias": {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                       "propertyNames": {"pattern": "^[0-9]+$"}, "maxProperties": limits.max_logit_bias},
        "stream": _BOOL,
        "stream_options": {"type": "object", "properties": {"include_usage": _BOOL}},
        "ignore_eos": _BOOL,
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "required": ["name"], "properties": {
                "name": _STR, "description": _STR, "schema": {"type": "object"}, "strict": _BOOL}}},
            "description": "every token is sampled under the schema's grammar (llguidance); a schema "
                           "feature it does not implement is a 400 naming it"},
        "structured_outputs": {"type": "object", "properties": {
            "json": {"type": ["object", "string"]}, "regex": grammar, "choice": choices, "grammar": grammar,
            "json_object": _BOOL}, "description": "vLLM's extension: at most one constraint per request"},
        "guided_json": {"type": ["object", "string"], "description": "vLLM < 0.12; as structured_outputs.json"},
        "guided_regex": grammar, "guided_choice": choices,
        "guided_grammar": {**grammar, "description": "Lark (llguidance's dialect) or GBNF"},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": _STR, "type": _STR, "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}}},
    "Usage": {"type": "object", "properties": {"prompt_tokens": _INT, "completion_tokens": _INT,
                                               "total_tokens": _INT}},
    "ChatCompletion": {"type": "object", "properties": {
        "id": _STR, "object": {"const": "chat.completion"}, "created": _INT, "model": _STR,
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "finish_reason": _STR, "logprobs": _NULLABLE_OBJ,
            "message": {"type": "object", "properties": {
                "role": _STR, "content": {"type": ["string", "null"]},
                "tool_calls": {"type": "array", "items": _ref("ToolCall")}}}}}},
        "usage": _ref("Usage")}},
    "Completion": {"type": "object", "properties": {
        "id": _STR, "object": {"const": "text_completion"}, "created": _INT, "model": _STR,
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "text": _STR, "finish_reason": _STR, "logprobs": _NULLABLE_OBJ}}},
        "usage": _ref("Usage")}},
    "EmbeddingList": {"type": "object", "properties": {"object": {"const": "list"}, "model": _STR, "data": {
        "type": "array", "items": {"type": "object", "properties": {
            "object": {"const": "embedding"}, "index": _INT,
            "embedding": {"oneOf": [{"type": "array", "items": _NUM}, _STR]}}}}}},
    "ModelList": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "properties": {"id": _STR, "object": {"const": "model"}, "created": _INT,
                                         "owned_by": _STR, "modality": _STR}}}}},
    "HealthStatus": {"type": "object", "properties": {
        "status": {"enum": ["Healthy", "Warning", "Unhealthy"]}, "component_status": {"type": "object"},
        "last_check": _STR, "models": {"type": "object"}}},
}


def _request_schemas(limits: RequestLimits) -> dict[str, Any]:
    """The request bodies, bounded as this server's ``limits`` bound them."""
    sampling = _sampling(limits)
    text = {"type": "string", "maxLength": limits.max_prompt_chars}
    return {
        "ChatMessage": {"type": "object", "required": ["role"], "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [text, {"type": "array", "items": {
                "type": "object", "required": ["type", "text"],
                "properties": {"type": {"const": "text"}, "text": text}}}, {"type": "null"}]},
            "tool_calls": {"type": "array", "items": _ref("ToolCall"), "description": "assistant messages"},
            "tool_call_id": {**_STR, "description": "tool messages: the call answered"}}},
        "ToolCall": {"type": "object", "required": ["id", "type", "function"], "properties": {
            "id": _STR, "type": {"const": "function"}, "function": {
                "type": "object", "required": ["name", "arguments"],
                "properties": {"name": _STR, "arguments": {**_STR, "description": "JSON text"}}}}},
        "Tool": {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"const": "function"}, "function": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "description": _STR,
                "parameters": {"type": "object"}}}}},
        "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": _STR,
            "messages": {"type": "array", "minItems": 1, "maxItems": limits.max_messages,
                         "items": _ref("ChatMessage"),
                         "description": f"at most {limits.max_prompt_chars} characters of text in all"},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "logprobs": _BOOL, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": limits.max_top_logprobs},
            "add_generation_prompt": _BOOL,
            "tools": {"type": "array", "minItems": 1, "maxItems": limits.max_tools, "items": _ref("Tool"),
                      "description": f"at most {limits.max_grammar_chars} characters of JSON in all"},
            "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {
                "type": "object", "required": ["type", "function"],
                "properties": {"type": {"const": "function"}, "function": {
                    "type": "object", "required": ["name"], "properties": {"name": _STR}}}}]},
            "parallel_tool_calls": _BOOL, **sampling}},
        "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
            "model": _STR,
            "prompt": {"oneOf": [text, {"type": "array", "items": _INT, "minItems": 1}]},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": limits.max_completion_logprobs},
            "best_of": {"type": "integer", "minimum": 1, "maximum": limits.max_n, "description": "must equal n"},
            "echo": _BOOL, **sampling}},
        "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {
            "model": _STR,
            "input": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": limits.max_embedding_input_chars},
                                {"type": "array", "minItems": 1, "maxItems": limits.max_embedding_inputs,
                                 "items": {"type": "string", "minLength": 1,
                                           "maxLength": limits.max_embedding_input_chars}}]},
            "encoding_format": {"enum": ["float", "base64"]}, "dimensions": _INT}},
        "TranscriptionRequest": {"type": "object", "required": ["file", "model"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": f"at most {limits.max_audio_seconds:g} s of audio and "
                                    f"{limits.max_body_bytes} bytes of request body"},
            "model": _STR, "language": _STR, "response_format": {"enum": ["json", "text"]}, "temperature": _NUM}},
        "SpeechRequest": {"type": "object", "required": ["model", "input"], "properties": {
            "model": _STR, "input": {"type": "string", "minLength": 1, "maxLength": limits.max_speech_chars},
            "voice": _STR, "language": _STR, "response_format": {"enum": ["wav", "pcm"]},
            "speed": {"type": "number", "description": "only 1.0 is supported"}}},
    }


def _post(summary: str, request: dict, ok: dict, *, stream: bool = False, example: dict | None = None) -> dict:
    content = dict(ok["content"])
    if example is not None:
        request = {kind: {**media, "example": example} for kind, media in request.items()}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string",
                                                    "description": "`data: {chunk}` events, then `data: [DONE]`"}}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": request},
                     "responses": {"200": {"description": "success", "content": content}, **_ERRORS}}}


def _get(summary: str, ok: dict, extra: dict | None = None) -> dict:
    return {"get": {"summary": summary, "responses": {"200": {"description": "success", **ok}, **(extra or {})}}}


def _first(models: ServedModels, modality: str) -> str:
    """A served model of ``modality`` for the examples (else any name: the example then shows the 404)."""
    names = [m["id"] for m in models.openai_list()["data"] if m["modality"] == modality]
    return names[0] if names else "model"


def openapi_document(models: ServedModels, limits: RequestLimits) -> dict:
    llm = _first(models, "llm")
    chat_example = {"model": llm, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}
    completion_example = {"model": llm, "prompt": "Once upon a time", "max_tokens": 8}
    embedding_example = {"model": _first(models, "embedding"), "input": "Hello"}
    speech_example = {"model": _first(models, "tts"), "input": "Hello", "voice": "default"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ferrum OpenAI-compatible server", "version": ferrum.__version__,
                 "description": f"Serving: {', '.join(models.names())}"},
        "paths": {
            "/v1/chat/completions": _post("Chat completion (stream with `stream: true`)",
                                          _json(_ref("ChatCompletionRequest"))["content"],
                                          _json(_ref("ChatCompletion")), stream=True, example=chat_example),
            "/v1/completions": _post("Text completion (stream with `stream: true`)",
                                     _json(_ref("CompletionRequest"))["content"],
                                     _json(_ref("Completion")), stream=True, example=completion_example),
            "/v1/embeddings": _post("Embed texts", _json(_ref("EmbeddingRequest"))["content"],
                                    _json(_ref("EmbeddingList")), example=embedding_example),
            "/v1/audio/transcriptions": _post(
                "Transcribe audio", {"multipart/form-data": {"schema": _ref("TranscriptionRequest")}},
                {"content": {"application/json": {"schema": {"type": "object", "properties": {"text": _STR}}},
                             "text/plain": {"schema": _STR}}}),
            "/v1/audio/speech": _post("Synthesize speech", _json(_ref("SpeechRequest"))["content"],
                                      {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
                                                   "audio/pcm": {"schema": {"type": "string", "format": "binary"}}}},
                                      example=speech_example),
            "/v1/models": _get("Served models", _json(_ref("ModelList")), {"401": _ERRORS["401"]}),
            "/v1/status": _get("EngineStatus, EngineMetrics, CacheStats and SchedulerStats per model",
                               _json({"type": "object"}), {"401": _ERRORS["401"]}),
            "/health": _get("Health of every engine", _json(_ref("HealthStatus")),
                            {"503": {"description": "unhealthy", **_json(_ref("HealthStatus"))}}),
            "/metrics": _get("Prometheus metrics", {"content": {"text/plain": {"schema": _STR}}}),
            "/openapi.json": _get("This document", _json({"type": "object"})),
            "/": _get("Chat page (HTML)", {"content": {"text/html": {"schema": _STR}}}),
        },
        "components": {
            "schemas": {**_SCHEMAS, **_request_schemas(limits)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
