"""CUDA schedule for the int4 expert gathers of routed-expert models (``compile/model/qwen3_moe.py``).

A gather ``y[t, j, o] = sum_k x[t, k] * W[e(t, j) * rows + o, k]``, its int4 words dequantized
inside the product, reads one row of the selected expert per output. dlight's GEMV rules do not
take it (the row index goes through ``experts[t, j]``), and its generic ``Reduction`` rule gives
one 256-thread block per output, each thread pulling one nibble out of a word that seven
neighbours load too. This schedule is a GEMV over the gathered rows instead: ``ROWS_PER_BLOCK``
rows per block, one warp per row; each lane reads whole 32-bit words (8 inputs), consecutive
lanes consecutive words, so a warp reads 128 contiguous bytes of a row per step; lanes
accumulate in float32 registers and a warp shuffle reduction finishes each row. It takes every
token count: each (token, expert) pair still reads its expert's rows on its own, which a grouped
GEMM (tokens sorted by expert) would share at large batches.

Measured on the H200 (bench/results/h200_qwen3-30b-a3b-q4f16*.json, Qwen3-30B-A3B shape q4f16):
151/426/690 tok/s at batch 1/8/64 and prefill 2048 in 2.53 s, against 134/289/391 and 4.55 s on
the generic rule. Float16 gathers keep the generic rule: there this schedule measured slower
(137/320/433 tok/s, 4.15 s, against 146/341/469 and 3.64 s), so it only takes uint32 weights.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from compile.model.layers import EXPERT_BLOCK, Q4_PER_WORD

LANES = 32  # one warp per gathered row (fewer lanes when a row has fewer words: tiny test models)
ROWS_PER_BLOCK = 4


class ExpertGEMV(ScheduleRule):
    """Schedule the PrimFuncs holding an int4 ``EXPERT_BLOCK`` on CUDA (see the module docstring)."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "cuda"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            block = sch.get_sblock(EXPERT_BLOCK)
        except (ValueError, s_tir.ScheduleError):
            return None
        if not any(str(region.source.dtype) == "uint32" for region in sch.get(block).reads):
            return None  # float weights: the generic rule measured faster (module docstring)
        epilogue = _fold_elementwise(sch, block)
        if epilogue is None:
            return None
        t, j, o, k = sch.get_loops(block)
        n_in, rows = int(sch.get(k).extent), int(sch.get(o).extent)
        lanes, per_block = LANES, ROWS_PER_BLOCK
        while (n_in // Q4_PER_WORD) % lanes:
            lanes //= 2
        while rows % per_block:
            per_block //= 2
        k_outer, lane, word = sch.split(k, [None, lanes, Q4_PER_WORD])
        sch.reorder(t, j, o, lane, k_outer, word)
        partial = sch.rfactor(lane, 0)  # one float32 partial sum per lane, in registers
        t, j, o, lane, k_outer, word = sch.get_loops(partial)
        o_block, o_thread = sch.split(o, [None, per_block])
        sch.bind(sch.fuse(t, j, o_block), "blockIdx.x")
        sch.bind(o_thread, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.unroll(word)
        sch.set_scope(partial, 0, "local")
        sch.reverse_compute_at(block, o_thread, preserve_unit_loops=False)
        sch.bind(sch.get_loops(block)[-1], "threadIdx.x")  # the lanes' sum: a warp reduction, broadcast to every lane
        sch.set_scope(block, 0, "local")
        for tail in epilogue:  # every lane holds the sum and stores the same value (one transaction per warp)
            sch.reverse_compute_at(tail, o_thread, preserve_unit_loops=False)
        return sch


def _fold_elementwise(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[s_tir.SBlockRV] | None:
    """Inline every elementwise block of a fused function into its consumers, and the blocks after
    the gather's cast into that cast (e.g. the routing weight's multiply); return the epilogue
    left after the gather (at most one block), or None if other blocks remain (the generic rules
    then take the function)."""
    name = sch.get(block).name_hint
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(other).name_hint != name:
            try:
                sch.compute_inline(other)
            except s_tir.ScheduleError:
                pass
    consumers = sch.get_consumers(block)
    if len(consumers) > 1:
        return None
    while consumers:
        after = sch.get_consumers(consumers[0])
        if not after:
            break
        try:
            sch.reverse_compute_inline(after[0])
        except s_tir.ScheduleError:
            return None
    if len(sch.get_child_blocks(sch.get_sblock("root"))) != 1 + len(consumers):
        return None
    return consumers
