"""``/v1/embeddings``, ``/v1/audio/transcriptions`` and ``/v1/audio/speech`` on the matching traits.

Each route parses its OpenAI body, picks the served model of the right modality (404 naming the
served models otherwise) and calls the trait. Options the traits cannot honour are refused with
a 400 that says so rather than silently ignored; sizes (inputs per embeddings call, characters,
audio duration) are bounded by ``RequestLimits`` before the engine is called.
"""

from __future__ import annotations

import asyncio
import base64
import io
import wave

import numpy as np
from aiohttp import web

from ferrum.engine import EmbedEngine, TranscribeEngine, TtsEngine
from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from runtime.audio_decode import audio_duration
from runtime.server.limits import RequestLimits
from runtime.server.models import ServedModels
from runtime.server.openai_schema import Body, check_chars, check_count, parse_json_object


def _unsupported(message: str, param: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(message, param=param, status=400)


async def embeddings(request: web.Request, models: ServedModels, limits: RequestLimits) -> web.Response:
    body = Body(parse_json_object(await request.read()))
    model = body.required("model", "str")
    raw = body.data.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(t, (int, list)) for t in raw):
        raise _unsupported("token-id input is not supported; send text", "input")
    else:
        raise InvalidRequestError("'input' must be a string or a non-empty array of strings", param="input")
    check_count("input", len(texts), limits.max_embedding_inputs)
    if any(t == "" for t in texts):
        raise InvalidRequestError("'input' must not contain empty strings", param="input")
    check_chars("input", max(len(t) for t in texts), limits.max_embedding_input_chars, "each input")
    encoding = body.get("encoding_format", "str", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
    engine: EmbedEngine = models.get(model, EmbedEngine)
    dimensions = body.get("dimensions", "int")
    if dimensions is not None and dimensions != engine.embedding_dim():
        raise _unsupported(f"this model only produces {engine.embedding_dim()}-dimensional embeddings",
                           "dimensions")
    batch = getattr(engine, "embed_texts", None)  # one batched call when the engine has it
    vectors = await (batch(texts) if callable(batch) else asyncio.gather(*(engine.embed_text(t) for t in texts)))
    data = []
    for index, vector in enumerate(vectors):
        value = (base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                 if encoding == "base64" else [float(v) for v in vector])
        data.append({"object": "embedding", "index": index, "embedding": value})
    result = {"object": "list", "model": model, "data": data}
    count = getattr(engine, "count_tokens", None)  # optional: only engines that can count report usage
    if callable(count):
        tokens = sum(count(t) for t in texts)
        result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response(result)


async def transcriptions(request: web.Request, models: ServedModels, limits: RequestLimits) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError("send the audio as multipart/form-data with a 'file' field", param="file")
    try:
        form = await request.post()
    except web.HTTPException:  # 413: over the body limit
        raise
    except Exception as exc:  # noqa: BLE001 -- aiohttp's multipart parser raises assorted types for bad bodies
        raise InvalidRequestError(f"malformed multipart body: {exc}") from None
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required", param="model")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("'file' must be an uploaded audio file", param="file")
    audio = upload.file.read()
    if not audio:
        raise InvalidRequestError("the uploaded audio file is empty", param="file")
    language = form.get("language") or None
    fmt = form.get("response_format") or "json"
    if fmt not in ("json", "text"):
        raise _unsupported("response_format must be 'json' or 'text' (no timestamps are produced)", "response_format")
    if form.get("prompt"):
        raise _unsupported("prompting the transcription is not supported", "prompt")
    temperature = form.get("temperature")
    if temperature not in (None, "", "0", "0.0"):
        raise _unsupported("only greedy transcription (temperature 0) is supported", "temperature")
    engine: TranscribeEngine = models.get(model, TranscribeEngine)
    seconds = await asyncio.to_thread(_duration, audio)
    if seconds is not None and seconds > limits.max_audio_seconds:
        raise InvalidRequestError(f"the audio is {seconds:.1f} s long; this server transcribes at most "
                                  f"{limits.max_audio_seconds:g} s per request", param="file")
    text = await engine.transcribe_bytes(audio, language=language)
    if fmt == "text":
        return web.Response(text=text, content_type="text/plain")
    return web.json_response({"text": text})


def _duration(audio: bytes) -> float | None:
    """The upload's length in seconds, or None when its header cannot be read: then the engine,
    which decodes with the same code, answers with the reason."""
    try:
        return audio_duration(audio)
    except InvalidRequestError:
        return None


def _pcm16(chunks: list[list[float]]) -> bytes:
    samples = np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks]) if chunks else np.zeros(0, np.float32)
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


async def speech(request: web.Request, models: ServedModels, limits: RequestLimits) -> web.Response:
    body = Body(parse_json_object(await request.read()))
    model = body.required("model", "str")
    text = body.required("input", "str")
    if not text.strip():
        raise InvalidRequestError("'input' must not be empty", param="input")
    check_chars("input", len(text), limits.max_speech_chars)
    body.get("voice", "str")  # accepted for compatibility: each served TTS model has one voice
    fmt = body.get("response_format", "str", "wav")
    if fmt not in ("wav", "pcm"):
        raise _unsupported("response_format must be 'wav' or 'pcm' (16-bit little-endian mono)", "response_format")
    speed = body.get("speed", "number", 1.0)
    if speed != 1.0:
        raise _unsupported("only speed 1.0 is supported", "speed")
    engine: TtsEngine = models.get(model, TtsEngine)
    chunks = await engine.synthesize_speech(text, language=body.get("language", "str"))
    pcm = _pcm16(chunks)
    rate = engine.tts_sample_rate()
    if fmt == "pcm":
        return web.Response(body=pcm, content_type="audio/pcm", headers={"X-Sample-Rate": str(rate)})
    return web.Response(body=wav_bytes(pcm, rate), content_type="audio/wav")
