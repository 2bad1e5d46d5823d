"""Sliding-window attention (Mistral 7B v0.1, Phi-3-mini-4k, Gemma 2/3 local layers) through
TVM's paged KV cache, whose kernels in TVM 0.27 mask a window only for ``mha_sliding`` cache
layers; a cache with such layers stops its first prefill on llvm (``Check failed: data_ !=
nullptr`` in ``Tensor::CreateView``), and its ragged self-attention of a prompt chunk masks no
window at all.

Ferrum keeps every layer an ordinary ``mha`` layer, all tokens in the cache, and masks instead:
a query at position ``p`` sees a key at position ``j`` only when ``p - j < window``, as
transformers' sliding-window masks do. Which layers are windowed is known only to the network,
and the one per-layer value the cache passes to its kernels is the softmax scale, so a windowed
layer calls attention with ``-sm_scale`` (``windowed_scale``). The kernels are rewritten to use
``|sm_scale|`` and, where it is negative, to AND the window into each causal mask. Positions are
the cache's own: ``q_rope_position`` (every query's absolute position) and ``k_rope_pos_offset``
(the absolute position of the first key of the pages or chunk the kernel reads, per prefix
depth), which every attention kernel takes whatever the RoPE mode. So a prefix-cache hit, a
chunked prefill and a decode step mask alike.

TVM's kernels are rewritten in TVMScript text like ``softcap.py``'s, at statements matched
exactly per kernel family; a kernel Ferrum must rewrite whose text has no such statement (TVM
changed) fails the build by name. The kernels rewritten are those a chain of sequences uses:
ragged self-attention, paged prefill and paged decode (CUDA), ragged and paged prefill (CPU; the
CPU decode kernel is Ferrum's, ``cpu_attention.py``, built with the window). TVM's
``mha_sliding`` and token-tree kernels, which this cache never calls (no ``mha_sliding``
layers, no speculative trees), are left alone.
"""

from __future__ import annotations

import re

import tvm
from tvm.ir import IRModule

from compile.model.softcap import attention_kernels
from ferrum.errors import FerrumError

# the kernels (global symbols) a cache of chained sequences calls: each must mask the window
WINDOWED_KERNELS = (
    "batch_prefill_ragged_kv",  # ragged self-attention of the new tokens (CPU and GPU)
    "batch_prefill_paged_kv_cpu", "batch_prefill_paged_kv",  # prefill over cached pages
    "batch_decode_paged_kv_cpu", "batch_decode_paged_kv",  # decode over cached pages
)
# TVM's causal mask of a prefill kernel, ``_causal_mask(causal, row, col, kv_len, qo_len)``
PREFILL_MASK = re.compile(
    r"T\.if_then_else\(causal > 0, (?P<col>[^<,]+?) < (?P<kv>[^,]+?) - \(q_indptr\[(?P<b>\w+) \+ 1\] - "
    r"q_indptr\[(?P=b)\]\) \+ (?P<row>\w+) \+ 1, (?P=col) < (?P=kv)\)"
)
# TVM's CUDA decode: a key's score is kept when its index is inside the pages' length
DECODE_MASK = re.compile(r"^(?P<indent>\s*)if (?P<col>.+) < kv_chunk_len\[0\]:$")
DECODE_SCORE = re.compile(r"^\s*S_local\[j\] = T\.float32\(-50000\.0\)$")
DECODE_BATCH = re.compile(r"q_rope_position\[(\w+)\]")
# TVM's CPU paged prefill: a masked key leaves the running maximum unset (a causal mask never
# masks a row's first key, a window does) and rescales the output by an index past its one-element buffer
CPU_MASKED = re.compile(r"^(?P<indent>\s*)S_val\[0\] = T\.float32\(-50000\.0\)$")
CPU_RESCALE = "O_local[d_idx] * scale_O[d_idx]"


def windowed_scale(sm_scale: float, windowed: bool) -> float:
    """The softmax scale a layer hands the cache: negative marks a windowed layer."""
    return -sm_scale if windowed else sm_scale


def _in_window(q_pos: str, k_base: str, col: str, window: int) -> str:
    return f"(sm_scale >= T.float32(0.0) or {q_pos} - {k_base} - ({col}) < {window})"


def window_kernel(func: tvm.tirx.PrimFunc, window: int, name: str) -> tvm.tirx.PrimFunc:
    """``func`` scaling by ``|sm_scale|`` and masking keys ``window`` or more positions behind
    their query when ``sm_scale`` is negative."""
    lines = func.script().splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("def "))
    body = [re.sub(r"\bsm_scale\b", "T.fabs(sm_scale)", line) for line in lines[head + 1:]]
    found = 0

    def prefill(m: re.Match) -> str:
        nonlocal found
        found += 1
        b, row = m["b"], m["row"]
        cond = _in_window(f"q_rope_position[q_indptr[{b}] + {row}]", f"k_rope_pos_offset[{b}]", m["col"], window)
        return f"({m[0]} and {cond})"

    body = [PREFILL_MASK.sub(prefill, line) for line in body]
    if found and any("new_m[0] = T.max(m_val[0], S_val[0])" in line for line in body):
        body = [line.replace(CPU_RESCALE, "O_local[d_idx] * scale_O[0]") for line in body]
        for i in reversed(range(1, len(body))):
            m = CPU_MASKED.match(body[i])
            if m and body[i - 1].strip() == "else:":
                body.insert(i + 1, f"{m['indent']}new_m[0] = m_val[0]")
    if not found:  # CUDA decode: one query per sequence, indexed by the batch variable
        batch = DECODE_BATCH.search("\n".join(body))
        for i in range(1, len(body)):
            m = DECODE_MASK.match(body[i])
            if m and batch and DECODE_SCORE.match(body[i - 1]):
                b = batch.group(1)
                cond = _in_window(f"q_rope_position[{b}]", f"k_rope_pos_offset[{b}]", m["col"], window)
                body[i] = f"{m['indent']}if {m['col']} < kv_chunk_len[0] and {cond}:"
                found += 1
    if not found:
        raise FerrumError(f"sliding-window attention: TVM's attention kernel {name} has no causal mask Ferrum "
                          "knows (the kernels changed); refusing to build it without the window")
    return tvm.script.from_source("\n".join(lines[:head + 1] + body))


def install_sliding_window(mod: IRModule, window: int, windowed: set[str]) -> IRModule:
    """``mod`` with the paged KV caches' kernels masking ``window`` for layers that pass a negative
    scale; ``windowed`` names kernels built with the window already (Ferrum's CPU decode)."""
    kernels = [g for g in attention_kernels(mod) if g.name_hint in WINDOWED_KERNELS]
    if not kernels:
        raise FerrumError("sliding-window attention: the module's paged KV cache has none of TVM's kernels "
                          f"{', '.join(WINDOWED_KERNELS)}")
    mod = mod.clone()
    for gvar in kernels:
        if gvar.name_hint not in windowed:
            mod[gvar] = window_kernel(mod[gvar], window, gvar.name_hint)
    return mod
