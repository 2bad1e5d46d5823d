"""Whisper base through compile → artifact → runtime, on speech spoken by espeak-ng.

The artifact is compiled once per session (reused from artifacts/ when intact). Speech tests
skip only when espeak-ng is absent (CI installs it: .ci/run).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from ferrum.errors import InvalidRequestError
from ferrum.types import EngineConfig
from runtime.audio_decode import decode_audio, resample
from runtime.log_mel import hz_to_mel, mel_filters, mel_windows
from checks.speech import SENTENCES, espeak_available, read_wav_int16, speak, upsample_by_two, wav_bytes, word_error_rate, word_errors
from serial_cancel import assert_cancelled_waiter_leaves_no_trace

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def engine(whisper_artifact):
    from runtime.engines import open_engine

    eng = open_engine(EngineConfig(artifact_path=str(whisper_artifact)))
    yield eng
    asyncio.run(eng.shutdown())


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> list[Path]:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("speech")
    return [speak(text, folder / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


# -- pure numpy pieces ---------------------------------------------------------------------
def test_word_error_rate():
    assert word_errors("the cat sat", "The cat sat.") == (0, 3)
    assert word_errors("the cat sat", "the bat sat down") == (2, 3)
    assert word_errors("the cat sat", "") == (3, 3)
    assert word_error_rate(["a b", "c d e"], ["a b", "c e"]) == pytest.approx(1 / 5)


def test_resample_keeps_a_tone_and_removes_what_cannot_be_represented():
    rate_in, rate_out = 44100, 16000
    t = np.arange(rate_in) / rate_in
    tone = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), rate_in, rate_out)
    assert len(tone) == rate_out
    expected = np.sin(2 * np.pi * 1000 * np.arange(rate_out) / rate_out)
    assert np.max(np.abs(tone[200:-200] - expected[200:-200])) < 0.01
    alias = resample(np.sin(2 * np.pi * 12000 * t).astype(np.float32), rate_in, rate_out)  # above 8 kHz Nyquist
    assert np.sqrt(np.mean(alias[200:-200] ** 2)) < 0.01


def test_slaney_mel_filters():
    filters = mel_filters(16000, 400, 80)
    assert filters.shape == (80, 201)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)  # Slaney: linear to 1 kHz at 200/3 Hz per mel
    freqs = np.linspace(0, 8000, 201)
    peaks = freqs[filters.argmax(axis=1)]
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 7000
    # area normalization: every triangle integrates (in Hz) to about 1 for wide-enough filters
    areas = filters.sum(axis=1) * (freqs[1] - freqs[0])
    assert np.allclose(areas[40:], 1.0, atol=0.1)


def test_log_mel_windows_cover_long_audio():
    samples = np.random.default_rng(0).standard_normal(16000 * 65).astype(np.float32) * 0.1
    windows = mel_windows(samples, 16000, 400, 160, 80, 3000)
    assert len(windows) == 3 and all(w.shape == (80, 3000) for w in windows)
    assert max(w.max() for w in windows) <= 2.5 and min(w.min() for w in windows) >= max(w.max() for w in windows) - 2.0


@pytest.mark.parametrize("bits,float_format", [(8, False), (16, False), (24, False), (32, False), (32, True)])
def test_wav_sample_formats_decode_to_the_same_signal(bits, float_format):
    t = np.arange(1600) / 16000
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    decoded = decode_audio(wav_bytes(x, 16000, bits=bits, channels=2, float_format=float_format), 16000)
    assert np.max(np.abs(decoded - x)) < (0.01 if bits == 8 else 1e-4)


def test_flac_decodes_through_soundfile():
    import io

    soundfile = pytest.importorskip("soundfile")
    t = np.arange(8000) / 8000
    x = 0.5 * np.sin(2 * np.pi * 300 * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, x, 8000, format="FLAC", subtype="PCM_16")
    decoded = decode_audio(buffer.getvalue(), 16000)
    expected = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert len(decoded) == 16000 and np.max(np.abs(decoded[100:-100] - expected[100:-100])) < 0.01


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty or too short"),
        (b"this is plain text and certainly not any audio format" * 4, "cannot decode the audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "corrupt WAV"),
        (wav_bytes(np.zeros(10), 16000)[:44], "no samples"),
    ],
)
def test_bad_audio_is_a_clear_invalid_request(data, message):
    with pytest.raises(InvalidRequestError, match=message) as info:
        decode_audio(data, 16000)
    assert info.value.status == 400


# -- the compiled model --------------------------------------------------------------------
def test_manifest_describes_a_transcription_model(whisper_artifact):
    from ferrum.manifest import Manifest

    manifest = Manifest.load(whisper_artifact)
    assert manifest.modality == "transcription" and manifest.architecture == "whisper"
    assert manifest.extra.sample_rate == 16000 and manifest.extra.n_mels == 80
    special = manifest.extra.special_tokens
    assert (special.eot, special.sot, special.no_timestamps) == (50257, 50258, 50363)
    assert manifest.functions == ["encode", "prefill", "decode"]


@needs_espeak
def test_espeak_sentences_are_transcribed(engine, spoken):
    hypotheses = [asyncio.run(engine.transcribe_file(str(path))) for path in spoken]
    wer = word_error_rate(SENTENCES, hypotheses)
    assert wer <= 0.15, list(zip(SENTENCES, hypotheses))


@needs_espeak
def test_44k1_24bit_wav_with_language_given(engine, spoken):
    samples, rate = read_wav_int16(spoken[1])
    assert rate == 22050
    text = asyncio.run(engine.transcribe_bytes(wav_bytes(upsample_by_two(samples), 44100, bits=24), language="en"))
    errors, words = word_errors(SENTENCES[1], text)
    assert errors / words <= 0.15, text


def test_silence_is_empty_text(engine):
    assert asyncio.run(engine.transcribe_bytes(wav_bytes(np.zeros(16000 * 3), 16000))) == ""


def test_corrupt_upload_and_unknown_language_are_rejected(engine):
    with pytest.raises(InvalidRequestError, match="cannot decode the audio"):
        asyncio.run(engine.transcribe_bytes(b"\x00\x01garbage" * 100))
    with pytest.raises(InvalidRequestError, match="unknown language"):
        asyncio.run(engine.transcribe_bytes(wav_bytes(np.zeros(1600), 16000), language="klingon"))
    with pytest.raises(InvalidRequestError, match="cannot read audio file"):
        asyncio.run(engine.transcribe_file("/nonexistent/audio.wav"))
    assert asyncio.run(engine.status()).is_ready
    assert asyncio.run(engine.health_check()).status.value == "Healthy"  # the client's fault, not the model's


def test_a_request_cancelled_while_waiting_leaves_no_count(whisper_artifact, monkeypatch):
    """A client that gives up while another transcription runs leaves nothing waiting and is
    counted cancelled. The model call is a fake held by the test."""
    from runtime.whisper_engine import Transcript, WhisperEngine

    eng = WhisperEngine(EngineConfig(artifact_path=str(whisper_artifact)))
    gate = threading.Event()

    def held(data: bytes, language: str | None) -> Transcript:
        assert gate.wait(10), "the test never released the model call"
        return Transcript("hello", 1)

    monkeypatch.setattr(eng, "_transcribe", held)
    assert_cancelled_waiter_leaves_no_trace(eng, gate, lambda: eng.transcribe_bytes(b"audio"))
    asyncio.run(eng.shutdown())


# -- numerics against an independent numpy Whisper -----------------------------------------
@needs_espeak
def test_encoder_and_cached_decoder_match_numpy_reference(engine, spoken):
    from compile.sources import open_source
    from reference_whisper import ReferenceWhisper

    ref = ReferenceWhisper(open_source("whisper-base").arrays)
    audio = decode_audio(spoken[0].read_bytes(), 16000)
    mel = mel_windows(audio, 16000, 400, 160, 80, 3000)[0]
    runner, sp = engine.runner, engine.special
    state = runner.encode(mel)
    encoded = ref.encoder(mel)
    cross_k, cross_v = state.cross_k.numpy(), state.cross_v.numpy()
    for layer in (0, 5):
        k, v = ref.cross_kv(encoded, layer)
        assert np.max(np.abs(cross_k[layer] - k)) < 1e-3 * np.max(np.abs(k))
        assert np.max(np.abs(cross_v[layer].T - v)) < 1e-3 * np.max(np.abs(v))
    prompt = [sp.sot, engine.languages["en"], sp.transcribe, sp.no_timestamps]
    runner.step(state, prompt[:1])  # prefill, then the cached path with several and with one token
    runner.step(state, prompt[1:])
    got = runner.step(state, [440])  # " The"
    want = ref.logits(encoded, prompt + [440])
    assert np.max(np.abs(got - want)) < 1e-3 * np.max(np.abs(want))
    assert int(np.argmax(got)) == int(np.argmax(want))


RUNTIME_ONLY_SCRIPT = r"""
import asyncio, json, sys
import tvm
from ferrum.types import EngineConfig
from runtime.engines import open_engine

engine = open_engine(EngineConfig(artifact_path=sys.argv[1]))
text = asyncio.run(engine.transcribe_file(sys.argv[2]))
print(json.dumps({"runtime_only": tvm.base._RUNTIME_ONLY, "text": text,
                  "loaded": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir", "compile")))}))
"""


@needs_espeak
def test_transcription_runs_on_runtime_only_tvm(engine, whisper_artifact, spoken):
    """With TVM's compiler library switched off, the artifact gives the same transcript."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(whisper_artifact), str(spoken[4])],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runtime_only"] is True and report["loaded"] == []
    assert report["text"] == asyncio.run(engine.transcribe_file(str(spoken[4])))
