"""Whisper's log-mel spectrogram in numpy, split into the encoder's 30 s windows.

Same front end as OpenAI Whisper: 16 kHz audio, periodic Hann window of 400 samples (25 ms),
hop 160 (10 ms), centered frames with reflect padding, power spectrum, 80 Slaney mel filters
(librosa's default filterbank: Slaney mel scale, area-normalized triangles), ``log10`` floored
at 1e-10, dynamic range clipped to 8 (log10 units) below the maximum, then ``(x + 4) / 4``.
As Whisper does, 30 s of silence are appended before the spectrogram so the last window is
filled with real (silent) frames, and the clipping maximum is taken over the whole file.
"""

from __future__ import annotations

import functools

import numpy as np

_FRAMES_PER_BLOCK = 3000


def hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    linear = freq / f_sp
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@functools.lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, 0 Hz to Nyquist, Slaney-normalized."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel_spectrogram(samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """(n_mels, frames) normalized log-mel of mono ``samples``; one frame per ``hop`` samples."""
    x = np.asarray(samples, np.float32)
    pad = n_fft // 2
    if len(x) <= pad:
        x = np.concatenate([x, np.zeros(pad + 1 - len(x), np.float32)])
    x = np.pad(x, pad, mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop - 1  # Whisper drops the last (centered past the end) frame
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, n_fft), (x.strides[0] * hop, x.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    filters = mel_filters(sample_rate, n_fft, n_mels)
    log_spec = np.empty((n_mels, n_frames), np.float32)
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):  # bounded memory for long audio
        block = frames[start : start + _FRAMES_PER_BLOCK]
        power = np.abs(np.fft.rfft(block * window, axis=1)) ** 2
        log_spec[:, start : start + len(block)] = np.log10(np.maximum(filters @ power.T.astype(np.float32), 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def mel_windows(samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int, n_frames: int) -> list[np.ndarray]:
    """The log-mel of ``samples`` (30 s of silence appended) cut into ``n_frames``-frame windows
    that cover the audio; each window is (n_mels, n_frames)."""
    chunk = n_frames * hop
    padded = np.concatenate([np.asarray(samples, np.float32), np.zeros(chunk, np.float32)])
    mel = log_mel_spectrogram(padded, sample_rate, n_fft, hop, n_mels)
    audio_frames = max(1, -(-len(samples) // hop))
    windows = []
    for start in range(0, audio_frames, n_frames):
        window = mel[:, start : start + n_frames]
        if window.shape[1] < n_frames:  # rounding at the very end: pad with the silence level
            window = np.pad(window, ((0, 0), (0, n_frames - window.shape[1])), constant_values=window.min())
        windows.append(np.ascontiguousarray(window))
    return windows
