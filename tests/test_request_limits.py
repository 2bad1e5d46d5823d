"""Every request limit of ``runtime/server/limits.py`` over the fake engines: one past the limit is a
400 (413 for the body) with the OpenAI error body naming the parameter, the limit itself is
accepted, and ``/openapi.json`` states the same numbers. The fakes answer instantly, so this
stays fast; ``test_bad_inputs.py`` checks ``n`` against the real SmolLM2 server."""

from __future__ import annotations

import io
import json
import wave

import aiohttp
import pytest
from server_harness import request, run, served_in_thread
from test_server_fakes import fake_engines

from ferrum.errors import InvalidRequestError
from runtime.server.app import ServerOptions
from runtime.server.limits import RequestLimits
from runtime.server.models import ServedModels

LIMITS = RequestLimits(max_body_bytes=2 << 20, max_audio_seconds=2.0)
DEFAULTS = RequestLimits()
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def url():
    engines = fake_engines()
    engines["llm"].max_model_len = 1 << 22  # room for the longest prompt the limits allow
    with served_in_thread(ServedModels(engines), ServerOptions(limits=LIMITS)) as base:
        yield base


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    status, _, raw = run(request("POST", url + path, json_body=body))
    return status, json.loads(raw)


def refused(url: str, path: str, body: dict, param: str | None, status: int = 400) -> dict:
    """The OpenAI error of a refused request, checked for shape, status and param."""
    got, data = post(url, path, body)
    assert got == status, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error


def chat(url: str, **fields) -> tuple[int, dict]:
    return post(url, "/v1/chat/completions", {"model": "llm", "messages": USER, "max_tokens": 2, **fields})


def completion(url: str, **fields) -> tuple[int, dict]:
    return post(url, "/v1/completions", {"model": "llm", "prompt": "hi", "max_tokens": 2, **fields})


def test_limits_are_validated():
    with pytest.raises(InvalidRequestError, match="max_n"):
        RequestLimits(max_n=0)
    with pytest.raises(InvalidRequestError, match="max_audio_seconds"):
        RequestLimits(max_audio_seconds=-1.0)


# -- n, best_of -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, DEFAULTS.max_n + 1, 100_000])
def test_n_out_of_range(url, n):
    error = refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER, "n": n}, "n")
    assert f"[1, {DEFAULTS.max_n}]" in error["message"]


def test_n_at_limit_is_answered(url):
    status, body = chat(url, n=DEFAULTS.max_n)
    assert status == 200 and [c["index"] for c in body["choices"]] == list(range(DEFAULTS.max_n))
    assert all(c["message"]["content"] == "ih" for c in body["choices"])


@pytest.mark.parametrize("fields", [{"best_of": DEFAULTS.max_n + 1, "n": 1}, {"best_of": 0}, {"best_of": 1, "n": 2}])
def test_best_of_out_of_range(url, fields):
    refused(url, "/v1/completions", {"model": "llm", "prompt": "hi", **fields}, "best_of")


def test_best_of_only_equal_to_n(url):
    status, body = completion(url, best_of=3, n=2)
    assert status == 400 and body["error"]["param"] == "best_of" and "not supported" in body["error"]["message"]
    status, body = completion(url, best_of=3, n=3)
    assert status == 200 and len(body["choices"]) == 3


# -- stop, stop_token_ids, logit_bias -------------------------------------------------------------
def test_stop_limits(url):
    refused(url, "/v1/chat/completions",
            {"model": "llm", "messages": USER, "stop": [f"s{i}" for i in range(DEFAULTS.max_stop_sequences + 1)]},
            "stop")
    refused(url, "/v1/chat/completions",
            {"model": "llm", "messages": USER, "stop": "x" * (DEFAULTS.max_stop_chars + 1)}, "stop")
    stops = [f"{i:03d}" + "x" * (DEFAULTS.max_stop_chars - 3) for i in range(DEFAULTS.max_stop_sequences)]
    status, body = chat(url, stop=stops)
    assert status == 200 and body["choices"][0]["message"]["content"] == "ih"


def test_stop_token_ids_limits(url):
    too_many = list(range(DEFAULTS.max_stop_token_ids + 1))
    refused(url, "/v1/completions", {"model": "llm", "prompt": "hi", "stop_token_ids": too_many}, "stop_token_ids")
    for outside in (-1, 0x110000):  # the fake's vocabulary is the code points
        error = refused(url, "/v1/completions", {"model": "llm", "prompt": "hi", "stop_token_ids": [outside]},
                        "stop_token_ids")
        assert "vocabulary" in error["message"]
    assert completion(url, stop_token_ids=list(range(DEFAULTS.max_stop_token_ids)))[0] == 200


def test_logit_bias_limits(url):
    too_many = {str(t): 1 for t in range(DEFAULTS.max_logit_bias + 1)}
    refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER, "logit_bias": too_many}, "logit_bias")
    refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER, "logit_bias": {"5": 100.5}},
            "logit_bias")
    error = refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER,
                                                  "logit_bias": {str(0x110000): 1}}, "logit_bias")
    assert "vocabulary" in error["message"]
    at_limit = {str(t): (-100 if t % 2 else 100) for t in range(DEFAULTS.max_logit_bias)}
    assert chat(url, logit_bias=at_limit)[0] == 200


# -- logprobs, max_tokens, seed, top_k, ranges ----------------------------------------------------
def test_logprobs_limits(url):
    refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER, "logprobs": True,
                                          "top_logprobs": DEFAULTS.max_top_logprobs + 1}, "top_logprobs")
    assert chat(url, logprobs=True, top_logprobs=DEFAULTS.max_top_logprobs)[0] == 200
    for count in (-1, DEFAULTS.max_completion_logprobs + 1):  # the completions field is called logprobs
        refused(url, "/v1/completions", {"model": "llm", "prompt": "hi", "logprobs": count}, "logprobs")
    assert completion(url, logprobs=DEFAULTS.max_completion_logprobs)[0] == 200


@pytest.mark.parametrize("path,field", [("/v1/chat/completions", "max_completion_tokens"),
                                        ("/v1/chat/completions", "max_tokens"), ("/v1/completions", "max_tokens")])
@pytest.mark.parametrize("value", [0, -5])
def test_max_tokens_must_be_positive(url, path, field, value):
    body = {"model": "llm", "messages": USER} if path == "/v1/chat/completions" else {"model": "llm", "prompt": "hi"}
    refused(url, path, {**body, field: value}, field)


@pytest.mark.parametrize("field,bad,good", [
    ("seed", -1, 0), ("seed", DEFAULTS.max_seed + 1, DEFAULTS.max_seed),
    ("top_k", DEFAULTS.max_top_k + 1, DEFAULTS.max_top_k), ("top_k", -2, -1),
    ("temperature", -0.5, 0), ("top_p", 0, 1), ("top_p", 1.5, 0.5), ("min_p", 1.5, 1),
    ("presence_penalty", 2.5, 2), ("frequency_penalty", -2.5, -2), ("repetition_penalty", 0, 1.2),
])
def test_value_ranges(url, field, bad, good):
    error = refused(url, "/v1/chat/completions", {"model": "llm", "messages": USER, field: bad}, field)
    assert len(error["message"]) < 200  # a huge number is not echoed in full
    assert chat(url, **{field: good})[0] == 200


# -- prompt and messages size ---------------------------------------------------------------------
def test_messages_count(url):
    many = [{"role": "user", "content": "a"}] * (DEFAULTS.max_messages + 1)
    refused(url, "/v1/chat/completions", {"model": "llm", "messages": many}, "messages")
    status, body = chat(url, messages=many[:-1])
    assert status == 200 and body["choices"][0]["message"]["content"] == "a\n"


def test_prompt_characters(url):
    limit = DEFAULTS.max_prompt_chars
    refused(url, "/v1/completions", {"model": "llm", "prompt": "y" * (limit + 1)}, "prompt")
    status, body = completion(url, prompt="y" * (limit - 2) + "ab")
    assert status == 200 and body["choices"][0]["text"] == "ba"
    halves = [{"role": "user", "content": "z" * (limit // 2)}, {"role": "user", "content": "z" * (limit // 2 + 1)}]
    refused(url, "/v1/chat/completions", {"model": "llm", "messages": halves}, "messages")
    halves[1]["content"] = [{"type": "text", "text": "z" * (limit // 2)}]  # text parts count the same
    assert chat(url, messages=halves)[0] == 200


@pytest.mark.parametrize("raw", [b'{"model": "llm", "n": ' + b"9" * 5000 + b"}", b"[" * 100_000])
def test_unparseable_numbers_and_nesting_are_400(url, raw):
    status, _, body = run(request("POST", url + "/v1/chat/completions", data=raw,
                                  headers={"Content-Type": "application/json"}))
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


# -- body size ------------------------------------------------------------------------------------
def test_body_over_limit_is_413_with_openai_body(url):
    body = {"model": "llm", "prompt": "x" * LIMITS.max_body_bytes}
    status, headers, raw = run(request("POST", url + "/v1/completions", json_body=body))
    assert status == 413 and headers["Content-Type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "413"
    assert str(LIMITS.max_body_bytes) in error["message"]


# -- embeddings -----------------------------------------------------------------------------------
def test_embedding_limits(url):
    refused(url, "/v1/embeddings", {"model": "embed", "input": ["a"] * (DEFAULTS.max_embedding_inputs + 1)}, "input")
    status, body = post(url, "/v1/embeddings", {"model": "embed", "input": ["a"] * DEFAULTS.max_embedding_inputs})
    assert status == 200 and len(body["data"]) == DEFAULTS.max_embedding_inputs
    long = "w" * (DEFAULTS.max_embedding_input_chars + 1)
    refused(url, "/v1/embeddings", {"model": "embed", "input": ["ok", long]}, "input")
    status, body = post(url, "/v1/embeddings", {"model": "embed", "input": long[:-1]})
    assert status == 200 and body["data"][0]["embedding"][0] == DEFAULTS.max_embedding_input_chars


def test_embedding_token_arrays_refused(url):
    status, body = post(url, "/v1/embeddings", {"model": "embed", "input": [[1, 2], [3]]})
    assert status == 400 and body["error"]["param"] == "input" and "token-id input" in body["error"]["message"]


# -- audio ----------------------------------------------------------------------------------------
def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()


def transcribe(url: str, audio: bytes) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("model", "whisper")
    form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
    status, _, raw = run(request("POST", url + "/v1/audio/transcriptions", data=form))
    return status, json.loads(raw)


def test_audio_duration_limit(url):
    status, body = transcribe(url, wav(LIMITS.max_audio_seconds + 0.5))
    assert status == 400 and body["error"]["param"] == "file", body
    assert f"at most {LIMITS.max_audio_seconds:g} s" in body["error"]["message"]
    audio = wav(LIMITS.max_audio_seconds)
    status, body = transcribe(url, audio)
    assert status == 200 and body["text"] == f"{len(audio)} bytes in None"


def test_audio_upload_over_body_limit_is_413(url):
    status, body = transcribe(url, b"RIFF" + b"\0" * LIMITS.max_body_bytes)
    assert status == 413 and body["error"]["type"] == "invalid_request_error"


def test_speech_limits(url):
    refused(url, "/v1/audio/speech", {"model": "voice", "input": "s" * (DEFAULTS.max_speech_chars + 1)}, "input")
    status, _, raw = run(request("POST", url + "/v1/audio/speech", json_body={
        "model": "voice", "input": "s" * DEFAULTS.max_speech_chars, "response_format": "pcm"}))
    assert status == 200 and len(raw) == 2 * 100 * DEFAULTS.max_speech_chars  # the fake: 100 samples a character
    status, body = post(url, "/v1/audio/speech", {"model": "voice", "input": "hi", "speed": 2.0})
    assert status == 400 and body["error"]["param"] == "speed"


# -- the schema states the same limits ------------------------------------------------------------
def test_openapi_states_the_limits(url):
    schemas = json.loads(run(request("GET", url + "/openapi.json"))[2])["components"]["schemas"]
    chat_props = schemas["ChatCompletionRequest"]["properties"]
    assert chat_props["n"]["maximum"] == DEFAULTS.max_n
    assert chat_props["messages"]["maxItems"] == DEFAULTS.max_messages
    assert chat_props["logit_bias"]["maxProperties"] == DEFAULTS.max_logit_bias
    assert chat_props["top_logprobs"]["maximum"] == DEFAULTS.max_top_logprobs
    assert chat_props["stop"]["oneOf"][1]["maxItems"] == DEFAULTS.max_stop_sequences
    assert chat_props["seed"] == {"type": "integer", "minimum": 0, "maximum": DEFAULTS.max_seed}
    completion_props = schemas["CompletionRequest"]["properties"]
    assert completion_props["logprobs"]["maximum"] == DEFAULTS.max_completion_logprobs
    assert completion_props["prompt"]["oneOf"][0]["maxLength"] == DEFAULTS.max_prompt_chars
    assert schemas["EmbeddingRequest"]["properties"]["input"]["oneOf"][1]["maxItems"] == DEFAULTS.max_embedding_inputs
    assert schemas["SpeechRequest"]["properties"]["input"]["maxLength"] == DEFAULTS.max_speech_chars
    assert f"{LIMITS.max_audio_seconds:g} s" in schemas["TranscriptionRequest"]["properties"]["file"]["description"]


def test_unknown_model_name_is_not_echoed_in_full(url):
    status, body = post(url, "/v1/chat/completions", {"model": "m" * 100_000, "messages": USER})
    assert status == 404 and body["error"]["param"] == "model" and len(body["error"]["message"]) < 400


def test_audio_duration_from_headers():
    import numpy as np
    import soundfile

    from runtime.audio_decode import audio_duration

    assert audio_duration(wav(1.25, rate=16000)) == 1.25
    flac = io.BytesIO()
    soundfile.write(flac, np.zeros((44100 * 3, 2), np.float32), 44100, format="FLAC")
    assert audio_duration(flac.getvalue()) == pytest.approx(3.0)
    with pytest.raises(InvalidRequestError, match="cannot decode"):
        audio_duration(b"definitely not audio")
