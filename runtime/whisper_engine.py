"""Speech to text with a compiled Whisper artifact (``TranscribeEngine``).

Per 30 s window of log-mel: the encoder runs once (and computes every decoder layer's cross
K/V), the decoder is fed ``<|startoftranscript|>``, whose logits give the language (when not
given; detected on the first window and kept) and the no-speech probability, then
``<|lang|><|transcribe|><|notimestamps|>``, then greedy tokens until ``<|endoftext|>``.
Suppressed at every step: every control and timestamp token (ids above ``<|endoftext|>``) and
Whisper's list of non-speech symbols; at the first step also the blank and ``<|endoftext|>``.

Silence: a window whose no-speech probability (softmax of the ``<|nospeech|>`` logit after
``<|startoftranscript|>``) is above 0.6 contributes no text and is not decoded. Whisper's
threshold, but stricter than Whisper's rule, which also requires the decoded tokens to average a
log-probability below -1: with that extra condition Whisper base still returns "you" for 3 s of
digital silence (no-speech probability 0.93 there, 0.03 on espeak-ng speech). Windows are
decoded independently (no previous-text prompt).

Model calls run on one worker thread, so the event loop stays responsive and TVM is only ever
touched from one thread; requests are served one at a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ferrum.engine import TranscribeEngine
from ferrum.errors import EngineShutdownError, InvalidRequestError
from ferrum.serde import utc_now
from ferrum.types import EngineConfig
from runtime.serial_engine import SerialEngineMixin
from runtime.audio_decode import decode_audio
from runtime.log_mel import mel_windows
from runtime.telemetry import EngineTelemetry
from runtime.whisper_runner import WhisperArtifact, WhisperRunner

NO_SPEECH_THRESHOLD = 0.6


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class WhisperEngine(SerialEngineMixin, TranscribeEngine):
    """InferenceEngine + TranscribeEngine over a Whisper artifact."""

    def __init__(self, config: EngineConfig):
        self._config = config
        self.artifact = WhisperArtifact.open(config.artifact_path)
        self.model_id = config.model_id or self.artifact.manifest.name
        self.runner = WhisperRunner(self.artifact, config.device)
        self.tokenizer = Tokenizer.from_file(str(self.artifact.folder / "tokenizer.json"))
        w = self.artifact.whisper
        self.special = w["special_tokens"]
        self.languages: dict[str, int] = w["languages"]
        self.audio = {k: int(w[k]) for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_frames")}
        vocab = int(self.artifact.model["vocab_size"])
        self._suppress = np.zeros(vocab, bool)
        self._suppress[self.special["eot"] + 1 :] = True
        self._suppress[[t for t in w["suppress_tokens"] if t < vocab]] = True
        self._suppress_begin = self._suppress.copy()
        self._suppress_begin[[t for t in w["suppress_tokens_at_begin"] if t < vocab]] = True
        self.max_new_tokens = self.runner.n_text_ctx // 2
        self.telemetry = EngineTelemetry()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferrum-whisper")
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self._last_error: str | None = None
        self._last_heartbeat = utc_now()

    # -- transcription ----------------------------------------------------------------------
    async def transcribe_file(self, path: str, language: str | None = None) -> str:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidRequestError(f"cannot read audio file {path}: {exc.strerror or exc}", param="file") from None
        return await self.transcribe_bytes(data, language)

    async def transcribe_bytes(self, data: bytes, language: str | None = None) -> str:
        if self._closed:
            raise EngineShutdownError("the engine is shut down")
        if language is not None and language.lower() not in self.languages:
            raise InvalidRequestError(
                f"unknown language {language!r}; use a Whisper language code such as en, de, fr", param="language"
            )
        rid = uuid.uuid4().hex
        self.telemetry.on_arrival(rid)
        status, error, text, tokens = "failed", None, "", 0
        self._waiting += 1
        admitted = False
        try:
            async with self._lock:
                self._waiting -= 1
                self._running += 1
                admitted = True
                self.telemetry.on_admitted(rid)
                loop = asyncio.get_running_loop()
                start = time.perf_counter()
                try:
                    text, tokens = await loop.run_in_executor(
                        self._executor, self._transcribe, data, language and language.lower()
                    )
                finally:
                    self.telemetry.add_phase_time("model_execution", time.perf_counter() - start)
                if tokens:
                    self.telemetry.on_tokens(rid, tokens)
            status = "completed"
            self._last_heartbeat = utc_now()
            return text
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception as exc:
            error = exc
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if admitted:
                self._running -= 1
            else:
                self._waiting -= 1
            self.telemetry.on_finish(rid, status, 0, tokens, len(text), error)

    def _transcribe(self, data: bytes, language: str | None) -> tuple[str, int]:
        """Blocking: decode, window, and transcribe; returns (text, tokens generated)."""
        a = self.audio
        samples = decode_audio(data, a["sample_rate"])
        windows = mel_windows(samples, a["sample_rate"], a["n_fft"], a["hop_length"], a["n_mels"], a["n_frames"])
        pieces, total = [], 0
        for mel in windows:
            tokens, language = self.transcribe_window(mel, language)
            total += len(tokens)
            pieces.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return " ".join(p.strip() for p in pieces if p.strip()), total

    def transcribe_window(self, mel: np.ndarray, language: str | None) -> tuple[list[int], str]:
        """Greedy tokens of one window (empty when judged silent) and the language used."""
        sp = self.special
        state = self.runner.encode(mel)
        logits = self.runner.step(state, [sp["sot"]])
        if float(np.exp(_log_softmax(logits)[sp["no_speech"]])) > NO_SPEECH_THRESHOLD:
            return [], language
        if language is None:
            codes = list(self.languages)
            language = codes[int(np.argmax(logits[[self.languages[c] for c in codes]]))]
        logits = self.runner.step(state, [self.languages[language], sp["transcribe"], sp["no_timestamps"]])
        tokens: list[int] = []
        while len(tokens) < self.max_new_tokens and state.length < self.runner.n_text_ctx:
            logits[self._suppress_begin if not tokens else self._suppress] = -np.inf
            token = int(np.argmax(logits))
            if token == sp["eot"]:
                break
            tokens.append(token)
            if state.length >= self.runner.n_text_ctx:
                break
            logits = self.runner.step(state, [token])
        return tokens, language

    @property
    def device_kind(self) -> str:
        return self.runner.device_kind
