"""The non-LLM modalities on real models, end to end through `ferrum serve`: embeddings
(all-MiniLM-L6-v2), speech (Piper voice) and transcription (Whisper base) in one server, and the
speech → transcription round trip (the issue's test that the voice says the words)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from server_harness import ServeProcess
from checks.speech import word_error_rate

SENTENCE = "The weather is sunny today and the park is full of children."


@pytest.fixture(scope="module")
def server(minilm_artifact, piper_artifact, whisper_artifact):
    proc = ServeProcess([str(minilm_artifact), str(piper_artifact), str(whisper_artifact)], timeout=240)
    proc.names = {"embed": minilm_artifact.name, "tts": piper_artifact.name, "asr": whisper_artifact.name}
    yield proc
    assert proc.terminate() == 0


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=240)


def test_all_three_models_are_listed(client, server):
    assert {m.id for m in client.models.list().data} == set(server.names.values())


def test_embeddings_of_a_list_rank_similar_sentences_first(client, server):
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply."]
    result = client.embeddings.create(model=server.names["embed"], input=texts)
    vectors = np.array([d.embedding for d in sorted(result.data, key=lambda d: d.index)])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_speech_is_a_wav_that_whisper_understands(client, server):
    audio = client.audio.speech.create(model=server.names["tts"], voice="default", input=SENTENCE,
                                       response_format="wav").content
    with wave.open(io.BytesIO(audio)) as wav:
        rate, frames = wav.getframerate(), wav.getnframes()
        samples = np.frombuffer(wav.readframes(frames), dtype="<i2")
    assert rate == 22050 and 1.5 < frames / rate < 8.0
    assert np.abs(samples).max() > 3000  # not silence
    text = client.audio.transcriptions.create(model=server.names["asr"], file=("speech.wav", audio, "audio/wav")).text
    assert word_error_rate([SENTENCE], [text]) <= 0.25, text


def test_an_llm_route_without_an_llm_is_a_404_naming_the_served_models(client, server):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}])
    assert server.names["embed"] in str(err.value)
