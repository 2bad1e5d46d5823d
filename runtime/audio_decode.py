"""Encoded audio → mono float32 samples at the model's sample rate.

WAV (little-endian ``RIFF``/``WAVE``; PCM 8/16/24/32-bit, IEEE float 32/64,
``WAVE_FORMAT_EXTENSIBLE``) is parsed here, so the common case needs nothing beyond numpy. FLAC,
MP3 and Ogg go through ``soundfile`` (libsndfile, bundled in its wheels). Anything else, or a
truncated/corrupt file, raises ``InvalidRequestError`` saying what is wrong. ``audio_duration``
reads the length from the same headers without decoding, so a server can refuse long audio first.

Resampling is band-limited interpolation: every output sample is a Hann-windowed sinc sum over
the input, with the cutoff at 95 % of the lower Nyquist frequency (anti-aliasing when
downsampling 44.1/48 kHz to 16 kHz).
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

import numpy as np

from ferrum.errors import InvalidRequestError

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_ZERO_CROSSINGS = 16  # sinc lobes on each side of the resampling kernel
_RESAMPLE_CHUNK = 1 << 15  # output samples per vectorized block


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` from an encoded file's bytes."""
    if len(data) < 12:
        raise InvalidRequestError("audio file is empty or too short to be audio", param="file")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        samples, rate = _decode_wav(data)
    else:
        samples, rate = _decode_other(data)
    if samples.size == 0:
        raise InvalidRequestError("audio file holds no samples", param="file")
    if not np.all(np.isfinite(samples)):
        raise InvalidRequestError("audio file holds NaN or infinite samples", param="file")
    return resample(samples, rate, sample_rate)


def audio_duration(data: bytes) -> float:
    """Seconds of audio in an encoded file, from its header (WAV) or libsndfile's file info (FLAC,
    MP3, Ogg), without decoding the samples; an unreadable file raises as ``decode_audio`` would."""
    if len(data) < 12:
        raise InvalidRequestError("audio file is empty or too short to be audio", param="file")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        wav = _wav_header(data)
        return len(wav.body) // wav.block_align / wav.rate
    soundfile = _soundfile()
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _undecodable(exc) from None
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


class _WavHeader(NamedTuple):
    tag: int
    channels: int
    rate: int
    block_align: int
    bits: int
    body: bytes  # the data chunk


def _wav_header(data: bytes) -> _WavHeader:
    """The format and data chunk of a ``RIFF``/``WAVE`` file, checked for consistency."""
    fmt = None
    body = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        start = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or start + size > len(data):
                raise InvalidRequestError("corrupt WAV file: truncated fmt chunk", param="file")
            fmt = data[start : start + size]
        elif chunk_id == b"data":
            body = data[start : min(start + size, len(data))]  # tolerate a size field left at max
            break
        pos = start + size + (size & 1)
    if fmt is None or body is None:
        raise InvalidRequestError("corrupt WAV file: fmt or data chunk missing", param="file")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the SubFormat GUID
    if channels < 1 or rate < 1 or bits < 1 or block_align != channels * ((bits + 7) // 8):
        raise InvalidRequestError(
            f"corrupt WAV header: {channels} channels, {rate} Hz, {bits} bits, block {block_align}", param="file"
        )
    return _WavHeader(tag, channels, rate, block_align, bits, body)


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    tag, channels, rate, block_align, bits, body = _wav_header(data)
    frames = len(body) // block_align
    raw = body[: frames * block_align]
    width = bits // 8
    if tag == _PCM and bits in (8, 16, 24, 32):
        if bits == 8:
            samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif bits == 24:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend
            samples = ints.astype(np.float32) / float(1 << 23)
        else:
            samples = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(1 << (bits - 1))
    elif tag == _FLOAT and bits in (32, 64):
        samples = np.frombuffer(raw, f"<f{width}").astype(np.float32)
    else:
        raise InvalidRequestError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)", param="file")
    return samples.reshape(frames, channels).mean(axis=1), rate


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise InvalidRequestError("only WAV audio can be decoded here (soundfile is not installed)", param="file") from None
    return soundfile


def _undecodable(exc: Exception) -> InvalidRequestError:
    reason = getattr(exc, "error_string", None) or str(exc)
    return InvalidRequestError(f"cannot decode the audio: not a readable WAV, FLAC, MP3 or Ogg file ({reason})",
                               param="file")


def _decode_other(data: bytes) -> tuple[np.ndarray, int]:
    soundfile = _soundfile()
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _undecodable(exc) from None
    return samples.mean(axis=1), int(rate)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of mono float32 ``samples`` from ``rate_in`` to ``rate_out``."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    ratio = rate_in / rate_out  # input samples per output sample
    cutoff = 0.95 * min(1.0, 1.0 / ratio)  # fraction of the input Nyquist frequency
    half = int(np.ceil(_ZERO_CROSSINGS / cutoff))
    n_out = int(np.floor(len(samples) / ratio))
    padded = np.concatenate([np.zeros(half, np.float64), samples.astype(np.float64), np.zeros(half + 1, np.float64)])
    taps = np.arange(-half + 1, half + 1)
    out = np.empty(n_out, np.float32)
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        positions = np.arange(start, min(start + _RESAMPLE_CHUNK, n_out)) * ratio
        base = np.floor(positions).astype(np.int64)
        idx = base[:, None] + taps[None, :]
        dist = positions[:, None] - idx
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(dist / (half + 1), -1.0, 1.0))
        kernel = cutoff * np.sinc(cutoff * dist) * window
        out[start : start + len(positions)] = np.sum(padded[idx + half] * kernel, axis=1)
    return out
