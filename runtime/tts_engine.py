"""Text to speech with a compiled Piper (VITS) voice: the ``TtsEngine`` behind ``/v1/audio/speech``.

Per sentence: espeak-ng phonemes → ids → ``encode`` (prior and log-durations per phoneme) →
durations rounded up to whole frames → each phoneme's prior repeated over its frames and sampled
with seeded noise → ``decode`` (flow + HiFi-GAN) → float32 PCM. The noise comes from one
generator seeded per request (``EngineConfig.seed``, default 0), so the same text always gives
the same samples. Requests run one at a time on a worker thread (``SerialEngine``); the event
loop stays free.
"""

from __future__ import annotations

import numpy as np
import tvm

from ferrum.engine import TtsEngine
from ferrum.errors import InvalidRequestError, UnsupportedFeatureError
from ferrum.types import EngineConfig
from runtime.artifact import open_artifact, resolve_device
from runtime.phonemizer import EspeakPhonemizer
from runtime.serial_engine import RequestUsage, SerialEngine

MAX_TEXT_CHARS = 4000
MAX_SENTENCE_IDS = 2000  # attention in the text encoder is quadratic in phonemes


class PiperTtsEngine(SerialEngine, TtsEngine):
    """Serves one compiled Piper voice."""

    text_front_end = "phonemizer"
    kv_cache_note = "no KV cache: a sentence is decoded in one call"

    def __init__(self, config: EngineConfig, verify_hashes: bool = True):
        artifact = open_artifact(config.artifact_path, "tts", architecture="piper-vits", verify_hashes=verify_hashes)
        super().__init__(config, artifact, "ferrum-tts")
        self.manifest = artifact.manifest
        self.front_end = artifact.manifest.extra.front_end
        self.phonemizer = EspeakPhonemizer(self.front_end.espeak_voice, self.front_end.phoneme_id_map)
        self.device = resolve_device(artifact.manifest, config.device)
        self._vm = artifact.load_library(self.device)
        self._params = artifact.load_weights(self.device)
        self._encode, self._decode = self._vm["encode"], self._vm["decode"]
        self._channels = int(artifact.manifest.model["hidden"])
        self._seed = 0 if config.seed is None else int(config.seed)

    # -- synthesis ----------------------------------------------------------------------------
    def tts_sample_rate(self) -> int:
        return self.front_end.sample_rate

    def _check_language(self, language: str | None) -> None:
        if language is None:
            return
        voice = self.front_end.espeak_voice.lower()
        wanted = language.lower().replace("_", "-")
        if wanted.split("-")[0] != voice.split("-")[0] or ("-" in wanted and wanted != voice):
            raise UnsupportedFeatureError(
                f"this voice speaks {voice}; language {language!r} is not available", param="language", status=400
            )

    def _tensor(self, array: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.ascontiguousarray(array), self.device)

    def _sentence(self, ids: list[int], rng: np.random.Generator) -> np.ndarray:
        """PCM of one utterance."""
        f = self.front_end
        n = len(ids)
        noise_w = rng.standard_normal((1, 2, n)).astype(np.float32) * np.float32(f.noise_w)
        m, logs, logw = self._encode(self._tensor(np.array([ids], dtype=np.int64)), self._tensor(noise_w), self._params)
        frames = np.ceil(np.exp(logw.numpy()[0, 0]) * f.length_scale).astype(np.int64)
        frames = np.maximum(frames, 0)
        if frames.sum() == 0:
            frames[len(frames) // 2] = 1  # VITS clamps the length to at least one frame
        mean = np.repeat(m.numpy()[0], frames, axis=1)
        log_std = np.repeat(logs.numpy()[0], frames, axis=1)
        noise = rng.standard_normal((self._channels, mean.shape[1])).astype(np.float32)
        z_p = (mean + noise * np.exp(log_std) * np.float32(f.noise_scale))[None].astype(np.float32)
        return self._decode(self._tensor(z_p), self._params).numpy().reshape(-1)

    def _synthesize(self, text: str) -> np.ndarray:
        utterances = self.phonemizer.utterances(text)
        if not utterances:
            raise InvalidRequestError("the text has nothing to speak", param="input")
        for u in utterances:
            if len(u.ids) > MAX_SENTENCE_IDS:
                raise InvalidRequestError(
                    f"a sentence is too long ({len(u.ids)} phoneme ids, at most {MAX_SENTENCE_IDS}); "
                    "split it with punctuation",
                    param="input",
                )
        rng = np.random.default_rng(self._seed)
        return np.concatenate([self._sentence(u.ids, rng) for u in utterances]).astype(np.float32)

    async def synthesize_speech(
        self, text: str, language: str | None = None, chunk_frames: int = 4096
    ) -> list[list[float]]:
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError("input text must be a non-empty string", param="input")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidRequestError(f"input text is longer than {MAX_TEXT_CHARS} characters", param="input")
        if not isinstance(chunk_frames, int) or isinstance(chunk_frames, bool) or chunk_frames < 1:
            raise InvalidRequestError(f"chunk_frames must be a positive integer, got {chunk_frames!r}",
                                      param="chunk_frames")
        self._check_language(language)
        pcm = await self.serve(lambda: self._synthesize(text), lambda _: RequestUsage(chars=len(text)))
        return [pcm[i : i + chunk_frames].tolist() for i in range(0, len(pcm), chunk_frames)]
