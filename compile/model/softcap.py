"""Attention logit soft-capping (Gemma 2: ``score = cap * tanh(score / cap)``) in TVM's paged-KV
attention kernels, which have no such switch in TVM 0.27 (MLC-LLM's Gemma 2 ignores the cap).

Every attention kernel the cache is created with is rewritten at the one statement where a
query-key score is complete, before masking and softmax: TVM prints the kernel as TVMScript,
that statement's right-hand side ``s`` becomes ``c * tanh(s / c)``, and the script is parsed back
(the round trip is exact: the untouched kernels compare structurally equal). The kernels keep
scores in log2 units (``q.k * sm_scale * log2(e)``), so ``c = cap * log2(e)`` caps the scaled
score at ``cap`` as transformers does. The statements are matched by their exact text, per
kernel family: TVM's CPU kernels scale a finished dot product in place (Ferrum's CPU decode
kernel, ``cpu_attention.py``, which replaces TVM's, is built with the cap and left alone); CUDA prefill kernels copy a finished tile of scores from registers to shared
memory; CUDA decode stores a finished cross-thread sum. A kernel with no such statement (TVM
changed) fails the build by name instead of running uncapped.
"""

from __future__ import annotations

import math
import re

import tvm
from tvm import relax
from tvm.ir import IRModule

from compile.kernels.ops import is_kv_cache_create
from ferrum.errors import FerrumError

# "lhs = rhs" statements whose rhs is a complete (scaled, log2) attention score
SCORE_STATEMENTS = re.compile(
    r"^(?P<indent>\s*)(?P<lhs>"
    r"S_val\[0\](?= = S_val\[0\] \* \(sm_scale \* )"  # TVM CPU prefill (paged) and tree attention
    r"|attention_score\[0\](?= = result\[0\] \* )"  # TVM CPU ragged prefill and tree attention
    r"|S_smem\[i, j\](?= = S_local\[i, j\]$)"  # TVM CUDA prefill kernels: the tile of scores to shared memory
    r"|S_local\[j\](?= = t0\[0\]$)"  # TVM CUDA decode: the cross-thread sum of q.k
    r") = (?P<rhs>.+)$"
)


def soft_cap_kernel(func: tvm.tirx.PrimFunc, cap: float, name: str) -> tvm.tirx.PrimFunc:
    """``func`` with every complete attention score ``s`` replaced by ``c * tanh(s / c)``."""
    c = cap * math.log2(math.e)
    lines, found = func.script().splitlines(), 0
    for i, line in enumerate(lines):
        m = SCORE_STATEMENTS.match(line)
        if m:
            lines[i] = f"{m['indent']}{m['lhs']} = T.float32({c!r}) * T.tanh(({m['rhs']}) * T.float32({1 / c!r}))"
            found += 1
    if not found:
        raise FerrumError(f"attention soft-capping: TVM's attention kernel {name} has no score statement Ferrum "
                          "knows (the kernels changed); refusing to build it uncapped")
    return tvm.script.from_source("\n".join(lines))


def attention_kernels(mod: IRModule) -> list[relax.GlobalVar]:
    """The TIR attention kernels handed to ``mod``'s paged KV caches (the ``("tirx", kernel)`` slots)."""
    found: list[relax.GlobalVar] = []

    def visit(expr: relax.Expr) -> None:
        if is_kv_cache_create(expr):
            for arg in expr.args:
                if isinstance(arg, relax.Tuple) and len(arg.fields) == 2 and getattr(arg.fields[0], "value", None) == "tirx":
                    kernel = arg.fields[1]
                    if not isinstance(kernel, relax.GlobalVar):
                        raise FerrumError(f"attention soft-capping: a cache kernel is not TIR ({kernel}); "
                                          "only TVM's TIR kernels can be capped")
                    if kernel not in found:
                        found.append(kernel)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def install_attention_soft_cap(mod: IRModule, cap: float, capped: set[str]) -> IRModule:
    """``mod`` with every attention kernel of its paged KV caches soft-capped at ``cap``; ``capped``
    names kernels that already cap (Ferrum's own, built with the cap)."""
    kernels = attention_kernels(mod)
    if not kernels:
        raise FerrumError("attention soft-capping: the module creates no paged KV cache with TIR kernels")
    mod = mod.clone()
    for gvar in kernels:
        if gvar.name_hint not in capped:
            mod[gvar] = soft_cap_kernel(mod[gvar], cap, gvar.name_hint)
    return mod
