"""Numpy quantizers matching the dequantization in ``compile/model/layers.py``.

int4 (q4f16), asymmetric: per row, groups of ``group`` consecutive inputs share a float16 scale
``(max - min) / 15`` and a float16 minimum; each weight becomes ``round((w - min) / scale)`` in
[0, 15] and is restored as ``q * scale + min``. Eight nibbles fill a uint32, element ``k`` at bits
``4*(k % 8)``. Min/scale (rather than a symmetric scale around zero) reproduces GGUF ``Q4_1``
blocks of 32 exactly, so a Q4_1 model re-quantized for q4f16 keeps its weights.

int8 (the q4f32 LM head), symmetric: groups of ``group`` inputs share a float16 scale
``max|w| / 127``; each weight becomes ``round(w / scale)`` in [-127, 127]. That is GGUF ``Q8_0``:
re-quantizing a dequantized Q8_0 block gives back its scale and integers exactly.

Row interleaving (q4f32, for the CPU): ``interleave_rows`` turns each (rows, n) array into
(rows / L, n, L), so element ``[b, c, l]`` is row ``b*L + l``, column ``c``. The CPU GEMV then
vectorizes over L output rows: one contiguous load gives the same packed word (eight inputs) of L
rows, every lane shifts by the same amount, and no horizontal sum is needed.
"""

from __future__ import annotations

import numpy as np

Q4_PER_WORD = 8
Q4_LEVELS = 15


def quantize_q4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols) float → packed (rows, cols/8) uint32, (rows, cols/group) float16 scales and minimums."""
    rows, cols = w.shape
    if cols % group or group % Q4_PER_WORD:
        raise ValueError(f"cannot quantize a row of {cols} values in groups of {group}")
    grouped = w.astype(np.float32).reshape(rows, cols // group, group)
    low = grouped.min(axis=2).astype(np.float16)
    scale = ((grouped.max(axis=2) - low.astype(np.float32)) / Q4_LEVELS).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.rint((grouped - low.astype(np.float32)[:, :, None]) / safe[:, :, None])
    q = np.clip(q, 0, Q4_LEVELS).astype(np.uint32).reshape(rows, cols // Q4_PER_WORD, Q4_PER_WORD)
    packed = np.zeros((rows, cols // Q4_PER_WORD), dtype=np.uint32)
    for i in range(Q4_PER_WORD):
        packed |= q[:, :, i] << np.uint32(4 * i)
    return packed, scale, low


def dequantize_q4(packed: np.ndarray, scale: np.ndarray, low: np.ndarray, group: int) -> np.ndarray:
    """Inverse of ``quantize_q4`` (float32), for references and tests."""
    rows, words = packed.shape
    nibbles = np.stack([(packed >> np.uint32(4 * i)) & np.uint32(15) for i in range(Q4_PER_WORD)], axis=-1)
    values = nibbles.reshape(rows, words * Q4_PER_WORD).astype(np.float32)
    return values * np.repeat(scale.astype(np.float32), group, axis=1) + np.repeat(low.astype(np.float32), group, axis=1)


Q8_LEVELS = 127


def quantize_q8(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float → (rows, cols) int8 and (rows, cols/group) float16 scales."""
    rows, cols = w.shape
    if cols % group:
        raise ValueError(f"cannot quantize a row of {cols} values in groups of {group}")
    grouped = w.astype(np.float32).reshape(rows, cols // group, group)
    scale = (np.abs(grouped).max(axis=2) / Q8_LEVELS).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.clip(np.rint(grouped / safe[:, :, None]), -Q8_LEVELS, Q8_LEVELS).astype(np.int8)
    return q.reshape(rows, cols), scale


def dequantize_q8(q: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """Inverse of ``quantize_q8`` (float32), for references and tests."""
    return q.astype(np.float32) * np.repeat(scale.astype(np.float32), group, axis=1)


def interleave_rows(a: np.ndarray, rows_per_block: int) -> np.ndarray:
    """(rows, n) → (rows / L, n, L) with ``out[b, c, l] = a[b*L + l, c]`` (see the module docstring)."""
    rows, n = a.shape
    if rows % rows_per_block:
        raise ValueError(f"cannot interleave {rows} rows in blocks of {rows_per_block}")
    return np.ascontiguousarray(a.reshape(rows // rows_per_block, rows_per_block, n).transpose(0, 2, 1))


def deinterleave_rows(a: np.ndarray) -> np.ndarray:
    """Inverse of ``interleave_rows``."""
    blocks, n, per = a.shape
    return np.ascontiguousarray(a.transpose(0, 2, 1).reshape(blocks * per, n))


Q8_INPUT_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def interleave_q8_rows(q: np.ndarray, rows_per_block: int) -> np.ndarray:
    """(rows, n) int8 → (rows / L, n / 4, L * 4), see the module docstring."""
    rows, n = q.shape
    if rows % rows_per_block or n % Q4_PER_WORD:
        raise ValueError(f"cannot lay out {rows} x {n} int8 rows in blocks of {rows_per_block} x 8")
    permuted = q.reshape(rows, n // 8, 8)[:, :, Q8_INPUT_ORDER].reshape(rows // rows_per_block, rows_per_block, n // 4, 4)
    return np.ascontiguousarray(permuted.transpose(0, 2, 1, 3).reshape(rows // rows_per_block, n // 4, rows_per_block * 4))


def deinterleave_q8_rows(a: np.ndarray) -> np.ndarray:
    """Inverse of ``interleave_q8_rows``."""
    blocks, quads, lanes = a.shape
    per = lanes // 4
    rows = a.reshape(blocks, quads, per, 4).transpose(0, 2, 1, 3).reshape(blocks * per, quads // 2, 8)
    out = np.empty_like(rows)
    out[:, :, Q8_INPUT_ORDER] = rows
    return out.reshape(blocks * per, quads * 4)
