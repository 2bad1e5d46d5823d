"""CUDA schedule for the linear layers: GEMV kernels for few rows, tensor-core GEMM for many.

A linear layer's row count is symbolic: the batch in ``batch_decode`` (1..max_num_seqs), the chunk
length in ``batch_prefill``. dlight's ``Matmul`` rule alone gives one tiled (tensor-core) kernel
for every row count, which at 1..8 rows wastes most of each tile and leaves the weight read, the
real cost of decoding, far from the memory bandwidth. This pass gives every such PrimFunc several
bodies chosen at run time by the row count: dlight's ``LowBatchGEMV`` with a row bucket of 1, 4
and 8 (each thread block reads a weight tile once for all rows of the bucket), and the ``Matmul``
schedule above 8 rows. The branch condition is thread-invariant, so the kernels stay uniform.
Functions that are not a GEMV/GEMM over exactly one symbolic extent are left to the default rules,
but for the int4 expert gathers of routed-expert models, which take ``ExpertGEMV``
(``compile/schedules/cuda_experts.py``) at every row count.

NO_TENSOR_CORES: every PrimFunc is marked ``dlight.do_not_tensorize``. dlight's tensor-core GEMM
(``MatmulTensorization``) segfaults inside ``s_tir::Tensorize`` in TVM 0.27 (a plain fp16 matmul
reproduces it), and dlight attempts it for any plain ``sm_NN`` target such as the default sm_80
build. GEMMs therefore run on CUDA cores: the main limit on prefill speed (bench/results/README.md).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.ir.module import IRModule
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func

from compile.schedules.cuda_experts import ExpertGEMV

ROW_BUCKETS = (1, 4, 8)


def _schedule_with(func: tirx.PrimFunc, rule) -> tirx.PrimFunc | None:
    mod = dl.ApplyDefaultSchedule(rule)(IRModule({"main": func}))
    scheduled = mod["main"]
    return scheduled if "tirx.is_scheduled" in scheduled.attrs else None


def _symbolic_extent(func: tirx.PrimFunc) -> tirx.Var | None:
    """The one symbolic loop extent of the function's single reduction block, if so."""
    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if blocks is None:
        return None
    reductions = [b for b in blocks if b.is_reduction()]
    if len(reductions) != 1:
        return None
    found = {it.dom for it in reductions[0].iters if isinstance(it.dom, tirx.Var)}
    symbolic = [it for it in reductions[0].iters if not isinstance(it.dom, int)]
    return found.pop() if len(found) == 1 and len(symbolic) == 1 else None


@tvm.transform.module_pass(opt_level=0, name="FerrumRowDispatch")
class RowDispatch:
    """Give symbolic-row linear PrimFuncs a GEMV body per small row bucket and a GEMM body otherwise."""

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or "tirx.is_scheduled" in func.attrs:
                continue
            func = func.with_attr("dlight.do_not_tensorize", True)  # see NO_TENSOR_CORES
            mod.update_func(gvar, func)
            experts = _schedule_with(func, ExpertGEMV())
            if experts is not None:
                mod.update_func(gvar, experts)
                continue
            rows = _symbolic_extent(func)
            if rows is None:
                continue
            small = [_schedule_with(func, dl.gpu.LowBatchGEMV(b)) for b in ROW_BUCKETS]
            large = _schedule_with(func, dl.gpu.Matmul())
            if large is None or any(s is None for s in small):
                continue
            body = large.body
            for bucket, scheduled in reversed(list(zip(ROW_BUCKETS, small))):
                body = tirx.IfThenElse(tirx.op.tvm_thread_invariant(rows <= bucket), scheduled.body, body)
            body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
            new = func.with_body(body).with_attr("tirx.is_scheduled", True)
            mod.update_func(gvar, new.with_attr("tirx.HoistIfThenElseExprWithBlock", 1))
        return mod
