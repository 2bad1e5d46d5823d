"""Numpy quantizers matching the dequantization in ``compile/model/layers.py``.

int4 (q4f16): per row, groups of ``group`` consecutive inputs share one float16 scale
``max|w| / 7``; each weight becomes ``round(w / scale) + 7`` in [0, 14], and eight such nibbles
fill a uint32, element ``k`` at bits ``4*(k % 8)``.
"""

from __future__ import annotations

import numpy as np

Q4_PER_WORD = 8
Q4_MAX = 7


def quantize_q4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float → packed (rows, cols/8) uint32 and (rows, cols/group) float16 scales."""
    rows, cols = w.shape
    if cols % group or group % Q4_PER_WORD:
        raise ValueError(f"cannot quantize a row of {cols} values in groups of {group}")
    grouped = w.astype(np.float32).reshape(rows, cols // group, group)
    scale = (np.abs(grouped).max(axis=2) / Q4_MAX).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.clip(np.rint(grouped / safe[:, :, None]) + Q4_MAX, 0, 2 * Q4_MAX).astype(np.uint32)
    q = q.reshape(rows, cols // Q4_PER_WORD, Q4_PER_WORD)
    packed = np.zeros((rows, cols // Q4_PER_WORD), dtype=np.uint32)
    for i in range(Q4_PER_WORD):
        packed |= q[:, :, i] << np.uint32(4 * i)
    return packed, scale


def dequantize_q4(packed: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """Inverse of ``quantize_q4`` (float32), for references and tests."""
    rows, words = packed.shape
    nibbles = np.stack([(packed >> np.uint32(4 * i)) & np.uint32(15) for i in range(Q4_PER_WORD)], axis=-1)
    values = nibbles.reshape(rows, words * Q4_PER_WORD).astype(np.float32) - Q4_MAX
    return values * np.repeat(scale.astype(np.float32), group, axis=1)
