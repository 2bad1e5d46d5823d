"""Structured output and tool calling on the real SmolLM2 artifact, through the official ``openai``
client: every answer is checked against what was asked (``jsonschema`` for schemas, the regular
expression, the choice list, the tools' parameter schemas), streams against the whole response,
and plain requests sharing the batch with constrained ones against the same requests alone."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks.serve_process import ServeProcess
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine
from runtime.grammar import json_schema_grammar

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                         "country": {"type": "string", "maxLength": 30},
                                         "population": {"type": "integer"},
                                         "coastal": {"type": "boolean"}},
        "required": ["city", "country", "coastal"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]
TOOL_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = ["Describe a person as JSON.", "Invent a character for a story.", "Who wrote Hamlet? Answer in JSON.",
           "Give me an example user record.", "Tell me about a doctor you know.", "Describe Paris.",
           "Name a famous scientist.", "Make up a pirate."]


@pytest.fixture(scope="module")
def server(smollm2_artifact):
    proc = ServeProcess([str(smollm2_artifact)], "--max-model-len", "1024", "--kv-cache-tokens", "8192")
    proc.model = smollm2_artifact.name
    yield proc
    assert proc.terminate() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def chat(client, server, content: str, **kwargs):
    return client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": content}],
                                          **kwargs)


def test_json_schema_outputs_validate_greedy_and_sampled(client, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def one(args):
        i, prompt = args
        sampling = {"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "seed": i}
        return chat(client, server, prompt, response_format=fmt, max_tokens=40, **sampling)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, enumerate(PROMPTS)))
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_parse_with_a_pydantic_model_and_n(client, server):
    class City(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=30)
        country: str = pydantic.Field(max_length=30)
        coastal: bool

    result = client.beta.chat.completions.parse(
        model=server.model, messages=[{"role": "user", "content": "Tell me about a city by the sea."}],
        response_format=City, max_tokens=50, n=2, temperature=0.8, seed=5)
    assert len(result.choices) == 2
    for choice in result.choices:
        assert isinstance(choice.message.parsed, City), choice.message.content


def test_json_object_and_completions_endpoint(client, server):
    answer = chat(client, server, "Return a JSON object with one key, answer, for: capital of France?",
                  response_format={"type": "json_object"}, max_tokens=60, temperature=0)
    assert answer.choices[0].finish_reason == "stop", answer.choices[0].message.content
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    completion = client.completions.create(model=server.model, prompt="A city record: ", max_tokens=60,
                                           temperature=0, extra_body={"structured_outputs": {"json": CITY}})
    jsonschema.validate(json.loads(completion.choices[0].text), CITY)


def test_regex_choice_and_grammar_extensions(client, server):
    date = chat(client, server, "When did the first man land on the moon?", max_tokens=20, temperature=0,
                extra_body={"structured_outputs": {"regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"}})
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.choices[0].message.content)
    assert date.choices[0].finish_reason == "stop"
    for extra in ({"guided_choice": ["yes", "no"]}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        answer = chat(client, server, "Is the sky blue?", max_tokens=5, temperature=0.7, seed=1, extra_body=extra)
        assert answer.choices[0].message.content in ("yes", "no")
    lark = 'start: "The answer is " NUM "."\nNUM: /[0-9]+/'
    answer = chat(client, server, "What is 6 times 7?", max_tokens=12, temperature=0,
                  extra_body={"guided_grammar": lark})
    assert re.fullmatch(r"The answer is [0-9]+\.", answer.choices[0].message.content)


def test_bad_constraints_are_400_naming_the_field(client, server):
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "propertyNames": {"pattern": "a"}}}}},
         "response_format", "propertyNames"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex", "unclosed"),
        ({"extra_body": {"structured_outputs": {"grammar": "start: missing_rule"}}}, "structured_outputs",
         "missing_rule"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice", "choice"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a"}}, "guided_regex",
         "only one"),
    ]
    for kwargs, param, word in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, server, "hi", max_tokens=4, **kwargs)
        error = caught.value.body
        assert error["param"] == param and word in error["message"], error


def test_tool_round_trip_required_and_named(client, server):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.chat.completions.create(model=server.model, messages=messages, tools=TOOLS, tool_choice=choice,
                                               parallel_tool_calls=False, max_tokens=80, temperature=0)
        answer = first.choices[0]
        assert answer.finish_reason == "tool_calls" and answer.message.content is None
        calls = answer.message.tool_calls
        assert len(calls) == 1 and all(c.id.startswith("call_") and c.type == "function" for c in calls)
        for call in calls:
            assert call.function.name in TOOL_PARAMS
            jsonschema.validate(json.loads(call.function.arguments), TOOL_PARAMS[call.function.name])
        if isinstance(choice, dict):
            assert [c.function.name for c in calls] == ["get_weather"]
        messages.append(answer.message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": '{"temperature": 18, "sky": "cloudy"}'}
                     for c in calls]
        final = client.chat.completions.create(model=server.model, messages=messages, tools=TOOLS, tool_choice="none",
                                               max_tokens=30, temperature=0)
        assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_streamed_tool_calls_reassemble_to_the_same_calls(client, server):
    """Parallel calls (SmolLM2 repeats its call until max_tokens cuts it: the complete ones are
    calls, the cut one is content, in both shapes)."""
    kwargs = dict(model=server.model, messages=[{"role": "user", "content": "Add 2 and 3, and get the weather in Rome."}],
                  tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict] = {}
    reason, content = None, ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reason = choice.finish_reason or reason
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert reason == whole.finish_reason and content == (whole.message.content or "")
    expected = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert expected and [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)] == expected
    for name, arguments in expected:
        jsonschema.validate(arguments, TOOL_PARAMS[name])


def test_auto_tool_choice_answers_text_or_valid_calls(client, server):
    answer = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=TOOLS, tool_choice="auto", max_tokens=80, temperature=0).choices[0]
    if answer.message.tool_calls:
        assert answer.finish_reason == "tool_calls"
        for call in answer.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), TOOL_PARAMS[call.function.name])
    else:
        assert answer.message.content and not answer.message.content.lstrip().startswith("<tool_call>")


def test_plain_requests_beside_constrained_ones_get_the_same_tokens(client, server):
    plain = ["What is the capital of France?", "Name three colors.", "Count to five."]

    def run(prompt: str) -> str:
        return chat(client, server, prompt, max_tokens=16, temperature=0).choices[0].message.content

    alone = [run(p) for p in plain]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    with ThreadPoolExecutor(6) as pool:
        constrained = [pool.submit(chat, client, server, p, response_format=fmt, max_tokens=30, temperature=0)
                       for p in PROMPTS[:3]]
        together = list(pool.map(run, plain))
        for future in constrained:
            jsonschema.validate(json.loads(future.result().choices[0].message.content), PERSON)
    assert together == alone


def test_preempted_and_forked_constrained_sequences_match_their_runs_alone(smollm2_artifact):
    """A KV cache too small for the batch preempts constrained sequences (recomputed, matcher kept);
    ``n`` = 2 siblings each follow the grammar; every output equals the request's output alone."""
    engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), max_model_len=512,
                                                kv_cache_tokens=256, max_num_seqs=8, max_num_batched_tokens=128,
                                                enable_prefix_caching=False))
    grammar = json_schema_grammar(PERSON)

    def request(i: int, prompt: str) -> InferenceRequest:
        sampling = dict(temperature=0.0) if i % 2 == 0 else dict(temperature=0.9, seed=i, n=2)
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        return InferenceRequest(prompt=text, sampling_params=SamplingParams(max_tokens=40, grammar=grammar,
                                                                            **sampling))

    async def together() -> list:
        return await asyncio.gather(*(engine.infer(request(i, p)) for i, p in enumerate(PROMPTS[:6])))

    try:
        batched = asyncio.run(together())
        assert engine.scheduler.preemptions > 0
        alone = [asyncio.run(engine.infer(request(i, p))) for i, p in enumerate(PROMPTS[:6])]
    finally:
        asyncio.run(engine.shutdown())
    completions = [c for r in batched for c in [r, *(r.choices or [])]]
    assert len(completions) == 9
    assert [c.tokens for r in batched for c in [r, *(r.choices or [])]] == \
        [c.tokens for r in alone for c in [r, *(r.choices or [])]]
    stopped = [c for c in completions if c.finish_reason is FinishReason.Stop]
    assert len(stopped) >= 6
    for c in stopped:
        jsonschema.validate(json.loads(c.text), PERSON)
