"""Output constraints in a request body → one llguidance grammar (``SamplingParams.grammar``).

OpenAI's ``response_format`` (``text``, ``json_object``, ``json_schema``) and vLLM's extensions:
``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``; vLLM ≥ 0.12)
and the older top-level ``guided_json``/``guided_regex``/``guided_choice``/``guided_grammar``
that vLLM removed in 0.12 but clients still send. At most one constraint per request. Each is
checked by llguidance here, so a schema feature it does not implement, a bad regular expression or
an unknown grammar rule is a 400 whose ``param`` names the field, before any engine sees it.
"""

from __future__ import annotations

import json
from typing import Any

from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from runtime.grammar import choice_grammar, grammar_error, json_schema_grammar, lark_grammar, regex_grammar
from runtime.server.limits import RequestLimits

# vLLM's legacy top-level fields and the structured_outputs key each stands for
LEGACY_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def output_grammar(data: dict[str, Any], limits: RequestLimits) -> tuple[str, str] | None:
    """(llguidance grammar, the field it came from) for the body's output constraint, or None."""
    found = _response_format(data.get("response_format"), limits)
    found += _structured_outputs(data.get("structured_outputs"), limits)
    for name, key in LEGACY_FIELDS.items():
        if data.get(name) is not None:
            found.append((name, _build(key, data[name], name, limits)))
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(param for param, _ in found)
        raise InvalidRequestError(f"only one output constraint may be given, got {names}", param=found[1][0])
    param, grammar = found[0]
    error = grammar_error(grammar)
    if error:
        raise InvalidRequestError(f"'{param}' cannot be enforced: {error[:500]}", param=param)
    return grammar, param


def _response_format(fmt: Any, limits: RequestLimits) -> list[tuple[str, str]]:
    param = "response_format"
    if fmt is None:
        return []
    if not isinstance(fmt, dict):
        raise InvalidRequestError("'response_format' must be an object", param=param)
    kind = fmt.get("type")
    if kind == "text":
        return []
    if kind == "json_object":
        return [(param, json_schema_grammar(True))]
    if kind != "json_schema":
        raise InvalidRequestError("response_format.type must be 'text', 'json_object' or 'json_schema'", param=param)
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise InvalidRequestError("response_format.json_schema must be an object with a 'name'", param=param)
    schema = spec.get("schema", True)
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object", param=param)
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise InvalidRequestError("response_format.json_schema.strict must be a boolean", param=param)
    return [(param, _build("json", schema, param, limits))]


def _structured_outputs(spec: Any, limits: RequestLimits) -> list[tuple[str, str]]:
    param = "structured_outputs"
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise InvalidRequestError("'structured_outputs' must be an object", param=param)
    if spec.get("structural_tag") is not None:
        raise UnsupportedFeatureError("structured_outputs.structural_tag is not supported", param=param, status=400)
    given = [key for key in STRUCTURED_KEYS if spec.get(key) not in (None, False)]
    return [(param, _build(key, spec[key], param, limits)) for key in given]


def _build(key: str, value: Any, param: str, limits: RequestLimits) -> str:
    """The grammar for one constraint of kind ``key`` (structured_outputs' names)."""
    try:
        return _grammar(key, value, param, limits)
    except ValueError as exc:  # llguidance refused it while building (a false schema, bad GBNF)
        raise InvalidRequestError(f"'{param}' cannot be enforced: {str(exc)[:500]}", param=param) from None


def _grammar(key: str, value: Any, param: str, limits: RequestLimits) -> str:
    if key == "json_object":
        return json_schema_grammar(True)
    if key == "json":
        if isinstance(value, str):  # vLLM takes the schema as JSON text too
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidRequestError(f"'{param}' JSON schema is not valid JSON", param=param) from None
        if not isinstance(value, (dict, bool)):
            raise InvalidRequestError(f"'{param}' JSON schema must be an object", param=param)
        _check_size(param, len(json.dumps(value)), limits)
        return json_schema_grammar(value)
    if key == "choice":
        if (not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value)):
            raise InvalidRequestError(f"'{param}' choice must be a non-empty array of non-empty strings", param=param)
        if len(value) > limits.max_choices:
            raise InvalidRequestError(f"'{param}' choice may hold at most {limits.max_choices} strings, "
                                      f"got {len(value)}", param=param)
        _check_size(param, sum(len(c) for c in value), limits)
        return choice_grammar(value)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"'{param}' {key} must be a non-empty string", param=param)
    _check_size(param, len(value), limits)
    return regex_grammar(value) if key == "regex" else lark_grammar(value)


def _check_size(param: str, chars: int, limits: RequestLimits) -> None:
    if chars > limits.max_grammar_chars:
        raise InvalidRequestError(f"'{param}' may be at most {limits.max_grammar_chars} characters, got {chars}",
                                  param=param)
