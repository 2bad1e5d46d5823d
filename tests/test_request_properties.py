"""Request validation as a property: whatever body a client sends to a JSON route, the server
answers it (200) or refuses it with a 4xx OpenAI error body; never a 5xx, never a hang. Runs over
the fake engines of ``test_server_fakes`` (they answer instantly), so thousands of bodies are cheap."""

from __future__ import annotations

import json

from server_harness import request, run
from test_server_fakes import fake  # noqa: F401  (the served fake engines, a module fixture)


JSON_ROUTES = {"/v1/chat/completions": "ChatCompletionRequest", "/v1/completions": "CompletionRequest",
               "/v1/embeddings": "EmbeddingRequest", "/v1/audio/speech": "SpeechRequest"}
MODELS_BY_ROUTE = {"/v1/chat/completions": "llm", "/v1/completions": "llm", "/v1/embeddings": "embed",
                   "/v1/audio/speech": "voice"}


def _resolved(schema, components: dict):
    """The schema with ``$ref``s to ``#/components/schemas/...`` inlined (hypothesis-jsonschema takes no refs)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolved(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {k: _resolved(v, components) for k, v in schema.items() if k not in ("description", "example")}
    if isinstance(schema, list):
        return [_resolved(v, components) for v in schema]
    return schema


def _from_schema(schema: dict):
    """Values a JSON schema admits, for the subset ``/openapi.json`` uses (types, enums, one/anyOf,
    lengths, ranges, required and optional properties); hypothesis-jsonschema does not run on this
    hypothesis release."""
    from hypothesis import strategies as st

    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of([_from_schema(s) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_from_schema({**schema, "type": k}) for k in kind])
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(schema.get("minimum", -2**40), schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: _from_schema(v) for k, v in props.items() if k in required},
                                     optional={k: _from_schema(v) for k, v in props.items() if k not in required})
    return _json_values()


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                                               inner, max_size=4),
                        max_leaves=12)


def test_any_request_body_gets_an_answer_or_a_4xx_error_body(fake):  # noqa: F811  (the imported fixture)
    """Bodies drawn from each route's request schema (shaped as the schema says, up to its limits) and
    schema-shaped bodies with arbitrary JSON spliced into their fields: every one is answered with
    a 200, or a 4xx carrying the OpenAI error body, within the request timeout; never a 5xx."""
    import urllib.error
    import urllib.request

    from collections import Counter

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, _, raw = run(request("GET", fake.url + "/openapi.json"))
    components = json.loads(raw)["components"]["schemas"]
    seen: Counter[int] = Counter()

    def bodies(path: str):
        schema = _resolved(components[JSON_ROUTES[path]], components)
        model = MODELS_BY_ROUTE[path]
        valid = _from_schema(schema).map(lambda b: {**b, "model": model})
        spliced = st.tuples(valid, st.sampled_from(sorted(schema["properties"])), _json_values()).map(
            lambda t: {**t[0], t[1]: t[2]})
        return st.tuples(st.just(path), valid | spliced)

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(sorted(JSON_ROUTES)).flatmap(bodies))
    def check(case):
        path, body = case
        data = json.dumps(body).encode()
        req = urllib.request.Request(fake.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        seen[status // 100] += 1
        assert status == 200 or 400 <= status < 500, (status, body, payload[:300])
        if status != 200:
            error = json.loads(payload)["error"]
            assert {"message", "type", "param", "code"} <= set(error) and error["message"], (body, error)

    check()
    assert seen[2] and seen[4], seen  # both answers and refusals were drawn
