"""The Relax pass lists per target, each TVM's default for its backend plus Ferrum's schedules.

TVM's per-target default pipelines apply dlight's default schedules (for CUDA its GPU rules and
``RewriteCUDAGraph``). For CPUs dlight has no matmul schedule, so we add our linear-layer
schedule and dlight's CPU reduction rule: the kernels that take the time are vectorized and
parallel, not naive loops. For CUDA our row-bucket dispatch runs before dlight's default
schedules (which skip what is already scheduled). WebGPU (the vulkan target) takes TVM's generic
GPU pipeline (dlight's matmul, GEMV and reduction rules) with the same row-bucket dispatch: without
it a one-row decode runs dlight's tiled matmul, 7x slower on lavapipe. ``compile/targets.py`` names
which list a target uses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import tvm

from compile.schedules.cpu import CPULinear, CPULinearInterleaved
from compile.schedules.cuda import RowDispatch


def _stages(backend: str) -> ModuleType:
    """TVM's pipeline stages of ``backend``: the backend packages do not re-export every stage;
    their ``pipeline`` modules have them all."""
    return importlib.import_module(f"tvm.relax.backend.{backend}.pipeline")


def cpu_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    from tvm.s_tir import dlight as dl

    stages = _stages("cpu_generic")
    return [
        *stages.library_dispatch_passes(target),
        *stages.legalize_passes(target),
        dl.ApplyDefaultSchedule(CPULinear(), CPULinearInterleaved(), dl.cpu.Reduction()),
        *stages.dataflow_lower_passes(target),
        *stages.finalize_passes(target),
    ]


def cuda_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    stages = _stages("cuda")
    passes = stages.library_dispatch_passes(target) + stages.legalize_passes(target)
    passes.insert(len(passes) - 1, RowDispatch())  # the last legalize pass applies dlight's defaults
    return passes + stages.dataflow_lower_passes(target) + stages.finalize_passes(target)


def webgpu_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    stages = _stages("gpu_generic")
    passes = stages.library_dispatch_passes(target) + stages.legalize_passes(target)
    passes.insert(len(passes) - 1, RowDispatch())  # GEMV bodies for decode-sized row counts, as on CUDA
    return passes + stages.dataflow_lower_passes(target) + stages.finalize_passes(target)
