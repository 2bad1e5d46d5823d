"""Lower an ``nn.Module`` to the artifact's library for any target, with its device code built ahead of time.

Every builder goes through ``build_library``: it compiles with the target's Relax pipeline
(``compile/pipelines.py``), exports ``model.so`` into the staging folder and runs the target's
device-code packager (``compile/device_code.py``). What differs between targets is read from the
target's row of ``compile/targets.py``, so adding a target changes no builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.frontend import nn

from compile.targets import BuildTarget

LIBRARY_NAME = "model.so"


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


def _pipeline(target: BuildTarget, graph_bounds: dict[str, dict[str, int]] | None) -> tvm.transform.Pass:
    passes = target.kind.passes(target.tvm_target)
    if graph_bounds:
        passes.insert(0, _attach_graph_bounds(graph_bounds))

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target.tvm_target:
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


@dataclass
class Library:
    """A compiled library in the staging folder and the device code packaged beside it."""

    executable: relax.VMExecutable
    kernels: dict[str, str]  # the manifest's ``kernels``: device-module source sha256 -> file


def build_library(
    mod: tvm.ir.IRModule,
    target: BuildTarget,
    staging: Path,
    progress: Callable[[str], None],
    graph_bounds: dict[str, dict[str, int]] | None = None,
    link_extra: list[str] | None = None,
) -> Library:
    """Compile ``mod`` for ``target`` into ``staging/model.so`` and package its device code.

    ``graph_bounds``: functions whose kernels run as CUDA graphs, with the upper bound of each
    symbolic size they are captured by (only a pipeline with ``RewriteCUDAGraph`` captures them;
    others plan those functions' memory at the bound). ``link_extra``: more inputs for linking
    model.so (static archives of kernels linked in)."""
    config = {"relax.backend.use_cuda_graph": bool(graph_bounds)}
    with tvm.transform.PassContext(config=config):
        executable = tvm.compile(mod, target=target.tvm_target, relax_pipeline=_pipeline(target, graph_bounds))
    executable.export_library(str(staging / LIBRARY_NAME), fcompile=_linker(link_extra) if link_extra else None)
    package = target.kind.package
    return Library(executable, package(executable, target, staging, progress) if package else {})
