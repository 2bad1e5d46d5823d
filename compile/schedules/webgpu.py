"""dlight's GEMV parameters for the WebGPU (vulkan) target: those dlight tuned for its Vulkan backend.

dlight's ``GEMV`` and ``LowBatchGEMV`` rules pick their tile parameters by ``target.kind.name``;
``webgpu`` is not among the kinds they know, so they take the generic fallback: one output row per
64-thread workgroup, one element per thread per step. On the H200 through Vulkan that decodes the
Llama-3-8B shape at ~0.64 TB/s of 4.2 (bench/results/README.md). The ``vulkan`` parameters (8-16 output
rows per workgroup, 4-wide reduction vectors, the input vector staged in workgroup memory, no warp
shuffle) use nothing WGSL lacks, so our rules call dlight's with a ``vulkan`` target
that carries the webgpu target's limits: the schedule is target-independent TIR, and the WGSL is
still generated for the webgpu target. Workgroup memory is capped at WebGPU's default limit
(16 KiB) so the kernels need nothing more of an adapter than before; where the vector does not fit,
dlight keeps it in registers.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

WEBGPU_DEFAULT_WORKGROUP_STORAGE = 16384  # WebGPU's maxComputeWorkgroupStorageSize default


def vulkan_parameters_target(target: Target) -> Target:
    """A ``vulkan`` target whose thread and workgroup-memory limits are the WebGPU target's."""
    threads = int(target.attrs["max_num_threads"])
    shared = min(int(target.attrs.get("max_shared_memory_per_block", WEBGPU_DEFAULT_WORKGROUP_STORAGE)),
                 WEBGPU_DEFAULT_WORKGROUP_STORAGE)
    return Target({"kind": "vulkan", "max_num_threads": threads, "max_threads_per_block": threads,
                   "max_shared_memory_per_block": shared, "thread_warp_size": 1})


class WithVulkanParameters(ScheduleRule):
    """Apply ``rule`` as dlight would for a ``vulkan`` target; other targets are passed through."""

    def __init__(self, rule: ScheduleRule) -> None:
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> None | s_tir.Schedule | list[s_tir.Schedule]:
        if target.kind.name == "webgpu":
            target = vulkan_parameters_target(target)
        return self.rule.apply(func, target, tunable)

    def is_target_available(self, target: Target) -> bool:
        return self.rule.is_target_available(target)
