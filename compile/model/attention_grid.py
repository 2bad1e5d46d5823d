"""Launch TVM's paged prefill-attention kernels on a grid that fills the GPU.

TVM 0.27 (``relax.frontend.nn.llm._prefill_kernels``) gives those kernels a fixed grid of 16
thread blocks that loop over the attention tiles; on a 132-SM H100 that leaves most of the chip
idle, and long prompts spend most of their prefill in attention. The kernels are written for any
grid size (each block takes every ``NUM_BLKS``-th tile), so building them with a larger grid
changes only how many tiles run at once. Blocks without a tile exit at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

PREFILL_BLOCKS = 1024  # 132 SMs x ~8 resident blocks of 128 threads on an H100


@contextmanager
def prefill_attention_grid(blocks: int = PREFILL_BLOCKS) -> Iterator[None]:
    """Inside this block, TIR paged-KV caches build their prefill kernels with ``blocks`` blocks."""
    from tvm.relax.frontend.nn.llm import _prefill_kernels

    original = _prefill_kernels._get_prefill_kernel_config

    def config(*args, **kwargs):
        return (blocks, *original(*args, **kwargs)[1:])

    _prefill_kernels._get_prefill_kernel_config = config
    try:
        yield
    finally:
        _prefill_kernels._get_prefill_kernel_config = original
