"""Speech test material: sentences spoken by espeak-ng, WAV writing, and word error rate.

Used by tests/test_transcription.py, tests/test_modalities_served.py and bench/transcribe_bench.py.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models can transcribe speech into text quite accurately.",
    "Please remember to water the plants every morning before you leave.",
    "The children played in the garden until the sun went down.",
    "She opened the window because the room was too warm.",
]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, path: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Synthesize ``text`` into a 22.05 kHz 16-bit mono WAV with espeak-ng."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text], check=True)
    return path


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    """Samples (float in [-1, 1]) and rate of a 16-bit PCM WAV, via the stdlib ``wave``."""
    import wave

    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64) / 32768.0
        return data.reshape(-1, wav.getnchannels()).mean(axis=1), wav.getframerate()


def upsample_by_two(samples: np.ndarray) -> np.ndarray:
    """Exact band-limited 2x upsampling by zero-padding the spectrum (independent of the
    runtime's resampler)."""
    n = len(samples)
    spectrum = np.fft.rfft(samples)
    padded = np.zeros(n + 1, complex)
    padded[: len(spectrum)] = spectrum
    return np.fft.irfft(padded, 2 * n) * 2


def wav_bytes(samples: np.ndarray, rate: int, bits: int = 16, channels: int = 1, float_format: bool = False) -> bytes:
    """A WAV file of ``samples`` (float in [-1, 1], duplicated over ``channels``)."""
    x = np.repeat(np.asarray(samples, np.float64)[:, None], channels, axis=1).reshape(-1)
    if float_format:
        body, tag = x.astype("<f4").tobytes(), 3
    else:
        ints = np.clip(np.round(x * (1 << (bits - 1))), -(1 << (bits - 1)), (1 << (bits - 1)) - 1).astype(np.int64)
        if bits == 8:  # 8-bit WAV is unsigned, offset 128
            body = (ints + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            body = (ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
        else:
            body = ints.astype(f"<i{bits // 8}").tobytes()
        tag = 1
    width = bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * width, channels * width, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) by word-level Levenshtein."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total word errors over total reference words."""
    errors = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        e, n = word_errors(ref, hyp)
        errors, words = errors + e, words + n
    return errors / max(words, 1)
