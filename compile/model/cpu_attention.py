"""Paged decode attention for CPU builds, in place of TVM 0.27's ``batch_decode_paged_kv_cpu``.

TVM's CPU kernel runs every query head of every sequence serially, one scalar multiply-add at a
time, with an online softmax that rescales the whole output row after every key; profiled on a
SmolLM2 decode step it took about a third of the step. This one keeps its signature and its
paged-cache indexing (TVM's own helpers) and changes the arithmetic's shape:

- query heads run in parallel (TVM's thread pool), each with its own scratch;
- per chunk of ``CHUNK`` keys, scores first: q·k, 16 lanes at a time (vectorized; lane sums at
  the end), then their exponentials and the values weighted by them (vectorized over the head
  dim); the output is rescaled once per chunk, not once per key.

Only ``RopeMode.NORMAL`` caches are taken (keys were rotated when appended; the Llama network
uses no other), so ``rotary_mode`` must be 0: anything else fails an assertion at run time.
"""

from __future__ import annotations

import math

import tvm
from tvm.relax.frontend.nn.llm._kernel_common import _declare_length_info, _get_kv_chunk_len, _get_seq_offset
from tvm.script import tirx as T

TVM_DECODE_KERNEL = "batch_decode_paged_kv_cpu"  # the global symbol of TVM's kernel
LANES = 16
CHUNK = 128  # keys scored at a time (the scores stay on the stack); the softmax is rescaled per chunk


def decode_attention_cpu(num_kv_heads: int, num_qo_heads: int, head_dim: int, dtype: str, page_size: int = 16,
                         soft_cap: float = 0.0, window: int = 0):
    """The PrimFunc (TVM's decode-kernel signature) for one cache configuration; ``soft_cap``:
    scaled scores become ``soft_cap * tanh(score / soft_cap)`` (Gemma 2; see ``softcap.py``);
    ``window``: a layer that passes a negative ``sm_scale`` reads only the keys less than
    ``window`` positions behind its query (``sliding_window.py``), the others are skipped."""
    H_qo, H_kv, D = num_qo_heads, num_kv_heads, head_dim
    group = H_qo // H_kv
    if D % LANES:
        raise ValueError(f"CPU decode attention needs a head dim that is a multiple of {LANES}, not {D}")
    log2e = math.log2(math.e)
    cap = soft_cap * log2e  # the scores are in log2 units

    def capped(score: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        return T.float32(cap) * T.tanh(score * T.float32(1 / cap)) if soft_cap else score

    def first_key(b, n_keys, q_positions, k_offsets, sm_scale) -> tvm.tirx.PrimExpr:
        """Keys before this index are ``window`` or more positions behind the query (windowed layers)."""
        if not window:
            return T.int32(0)
        behind = q_positions[b] - k_offsets[b] - (window - 1)
        return T.if_then_else(sm_scale < T.float32(0), T.min(T.max(behind, 0), n_keys), 0)

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": TVM_DECODE_KERNEL})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, H_qo, D), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, H_kv, page_size, D), dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, H_qo, D), dtype)
        lse = T.match_buffer(lse_handle, (B, H_qo), "float32")
        length_info = _declare_length_info(var_length_info, B, False, length_info_elem_offset)

        assert rotary_mode == 0, "Ferrum's CPU decode attention takes caches with RopeMode.NORMAL only"
        for b in T.serial(B):
            for h in T.parallel(H_qo):
                with T.sblock("attn"):
                    n_keys = T.sblock_alloc_buffer((1,), "int32")
                    first = T.sblock_alloc_buffer((1,), "int32")  # the first key inside the window
                    lanes = T.sblock_alloc_buffer((LANES,), "float32")
                    out = T.sblock_alloc_buffer((D,), "float32")
                    stats = T.sblock_alloc_buffer((4,), "float32")  # max, sum of exponentials, chunk max, rescale
                    begin: T.let[T.int32] = page_table_indptr[b]
                    end: T.let[T.int32] = page_table_indptr[b + 1]
                    n_keys[0] = T.if_then_else(begin != end, _get_kv_chunk_len(end - begin, page_size, b, length_info, False), 0)
                    first[0] = first_key(b, n_keys[0], q_rope_position, k_rope_pos_offset, sm_scale)
                    scores = T.sblock_alloc_buffer((CHUNK,), "float32")
                    stats[0] = T.float32(-5e4)
                    stats[1] = T.float32(0)
                    for d in T.vectorized(D):
                        out[d] = T.float32(0)
                    for chunk in T.serial(T.ceildiv(n_keys[0] - first[0], CHUNK)):
                        stats[2] = stats[0]
                        for i in T.serial(T.min(CHUNK, n_keys[0] - first[0] - chunk * CHUNK)):
                            offset: T.let[T.int32] = _get_seq_offset(first[0] + chunk * CHUNK + i, b, length_info, False)
                            page: T.let[T.int32] = page_table_values[begin + offset // page_size]
                            slot: T.let[T.int32] = offset % page_size
                            for ln in T.vectorized(LANES):
                                lanes[ln] = T.float32(0)
                            for c in T.serial(D // LANES):
                                for ln in T.vectorized(LANES):
                                    lanes[ln] = lanes[ln] + T.Cast("float32", Q[b, h, c * LANES + ln]) * T.Cast(
                                        "float32", pages[page, 0, h // group, slot, c * LANES + ln])
                            scores[i] = T.float32(0)
                            for ln in T.serial(LANES):
                                scores[i] = scores[i] + lanes[ln]
                            scores[i] = capped(scores[i] * T.fabs(sm_scale) * log2e)
                            stats[2] = T.max(stats[2], scores[i])
                        stats[3] = T.exp2(stats[0] - stats[2])  # rescales what earlier chunks summed
                        stats[1] = stats[1] * stats[3]
                        for d in T.vectorized(D):
                            out[d] = out[d] * stats[3]
                        stats[0] = stats[2]
                        for i in T.serial(T.min(CHUNK, n_keys[0] - first[0] - chunk * CHUNK)):
                            offset: T.let[T.int32] = _get_seq_offset(first[0] + chunk * CHUNK + i, b, length_info, False)
                            page: T.let[T.int32] = page_table_values[begin + offset // page_size]
                            slot: T.let[T.int32] = offset % page_size
                            scores[i] = T.exp2(scores[i] - stats[0])
                            stats[1] = stats[1] + scores[i]
                            for d in T.vectorized(D):
                                out[d] = out[d] + scores[i] * T.Cast("float32", pages[page, 1, h // group, slot, d])
                    for d in T.vectorized(D):
                        output[b, h, d] = T.Cast(dtype, out[d] / T.max(stats[1], T.float32(1e-30)))
                    lse[b, h] = stats[0] + T.log2(T.max(stats[1], T.float32(1e-30)))

    return batch_decode_paged_kv


def install_cpu_decode_attention(mod: tvm.ir.IRModule, num_kv_heads: int, num_qo_heads: int, head_dim: int,
                                 dtype: str, soft_cap: float = 0.0, window: int = 0) -> tvm.ir.IRModule:
    """``mod`` with TVM's CPU decode attention replaced by ``decode_attention_cpu`` (same name, same call)."""
    gvars = [g for g in mod.get_global_vars() if g.name_hint == TVM_DECODE_KERNEL]
    if len(gvars) != 1:
        raise RuntimeError(f"expected one {TVM_DECODE_KERNEL} in the module, found {len(gvars)}")
    mod = mod.clone()
    mod[gvars[0]] = decode_attention_cpu(num_kv_heads, num_qo_heads, head_dim, dtype, soft_cap=soft_cap, window=window)
    return mod
