"""The server's routes over small fake engines (test-only): embeddings, audio, internal errors,
429, CORS, unhealthy 503, and schemathesis fuzzing of the whole API (fast, since the fake LLM
answers instantly whatever max_tokens is)."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from server_harness import CodePointTokenizer, request, run, served_in_thread, sse_events

from ferrum.engine import EmbedEngine, LlmInferenceEngine, TranscribeEngine, TtsEngine
from ferrum.errors import ContextLengthExceededError, EngineShutdownError, InvalidRequestError, OverloadedError
from ferrum.metrics import (
    ComponentHealth,
    ComponentStatus,
    EngineMetrics,
    EngineStatus,
    HealthStatus,
    HealthStatusType,
    MemoryUsage,
)
from ferrum.serde import utc_now
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, StreamChunk, TokenUsage
from runtime.server.app import ServerOptions
from runtime.server.models import ServedModels

ALLOWED = "http://allowed.example"
RATE = 8000


class _Base:
    healthy = True

    async def status(self) -> EngineStatus:
        return EngineStatus(True, [type(self).__name__], 0, 0, MemoryUsage(0, 0, 0, None, None, 0), 0, utc_now(), "t")

    async def shutdown(self) -> None:
        pass

    def config(self) -> EngineConfig:
        return EngineConfig()

    def metrics(self) -> EngineMetrics:
        return EngineMetrics()

    async def health_check(self) -> HealthStatus:
        ok = ComponentHealth.healthy("x")
        scheduler = ok if self.healthy else ComponentHealth(HealthStatusType.Unhealthy, "broken")
        return HealthStatus.from_components(ComponentStatus(scheduler, ok, ok, ok, ok, ok))


class FakeLlm(_Base, LlmInferenceEngine):
    """Echoes the prompt backwards, one character per token, at most 5; magic prompts fail."""

    max_model_len = 4096
    tokenizer = CodePointTokenizer()

    async def infer_stream(self, request: InferenceRequest):
        params = request.sampling_params
        params.validate()
        ids = request.prompt_token_ids or []
        if any(not 0 <= t < 0x110000 for t in ids):
            raise InvalidRequestError("token ids must be code points", param="prompt")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ContextLengthExceededError("too long", param="max_tokens")
        if request.prompt == "boom":
            raise RuntimeError("kaboom")
        if request.prompt == "busy":
            raise OverloadedError("queue full", retry_after_s=3)
        return self._chunks(request, list(reversed(ids))[: min(params.max_tokens, 5)] or [ord("?")])

    async def _chunks(self, request: InferenceRequest, out: list[int]):
        for index in range(request.sampling_params.n):  # every completion of n gives the same text
            for i, token in enumerate(out):
                if request.prompt == "midfail" and i == 1:
                    raise EngineShutdownError("engine stopped mid-stream")
                last = i == len(out) - 1
                reason = (FinishReason.Length if len(out) == request.sampling_params.max_tokens else FinishReason.EOS)
                yield StreamChunk(request.id, chr(token), token, reason if last else None,
                                  TokenUsage.of(len(request.prompt_token_ids), len(out)) if last else None,
                                  index=index)

    async def infer(self, request):
        raise NotImplementedError


class FakeEmbed(_Base, EmbedEngine):
    async def embed_text(self, text: str) -> list[float]:
        return [float(len(text)), 0.5, -0.25]

    async def embed_image(self, image: str) -> list[float]:
        raise NotImplementedError

    def embedding_dim(self) -> int:
        return 3


class FakeTranscribe(_Base, TranscribeEngine):
    async def transcribe_file(self, path: str, language=None) -> str:
        raise NotImplementedError

    async def transcribe_bytes(self, data: bytes, language=None) -> str:
        return f"{len(data)} bytes in {language}"


class FakeTts(_Base, TtsEngine):
    async def synthesize_speech(self, text: str, language=None, chunk_frames: int = 4096) -> list[list[float]]:
        samples = [0.5 * math.sin(i / 10) for i in range(100 * len(text))]
        return [samples[i: i + 64] for i in range(0, len(samples), 64)]

    def tts_sample_rate(self) -> int:
        return RATE


def fake_engines() -> dict:
    return {"llm": FakeLlm(), "embed": FakeEmbed(), "whisper": FakeTranscribe(), "voice": FakeTts()}


@pytest.fixture(scope="module")
def fake():
    engines = fake_engines()
    with served_in_thread(ServedModels(engines), ServerOptions(cors_origins=[ALLOWED])) as url:
        class Server:
            pass

        Server.url, Server.engines = url, engines
        yield Server


def body_json(result) -> dict:
    return json.loads(result[2])


# -- embeddings ---------------------------------------------------------------------------------
def test_embeddings_float_and_base64(fake):
    status, _, raw = run(request("POST", fake.url + "/v1/embeddings", json_body={"model": "embed", "input": ["ab", "c"]}))
    assert status == 200
    data = json.loads(raw)["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert data[0]["embedding"] == [2.0, 0.5, -0.25] and data[1]["embedding"] == [1.0, 0.5, -0.25]
    body = body_json(run(request("POST", fake.url + "/v1/embeddings",
                                 json_body={"model": "embed", "input": "abcd", "encoding_format": "base64"})))
    import numpy as np
    assert np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), "<f4").tolist() == [4.0, 0.5, -0.25]


@pytest.mark.parametrize("payload,status,param", [
    ({"model": "embed", "input": [1, 2]}, 400, "input"),
    ({"model": "embed", "input": ""}, 400, "input"),
    ({"model": "embed", "input": "x", "dimensions": 7}, 400, "dimensions"),
    ({"model": "llm", "input": "x"}, 404, "model"),
    ({"input": "x"}, 400, "model"),
])
def test_embedding_errors(fake, payload, status, param):
    result = run(request("POST", fake.url + "/v1/embeddings", json_body=payload))
    assert result[0] == status
    assert body_json(result)["error"]["param"] == param


# -- audio --------------------------------------------------------------------------------------
def test_transcription_multipart_with_openai_client(fake):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0)
    out = client.audio.transcriptions.create(model="whisper", file=("a.wav", b"RIFF1234"), language="en")
    assert out.text == "8 bytes in en"
    text = client.audio.transcriptions.create(model="whisper", file=("a.wav", b"xyz"), response_format="text")
    assert text.strip() == "3 bytes in None"


def test_transcription_errors(fake):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("model", "whisper")
    result = run(request("POST", fake.url + "/v1/audio/transcriptions", data=form))
    assert result[0] == 400 and body_json(result)["error"]["param"] == "file"
    bad = run(request("POST", fake.url + "/v1/audio/transcriptions", data=b"--x\r\nnonsense",
                      headers={"Content-Type": "multipart/form-data; boundary=x"}))
    assert bad[0] == 400 and body_json(bad)["error"]["type"] == "invalid_request_error"
    form = aiohttp.FormData()
    form.add_field("model", "embed")
    form.add_field("file", b"abc", filename="a.wav")
    result = run(request("POST", fake.url + "/v1/audio/transcriptions", data=form))
    assert result[0] == 404 and "not a transcription model" in body_json(result)["error"]["message"]


def test_speech_wav_and_pcm(fake):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0)
    audio = client.audio.speech.create(model="voice", input="hey", voice="alloy", response_format="wav").content
    with wave.open(io.BytesIO(audio)) as wav:
        assert wav.getframerate() == RATE and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        frames = wav.readframes(wav.getnframes())
    assert wav.getnframes() == 300
    status, headers, pcm = run(request("POST", fake.url + "/v1/audio/speech",
                                       json_body={"model": "voice", "input": "hey", "response_format": "pcm"}))
    assert status == 200 and pcm == frames and headers["X-Sample-Rate"] == str(RATE)
    result = run(request("POST", fake.url + "/v1/audio/speech",
                         json_body={"model": "voice", "input": "hey", "response_format": "mp3"}))
    assert result[0] == 400 and body_json(result)["error"]["param"] == "response_format"


# -- failures, overload, health, CORS -----------------------------------------------------------
def test_internal_error_is_500_with_request_id_and_server_keeps_serving(fake):
    status, headers, raw = run(request("POST", fake.url + "/v1/completions", json_body={"model": "llm", "prompt": "boom"}))
    error = json.loads(raw)["error"]
    assert status == 500 and error["type"] == "internal_error"
    assert headers["X-Request-Id"] in error["message"] and "kaboom" not in error["message"]
    ok = run(request("POST", fake.url + "/v1/completions", json_body={"model": "llm", "prompt": "abc"}))
    assert ok[0] == 200 and body_json(ok)["choices"][0]["text"] == "cba"


def test_overloaded_is_429_with_retry_after(fake):
    status, headers, raw = run(request("POST", fake.url + "/v1/chat/completions",
                                       json_body={"model": "llm", "messages": [{"role": "user", "content": "busy"}]}))
    assert status == 429 and headers["Retry-After"] == "3"
    assert json.loads(raw)["error"]["code"] == "overloaded"


def test_failure_mid_stream_sends_error_event_then_done(fake):
    events = run(sse_events(fake.url + "/v1/completions", {"model": "llm", "prompt": "midfail", "stream": True}))
    assert events[0]["choices"][0]["text"] == "l"
    assert events[-2]["error"]["code"] == "engine_shutdown" and events[-1] == "[DONE]"


def test_unhealthy_engine_makes_health_503(fake):
    assert run(request("GET", fake.url + "/health"))[0] == 200
    fake.engines["voice"].healthy = False
    try:
        status, _, raw = run(request("GET", fake.url + "/health"))
        body = json.loads(raw)
        assert status == 503 and body["status"] == "Unhealthy" and body["models"]["voice"]["status"] == "Unhealthy"
        assert body["models"]["embed"]["status"] == "Healthy"
    finally:
        fake.engines["voice"].healthy = True


def test_cors_allowed_origin_only(fake):
    status, headers, _ = run(request("OPTIONS", fake.url + "/v1/chat/completions", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}))
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in headers["Access-Control-Allow-Methods"]
    _, headers, _ = run(request("GET", fake.url + "/v1/models", headers={"Origin": ALLOWED}))
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    _, headers, _ = run(request("GET", fake.url + "/v1/models", headers={"Origin": "http://evil.example"}))
    assert "Access-Control-Allow-Origin" not in headers


def test_models_lists_every_modality(fake):
    data = body_json(run(request("GET", fake.url + "/v1/models")))["data"]
    assert {m["id"]: m["modality"] for m in data} == {"llm": "llm", "embed": "embedding",
                                                      "whisper": "transcription", "voice": "tts"}


def test_schemathesis_finds_no_server_errors(fake):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed")
    result = subprocess.run(
        [exe, "run", fake.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "40",
         "--generation-deterministic", "--phases", "examples,coverage,fuzzing"],
        check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

