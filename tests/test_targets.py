"""The target seam: one table on the compile side (compile/targets.py), one device table on the
runtime side (runtime/tvm_env.py), the manifest's ``target.device_type`` between them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from compile.targets import TARGETS, get_target_kind, resolve_target
from ferrum.errors import ArtifactError, InvalidRequestError
from ferrum.manifest import Manifest, TargetInfo
from ferrum.quantization import QUANTIZATIONS
from runtime.artifact import LlmArtifact, resolve_device
from runtime.tvm_env import DEVICES


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_every_kind_resolves_from_its_row(kind):
    row = TARGETS[kind]
    target = resolve_target(kind, "sm_90a" if kind == "cuda" else None)
    assert target.kind is row and target.tag == kind
    assert (target.info.kind, target.info.device_type) == (kind, row.device_type)
    assert target.tvm_target.kind.name == {"vulkan": "webgpu"}.get(kind, kind)  # vulkan: TVM's WebGPU codegen
    assert row.default_quantization in QUANTIZATIONS
    assert row.device_type in DEVICES  # the runtime has an entry for every device type the compiler writes


def test_unknown_target_names_every_kind():
    with pytest.raises(InvalidRequestError) as err:
        resolve_target("metal")
    assert err.value.param == "target"
    assert all(kind in err.value.message for kind in TARGETS) and "'metal'" in err.value.message
    with pytest.raises(InvalidRequestError, match="unknown target 'tpu'"):
        get_target_kind("tpu")


def test_arch_is_checked_by_the_targets_factory():
    with pytest.raises(InvalidRequestError, match="ARCH applies to GPU targets only"):
        resolve_target("llvm", "sm_90a")
    with pytest.raises(InvalidRequestError, match="unknown CUDA arch 'sm_70'"):
        resolve_target("cuda", "sm_70")
    assert resolve_target("cuda", "sm_89").info.arch == "sm_89"


def test_manifests_without_device_type_get_their_kinds():
    """Artifacts compiled before the manifest recorded the device type keep loading."""
    assert TargetInfo.from_dict({"kind": "llvm", "triple": "x86_64-linux-gnu"}).device_type == "cpu"
    assert TargetInfo.from_dict({"kind": "cuda", "triple": "x86_64-linux-gnu", "arch": "sm_90a"}).device_type == "cuda"
    assert TargetInfo.from_dict({"kind": "vulkan", "triple": "x", "device_type": "vulkan"}).device_type == "vulkan"


def _manifest_with_target(folder, **target) -> Manifest:
    manifest = {
        "name": "probe", "modality": "llm", "architecture": "llama", "model": {}, "quantization": {},
        "target": {"kind": "llvm", "triple": "x86_64-linux-gnu", **target}, "tvm_version": "0.27.0",
        "ferrum_version": "0", "source": {}, "library": "model.so", "functions": [], "files": {},
        "extra": {"param_names": []}, "schema_version": 1,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return Manifest.load(folder)


def test_runtime_refuses_a_device_type_it_has_no_entry_for(tmp_path):
    manifest = _manifest_with_target(tmp_path, kind="metal", device_type="metal")
    with pytest.raises(ArtifactError, match="compiled for metal .metal devices.; this runtime runs on cpu, cuda"):
        resolve_device(manifest)
    assert resolve_device(_manifest_with_target(tmp_path)).dlpack_device_type() == 1  # kDLCPU


@pytest.mark.slow
def test_a_new_target_row_builds_through_every_stage_unchanged(tmp_path, tiny_llama, monkeypatch):
    """A target added as one row (here a CPU target with its own device-code packager) compiles an
    LLM without touching any builder: the packager's files land in the artifact and the manifest,
    and the runtime opens it by the row's device type."""
    packaged = []

    def package(executable, target, staging, progress):
        packaged.append(target.info.kind)
        (staging / "kernels").mkdir()
        (staging / "kernels" / "device.bin").write_bytes(b"device code")
        return {"0" * 64: "kernels/device.bin"}

    llvm = TARGETS["llvm"]
    row = replace(llvm, name="probe-cpu", make=lambda arch: replace(llvm.make(arch), archs=("probe1",)), package=package)
    monkeypatch.setitem(TARGETS, "probe-cpu", row)

    from compile.compile_model import compile_model

    folder = compile_model(str(tiny_llama), "probe-cpu", output_root=tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert packaged == ["probe-cpu"] and folder.name.endswith("-q0f32-probe-cpu")  # the row's default quantization
    assert manifest["target"]["kind"] == "probe-cpu" and manifest["target"]["device_type"] == "cpu"
    assert manifest["target"]["arch"] == "probe1"
    assert manifest["kernels"] == {"0" * 64: "kernels/device.bin"} and "kernels/device.bin" in manifest["files"]
    artifact = LlmArtifact.open(folder)
    assert resolve_device(artifact.manifest).dlpack_device_type() == 1
