"""CPU schedule for Ferrum's linear layers (dlight's CPU rules have no matmul schedule).

Each linear layer is one PrimFunc whose ``LINEAR_BLOCK`` computes ``y[.., j] = sum_k x[.., k] *
W[j, k]`` (see ``compile/model/layers.py``), possibly fed by a ``dequantize`` block and followed
by epilogue blocks (cast, residual add). The schedule:

- splits k into 16-wide vector lanes and ``rfactor``s them, so the hot loop is a vector FMA of
  16 contiguous x values with 16 contiguous W values (accumulator lanes innermost);
- processes ``ROWS`` rows of W per tile: each loaded x vector feeds 8 accumulators in registers;
- runs tiles of W rows in parallel, and rows of x (tokens) inside a tile, so a tile's slice of W
  stays in cache while every token passes over it;
- inlines dequantization into the product, and computes the lane reduction and epilogue right
  after each tile.

Measured on this 2-core Xeon (AVX-512): ~80 GFLOP/s for (64 x 576) @ (576 x 3072), against
~4 GFLOP/s unscheduled.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from compile.model.layers import LINEAR_BLOCK, LINEAR_INTERLEAVED_BLOCK, Q4_PER_WORD

LANES = 16
ROWS = 8
# Interleaved int4 (q4f32): output rows per vector (the weights' interleave) and vectors per tile;
# several independent accumulators hide the FMA latency of the k loop.
ROW_LANES = 16
ROW_VECTORS = 4


class _LinearRule(ScheduleRule):
    """A rule that schedules the PrimFuncs holding the block named ``block_name`` on LLVM targets."""

    block_name: str

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            block = sch.get_sblock(self.block_name)
        except (ValueError, s_tir.ScheduleError):
            return None
        try:
            self._schedule(sch, block)
        except s_tir.ScheduleError:
            return None
        return sch

    @staticmethod
    def _schedule(sch: s_tir.Schedule, block) -> None:
        raise NotImplementedError


def _inline_dequantize_and_collect_epilogue(sch: s_tir.Schedule, block) -> list:
    """Fold the weight dequantization into the product's loads; return every block downstream of it
    (bias, activation, residual), in order, for the caller to compute at the product's rows."""
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint == "dequantize":
            sch.compute_inline(producer)
    epilogue = []
    frontier = sch.get_consumers(block)
    while frontier:
        epilogue += frontier
        frontier = [c for b in frontier for c in sch.get_consumers(b)]
    return epilogue


class CPULinear(_LinearRule):
    """Schedule PrimFuncs holding a ``LINEAR_BLOCK`` for LLVM targets."""

    block_name = LINEAR_BLOCK

    @staticmethod
    def _schedule(sch: s_tir.Schedule, block) -> None:
        epilogue = _inline_dequantize_and_collect_epilogue(sch, block)

        *lead, j, k = sch.get_loops(block)
        k_outer, lanes = sch.split(k, [None, LANES])
        partial = sch.rfactor(lanes, len(lead) + 1)  # accumulator lanes innermost
        *lead, j, k_outer, lanes = sch.get_loops(partial)
        rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        tile, j_inner = sch.split(j, [None, ROWS])
        sch.reorder(tile, rows, k_outer, j_inner, lanes)
        sch.parallel(tile)
        sch.reverse_compute_at(block, rows)
        for consumer in epilogue:
            sch.reverse_compute_at(consumer, rows)
        sch.set_scope(partial, 0, "local")
        sch.vectorize(lanes)
        sch.unroll(j_inner)
        init = sch.decompose_reduction(partial, k_outer)
        sch.vectorize(sch.get_loops(init)[-1])


class CPULinearInterleaved(_LinearRule):
    """Schedule row-interleaved int4 linear layers (``LINEAR_INTERLEAVED_BLOCK``, q4f32) for LLVM.

    The weights are (out/16, in/8, 16) words, so for one input k the 16 lanes of a vector are 16
    output rows: the hot loop loads 16 contiguous words, shifts every lane by the same amount,
    masks, converts, applies the group's scale and minimum (16 contiguous values) and does one FMA
    with the broadcast x[k]: no horizontal reduction. The eight inputs of one word are unrolled, so
    the shifts are constants (int8 weights, q4f32's LM head, take the same loops; their layout is
    the CPU kernels' VNNI one, so these loads are strided: this schedule is q4f32's fallback where
    Ferrum's CPU kernels do not run, see compile/kernels/cpu_ops.py). Tiles of ``ROW_VECTORS`` x 16 output rows run
    in parallel, the rows of x (tokens) inside a tile, the accumulators in registers.
    """

    block_name = LINEAR_INTERLEAVED_BLOCK

    @staticmethod
    def _schedule(sch: s_tir.Schedule, block) -> None:
        epilogue = _inline_dequantize_and_collect_epilogue(sch, block)

        n_out = int(sch.get(sch.get_loops(block)[-2]).extent)
        vectors = next(v for v in (ROW_VECTORS, 2, 1) if n_out % (v * ROW_LANES) == 0)
        local = sch.cache_write(block, 0, "local")
        *lead, j, k = sch.get_loops(block)
        rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        tile, vec, lanes = sch.split(j, [None, vectors, ROW_LANES])
        k_word, k_nibble = sch.split(k, [None, Q4_PER_WORD])
        sch.reorder(tile, rows, k_word, k_nibble, vec, lanes)
        sch.parallel(tile)
        sch.reverse_compute_at(local, rows)
        for consumer in epilogue:
            sch.reverse_compute_at(consumer, rows)
        sch.vectorize(lanes)
        sch.unroll(vec)
        sch.unroll(k_nibble)
        init = sch.decompose_reduction(block, k_word)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.get_loops(local)[-1])
