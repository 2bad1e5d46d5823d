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
touched from one thread; requests are served one at a time (``SerialEngine``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from ferrum.engine import TranscribeEngine
from ferrum.errors import InvalidRequestError
from ferrum.types import EngineConfig
from runtime.audio_decode import decode_audio
from runtime.log_mel import mel_windows
from runtime.serial_engine import RequestUsage, SerialEngine
from runtime.whisper_runner import WhisperArtifact, WhisperRunner

NO_SPEECH_THRESHOLD = 0.6


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class Transcript(NamedTuple):
    text: str
    tokens: int  # tokens generated


class WhisperEngine(SerialEngine, TranscribeEngine):
    """InferenceEngine + TranscribeEngine over a Whisper artifact."""

    def __init__(self, config: EngineConfig):
        self.artifact = WhisperArtifact.open(config.artifact_path)
        super().__init__(config, self.artifact, "ferrum-whisper")
        self.runner = WhisperRunner(self.artifact, config.device)
        self.tokenizer = Tokenizer.from_file(str(self.artifact.tokenizer_path))
        self.decoding = d = self.artifact.decoding
        self.special = d.special_tokens
        self.languages = d.languages
        vocab = int(self.artifact.model["vocab_size"])
        self._suppress = np.zeros(vocab, bool)
        self._suppress[self.special.eot + 1 :] = True
        self._suppress[[t for t in d.suppress_tokens if t < vocab]] = True
        self._suppress_begin = self._suppress.copy()
        self._suppress_begin[[t for t in d.suppress_tokens_at_begin if t < vocab]] = True
        self.max_new_tokens = self.runner.n_text_ctx // 2

    # -- transcription ----------------------------------------------------------------------
    async def transcribe_file(self, path: str, language: str | None = None) -> str:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidRequestError(f"cannot read audio file {path}: {exc.strerror or exc}", param="file") from None
        return await self.transcribe_bytes(data, language)

    async def transcribe_bytes(self, data: bytes, language: str | None = None) -> str:
        if language is not None and language.lower() not in self.languages:
            raise InvalidRequestError(
                f"unknown language {language!r}; use a Whisper language code such as en, de, fr", param="language"
            )
        lang = language and language.lower()
        transcript = await self.serve(
            lambda: self._transcribe(data, lang), lambda t: RequestUsage(output_tokens=t.tokens, chars=len(t.text))
        )
        return transcript.text

    def _transcribe(self, data: bytes, language: str | None) -> Transcript:
        """Blocking: decode, window, and transcribe."""
        d = self.decoding
        samples = decode_audio(data, d.sample_rate)
        windows = mel_windows(samples, d.sample_rate, d.n_fft, d.hop_length, d.n_mels, d.n_frames)
        pieces, total = [], 0
        for mel in windows:
            tokens, language = self.transcribe_window(mel, language)
            total += len(tokens)
            pieces.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return Transcript(" ".join(p.strip() for p in pieces if p.strip()), total)

    def transcribe_window(self, mel: np.ndarray, language: str | None) -> tuple[list[int], str]:
        """Greedy tokens of one window (empty when judged silent) and the language used."""
        sp = self.special
        state = self.runner.encode(mel)
        logits = self.runner.step(state, [sp.sot])
        if float(np.exp(_log_softmax(logits)[sp.no_speech])) > NO_SPEECH_THRESHOLD:
            return [], language
        if language is None:
            codes = list(self.languages)
            language = codes[int(np.argmax(logits[[self.languages[c] for c in codes]]))]
        logits = self.runner.step(state, [self.languages[language], sp.transcribe, sp.no_timestamps])
        tokens: list[int] = []
        while len(tokens) < self.max_new_tokens and state.length < self.runner.n_text_ctx:
            logits[self._suppress_begin if not tokens else self._suppress] = -np.inf
            token = int(np.argmax(logits))
            if token == sp.eot:
                break
            tokens.append(token)
            if state.length >= self.runner.n_text_ctx:
                break
            logits = self.runner.step(state, [token])
        return tokens, language
