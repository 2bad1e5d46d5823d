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


def test_parameters_over_the_binding_limit_are_cut_into_row_shards_that_fit():
    """No compile: the network's oversized parameters are replaced by shards under the limit, and
    ``reshard`` cuts converted weights into exactly those parameters, rows in order."""
    import numpy as np

    from compile.builders.decoder import build_network
    from compile.reshard import reshard
    from ferrum.model_config import LlamaConfig
    from ferrum.quantization import get_quantization

    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=1e4, context_length=256,
                      tie_word_embeddings=False)
    quant = get_quantization("q4f32", gpu=True)
    whole = dict(build_network(cfg, quant, resolve_target("vulkan"))[0].named_parameters())
    net, layout = build_network(cfg, quant, resolve_target("vulkan", binding_limit=4096))
    split = dict(net.named_parameters())
    size = {n: int(np.prod([int(d) for d in p.shape])) * np.dtype(str(p.dtype)).itemsize for n, p in split.items()}
    assert max(size.values()) <= 4096 < 320 * 64 * 4
    assert [f"embed_tokens.shards.{i}.weight" for i in range(20)] == [n for n in split if n.startswith("embed_tokens")]
    gate_up = [n for n in split if ".gate_up_proj." in n]
    assert gate_up == [f"layers.0.mlp.gate_up_proj.parts.{i}.{w}" for i in range(2) for w in ("q_weight", "q_scale", "q_min")]
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal([int(d) for d in p.shape]).astype(np.float32) for n, p in whole.items()}
    cut = dict(reshard(iter(arrays.items()), list(split), layout))
    assert list(cut) == list(split)
    assert all(cut[n].shape == tuple(int(d) for d in p.shape) for n, p in split.items())
    for name in ("embed_tokens.weight", "lm_head.weight", "layers.0.mlp.gate_up_proj.q_min"):
        prefix, leaf = name.rsplit(".", 1)
        parts = [cut[n] for n in split if n.startswith(prefix + ".") and n.endswith("." + leaf)]
        assert len(parts) > 1 and np.array_equal(np.concatenate(parts), arrays[name])
    with pytest.raises(InvalidRequestError, match="applies to the vulkan target only"):
        resolve_target("llvm", binding_limit=4096)


def test_max_binding_takes_binary_units():
    import argparse

    from ferrum.cli import byte_size

    assert [byte_size(t) for t in ("65536", "64K", "128m", "2G")] == [65536, 65536, 128 << 20, 2 << 30]
    for bad in ("", "0", "12Q", "1.5G", "M"):
        with pytest.raises(argparse.ArgumentTypeError):
            byte_size(bad)
