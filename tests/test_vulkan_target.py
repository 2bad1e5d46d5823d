"""The vulkan target's compile-side pieces that need no Vulkan driver: its row and aliases, and
the adapter requirements read from the WGSL TVM generates."""

from __future__ import annotations

import pytest

from compile.device_code import webgpu_requirements
from compile.targets import TARGETS, get_target_kind, resolve_target
from ferrum.errors import InvalidRequestError, ModelSourceError
from runtime.tvm_env import DEVICE_ALIASES, DEVICES

WGSL = """// Function: add_kernel
enable f16;
@group(0) @binding(0) var<storage, read> A : array<f16>;
@group(0) @binding(1) var<storage, read> B : array<f16>;
@group(0) @binding(2) var<storage, read_write> C : array<f16>;
var<workgroup> red_buf : array<f32, 256>;
var<workgroup> tile : array<f16, 64>;
@compute @workgroup_size(128, 2, 1)
fn add_kernel() {}
// Function: copy_kernel
@group(0) @binding(0) var<storage, read> X : array<f32>;
@group(0) @binding(1) var<storage, read_write> Y : array<f32>;
@compute @workgroup_size(1024, 1, 1)
fn copy_kernel() {}
"""


def test_webgpu_is_another_name_for_the_vulkan_target():
    assert get_target_kind("webgpu") is get_target_kind("vulkan") is TARGETS["vulkan"]
    target = resolve_target("webgpu")
    assert (target.info.kind, target.info.device_type, target.tvm_target.kind.name) == ("vulkan", "webgpu", "webgpu")
    assert target.tvm_target.host.kind.name == "llvm"
    assert DEVICE_ALIASES["vulkan"] in DEVICES
    with pytest.raises(InvalidRequestError, match="ARCH does not apply to the vulkan target"):
        resolve_target("vulkan", "sm_90a")


def test_requirements_are_the_largest_any_kernel_needs():
    needs = webgpu_requirements([WGSL])
    assert needs["features"] == ["shader-f16"]
    assert needs["limits"] == {"max_storage_buffers_per_shader_stage": 3,
                               "max_compute_invocations_per_workgroup": 1024,
                               "max_compute_workgroup_storage_size": 256 * 4 + 64 * 2}
    assert webgpu_requirements([WGSL.split("// Function: copy_kernel")[0].replace("enable f16;", "")])["features"] == []


@pytest.mark.parametrize("model", ["whisper-base", "piper-joe"])
def test_speech_models_are_refused_on_vulkan_by_name(model):
    from compile.compile_model import compile_model

    with pytest.raises(ModelSourceError, match=r"(whisper|piper-vits) models are not supported on vulkan yet"):
        compile_model(model, "vulkan")
