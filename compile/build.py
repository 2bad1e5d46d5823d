"""Lower an ``nn.Module`` to a TVM library for the target, with device code built ahead of time.

The Relax pipeline is TVM's per-target default (for CUDA it applies dlight's default GPU
schedules and ``RewriteCUDAGraph``); for CPUs we add our linear-layer schedule and dlight's CPU
reduction rule so the kernels that take the time are vectorized and parallel, not naive loops.

TVM 0.27 stores CUDA kernels in the exported library as source and compiles them when the library
is loaded, through the ``tvm_callback_cuda_compile`` hook (NVRTC by default). A serving box has no
compiler, so here every CUDA module's source is compiled with nvcc into a fatbin for each
requested architecture and stored keyed by the source's sha256; the runtime answers the hook with
those bytes (``runtime/tvm_env.py``).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.frontend import nn

from compile.kernels.build import find_nvcc
from compile.schedules.cpu import CPULinear
from compile.schedules.cuda import RowDispatch
from compile.targets import BuildTarget
from ferrum.errors import FerrumError


def _attach_graph_bounds(bounds: dict[str, dict[str, int]]) -> tvm.transform.Pass:
    """Upper bounds of symbolic sizes per function, captured into CUDA graphs keyed by them.

    ``StaticPlanBlockMemory`` then plans those functions' memory at the bound, so every buffer has
    a fixed address and ``RewriteCUDAGraph`` can capture the kernels between the attention calls
    (one graph per value of the variables, captured on first use)."""

    @tvm.transform.module_pass(opt_level=0, name="FerrumGraphBounds")
    def attach(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and gvar.name_hint in bounds:
                vars_ = bounds[gvar.name_hint]
                func = func.with_attr("tir_var_upper_bound", vars_)
                func = func.with_attr("relax.rewrite_cuda_graph.capture_symbolic_vars", list(vars_))
                mod[gvar] = func
        return mod

    return attach


def _pipeline(target: tvm.target.Target, graph_bounds: dict[str, dict[str, int]] | None = None) -> tvm.transform.Pass:
    import importlib

    from tvm.s_tir import dlight as dl

    # The backend packages do not re-export every stage; their ``pipeline`` modules have them all.
    backend = "cuda" if target.kind.name == "cuda" else "cpu_generic"
    stages = importlib.import_module(f"tvm.relax.backend.{backend}.pipeline")
    passes = stages.library_dispatch_passes(target) + stages.legalize_passes(target)
    if target.kind.name == "llvm":
        passes.append(dl.ApplyDefaultSchedule(CPULinear(), dl.cpu.Reduction()))
    else:  # before dlight's default schedules, which skip what is already scheduled
        passes.insert(len(passes) - 1, RowDispatch())
    passes += stages.dataflow_lower_passes(target) + stages.finalize_passes(target)
    if graph_bounds:
        passes.insert(0, _attach_graph_bounds(graph_bounds))

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def export_module(model: nn.Module) -> tuple[tvm.ir.IRModule, list[str]]:
    """Relax IRModule of the model's exported functions, and its parameter names in call order.

    External kernel objects the model calls (``nn.ObjectModule``) are attached to the module, so
    ``tvm.compile`` links them into the library."""
    mod, named_params, extern = model.export_tvm(spec=model.get_default_spec(), allow_extern=True)
    if extern:
        mod = relax.transform.AttachExternModules(extern)(mod)
    return mod, [name for name, _ in named_params]


def _linker(extra: list[str]) -> Callable:
    """``export_library``'s compile function with ``extra`` inputs after the objects (static
    archives must follow the objects that use them)."""
    from tvm.support import cc

    def fcompile(output: str, objects: list[str], options: list[str] | None = None, **kwargs) -> None:
        cc.create_shared(output, [*objects, *extra], options, **kwargs)

    fcompile.output_format = "so"
    return fcompile


def compile_library(
    mod: tvm.ir.IRModule,
    target: BuildTarget,
    library_path: Path,
    graph_bounds: dict[str, dict[str, int]] | None = None,
    link_extra: list[str] | None = None,
) -> relax.VMExecutable:
    """``graph_bounds`` (CUDA): functions whose kernels run as CUDA graphs, with the upper bound of
    each symbolic size they are captured by. ``link_extra``: more inputs for linking model.so."""
    config = {"relax.backend.use_cuda_graph": bool(graph_bounds)}
    with tvm.transform.PassContext(config=config):
        executable = tvm.compile(mod, target=target.tvm_target,
                                 relax_pipeline=_pipeline(target.tvm_target, graph_bounds))
    executable.export_library(str(library_path), fcompile=_linker(link_extra) if link_extra else None)
    return executable


def _cuda_sources(executable: relax.VMExecutable) -> list[str]:
    def walk(module):
        yield module
        for child in module.imports:
            yield from walk(child)

    return [m.inspect_source() for m in walk(executable.mod) if m.kind == "cuda"]


def build_fatbins(
    executable: relax.VMExecutable,
    archs: tuple[str, ...],
    kernels_dir: Path,
    progress: Callable[[str], None] = print,
) -> dict[str, str]:
    """nvcc every CUDA module into ``kernels_dir/<sha256>.fatbin``; map source hash → file name."""
    nvcc = find_nvcc()
    kernels_dir.mkdir(parents=True, exist_ok=True)
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    kernels = {}
    for source in _cuda_sources(executable):
        digest = hashlib.sha256(source.encode()).hexdigest()
        out = kernels_dir / f"{digest}.fatbin"
        progress(f"nvcc: {source.count('__global__')} kernels for {', '.join(archs)}")
        with tempfile.TemporaryDirectory() as tmp:
            cu = Path(tmp) / "kernels.cu"
            cu.write_text(source)
            run = subprocess.run(
                [nvcc, "--fatbin", "-O3", "-std=c++17", *gencode, "-o", str(out), str(cu)],
                capture_output=True, text=True,
            )
        if run.returncode != 0:
            raise FerrumError(f"nvcc failed compiling CUDA kernels:\n{run.stderr[-4000:]}")
        kernels[digest] = f"kernels/{out.name}"
    return kernels
