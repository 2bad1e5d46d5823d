"""Text to speech with a compiled Piper (VITS) voice: the ``TtsEngine`` behind ``/v1/audio/speech``.

Per sentence: espeak-ng phonemes → ids → ``encode`` (prior and log-durations per phoneme) →
durations rounded up to whole frames → each phoneme's prior repeated over its frames and sampled
with seeded noise → ``decode`` (flow + HiFi-GAN) → float32 PCM. The noise comes from one
generator seeded per request (``EngineConfig.seed``, default 0), so the same text always gives
the same samples. Requests run one at a time on a worker thread; the event loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import tvm

from ferrum.engine import TtsEngine
from ferrum.errors import ArtifactError, EngineShutdownError, InvalidRequestError, UnsupportedFeatureError
from ferrum.manifest import Manifest, verify_files
from ferrum.serde import utc_now
from ferrum.types import EngineConfig, new_request_id
from runtime.vm_loader import load_params, load_vm
from runtime.artifact import check_host, check_tvm_version, resolve_device
from runtime.phonemizer import EspeakPhonemizer
from runtime.serial_engine import SerialEngineMixin
from runtime.telemetry import EngineTelemetry
from runtime.tvm_env import register_kernels

MAX_TEXT_CHARS = 4000
MAX_SENTENCE_IDS = 2000  # attention in the text encoder is quadratic in phonemes
_builtin = tvm.get_global_func


class PiperTtsEngine(SerialEngineMixin, TtsEngine):
    """Serves one compiled Piper voice."""

    text_front_end = "phonemizer"

    def __init__(self, config: EngineConfig, verify_hashes: bool = True):
        self._config = config
        folder = Path(config.artifact_path)
        manifest = Manifest.load(folder)
        if manifest.modality != "tts" or manifest.architecture != "piper-vits":
            raise ArtifactError(f"artifact {manifest.name} is a {manifest.modality} model, not a Piper voice")
        check_tvm_version(manifest)
        check_host(manifest)
        if verify_hashes:
            verify_files(folder, manifest)
        register_kernels(folder, manifest.kernels)
        self.manifest = manifest
        self.model_id = config.model_id or manifest.name
        front = manifest.extra["front_end"]
        self.front_end = front
        self.phonemizer = EspeakPhonemizer(front["espeak_voice"], front["phoneme_id_map"])
        self.device = resolve_device(manifest, config.device)
        self._vm = load_vm(folder / manifest.library, self.device)
        self._params = load_params(folder / "weights", manifest.extra["param_names"], self.device)
        self._encode, self._decode = self._vm["encode"], self._vm["decode"]
        self._channels = int(manifest.model["hidden"])
        self._seed = 0 if config.seed is None else int(config.seed)
        self.telemetry = EngineTelemetry()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferrum-tts")
        self._lock = asyncio.Lock()
        self._closed = False
        self._running = 0
        self._waiting = 0
        self._last_error: str | None = None
        self._last_heartbeat: datetime = utc_now()

    # -- synthesis ----------------------------------------------------------------------------
    def tts_sample_rate(self) -> int:
        return int(self.front_end["sample_rate"])

    def _check_language(self, language: str | None) -> None:
        if language is None:
            return
        voice = self.front_end["espeak_voice"].lower()
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
        noise_w = rng.standard_normal((1, 2, n)).astype(np.float32) * np.float32(f["noise_w"])
        m, logs, logw = self._encode(self._tensor(np.array([ids], dtype=np.int64)), self._tensor(noise_w), self._params)
        frames = np.ceil(np.exp(logw.numpy()[0, 0]) * f["length_scale"]).astype(np.int64)
        frames = np.maximum(frames, 0)
        if frames.sum() == 0:
            frames[len(frames) // 2] = 1  # VITS clamps the length to at least one frame
        mean = np.repeat(m.numpy()[0], frames, axis=1)
        log_std = np.repeat(logs.numpy()[0], frames, axis=1)
        noise = rng.standard_normal((self._channels, mean.shape[1])).astype(np.float32)
        z_p = (mean + noise * np.exp(log_std) * np.float32(f["noise_scale"]))[None].astype(np.float32)
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
        if self._closed:
            raise EngineShutdownError("the engine is shut down")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError("input text must be a non-empty string", param="input")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidRequestError(f"input text is longer than {MAX_TEXT_CHARS} characters", param="input")
        if not isinstance(chunk_frames, int) or isinstance(chunk_frames, bool) or chunk_frames < 1:
            raise InvalidRequestError(f"chunk_frames must be a positive integer, got {chunk_frames!r}",
                                      param="chunk_frames")
        self._check_language(language)
        rid = new_request_id()
        self.telemetry.on_arrival(rid)
        self._waiting += 1
        async with self._lock:
            self._waiting -= 1
            self._running += 1
            self.telemetry.on_admitted(rid)
            start = time.monotonic()
            try:
                pcm = await asyncio.get_running_loop().run_in_executor(self._executor, self._synthesize, text)
            except BaseException as exc:
                self._last_error = str(exc)
                self.telemetry.on_finish(rid, "failed", 0, 0, len(text), error=exc)
                raise
            finally:
                self._running -= 1
                self._last_heartbeat = utc_now()
        self.telemetry.add_phase_time("model_execution", time.monotonic() - start)
        self.telemetry.on_finish(rid, "completed", 0, 0, len(text))
        return [pcm[i : i + chunk_frames].tolist() for i in range(0, len(pcm), chunk_frames)]

    @property
    def device_kind(self) -> str:
        return self.manifest.target.device_type
