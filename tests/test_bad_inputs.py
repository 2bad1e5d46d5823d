"""Every bad model input gives one clear line and a non-zero exit; bad artifacts are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_llama

from compile.compile_model import compile_model
from ferrum.errors import ArtifactError, InvalidRequestError, ModelSourceError
from ferrum.manifest import Manifest
from runtime.artifact import LlmArtifact, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def ferrum(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ferrum", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("ferrum: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_gguf(path: Path, arch: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad")


def test_missing_path(workdir):
    assert_one_line_error(ferrum("compile", str(workdir / "nope.gguf"), cwd=workdir), "not found")


def test_unknown_quantization(workdir):
    assert_one_line_error(ferrum("compile", "--quant", "q3f7", cwd=workdir), "unknown quantization 'q3f7'")


def test_unknown_target(workdir):
    assert_one_line_error(ferrum("compile", "--target", "tpu", cwd=workdir), "unknown target 'tpu'")


def test_unsupported_gguf_architecture(workdir):
    path = write_gguf(workdir / "gpt2.gguf", "gpt2")
    assert_one_line_error(ferrum("compile", str(path), cwd=workdir), "unsupported GGUF architecture 'gpt2'")


def test_unsupported_hf_architecture(workdir):
    folder = workdir / "gpt-neox"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}))
    assert_one_line_error(ferrum("compile", str(folder), cwd=workdir), "unsupported architecture 'GPTNeoXForCausalLM'")


def test_corrupt_gguf(workdir):
    path = workdir / "garbage.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_one_line_error(ferrum("compile", str(path), cwd=workdir), "not a readable GGUF file")


def test_truncated_gguf(workdir, smollm2_gguf):
    path = workdir / "truncated.gguf"
    with open(smollm2_gguf, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(smollm2_gguf.stat().st_size // 2))
    result = ferrum("compile", str(path), cwd=workdir)
    assert_one_line_error(result)
    assert "is truncated" in result.stderr
    assert not (workdir / "artifacts").exists()


@pytest.mark.slow
def test_failed_compile_leaves_no_artifact(tmp_path):
    """A source that fails late (after the library is built) leaves nothing behind."""
    folder = write_tiny_llama(tmp_path / "broken", drop="model.layers.1.mlp.down_proj.weight")
    out = tmp_path / "artifacts"
    with pytest.raises(ModelSourceError, match="missing"):
        compile_model(str(folder), "llvm", "q0f32", output_root=out)
    assert list(out.iterdir()) == []


@pytest.fixture()
def artifact_copy(tmp_path, tiny_artifact) -> Path:
    copy = tmp_path / tiny_artifact.name
    shutil.copytree(tiny_artifact, copy)
    return copy


def test_tampered_weights_are_refused(artifact_copy):
    shard = next((artifact_copy / "weights").glob("params_shard_*.bin"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        LlmArtifact.open(artifact_copy)


def test_missing_file_is_refused(artifact_copy):
    (artifact_copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json is missing"):
        LlmArtifact.open(artifact_copy)


def test_other_schema_version_is_refused(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version 99"):
        LlmArtifact.open(artifact_copy)


def test_cpu_artifact_refuses_cuda_device(artifact_copy):
    with pytest.raises(ArtifactError, match="compiled for llvm and cannot run on 'cuda'"):
        resolve_device(Manifest.load(artifact_copy), "cuda")


def test_cuda_artifact_refused_without_gpu(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["target"].update(kind="cuda", arch="sm_90a", device_type="cuda")
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="CUDA"):
        resolve_device(Manifest.load(artifact_copy))


def test_missing_cpu_features_are_refused(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["target"]["cpu_features"] = ["avx512f", "imaginary_isa"]
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="imaginary_isa"):
        LlmArtifact.open(artifact_copy)


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_gpu_memory_utilization_out_of_range_is_refused(smollm2_artifact, share):
    from ferrum.types import EngineConfig
    from runtime.batch_engine import ContinuousBatchEngine

    with pytest.raises(InvalidRequestError, match="gpu_memory_utilization"):
        ContinuousBatchEngine(EngineConfig(artifact_path=str(smollm2_artifact), gpu_memory_utilization=share))


def test_server_refuses_oversized_requests_and_keeps_answering(smollm2_artifact):
    """The request that once stalled the server (n=100000) and other oversized parameters are 400s
    naming the parameter, checked before the engine; a normal request right after is answered."""
    from server_harness import ServeProcess, request, run

    server = ServeProcess([str(smollm2_artifact)], "--max-model-len", "1024", "--kv-cache-tokens", "8192")
    url, model = server.url + "/v1/chat/completions", smollm2_artifact.name
    question = [{"role": "user", "content": "What is the capital of France?"}]
    try:
        for extra, param in (({"n": 100_000}, "n"), ({"n": 100_000, "stream": True}, "n"),
                             ({"logit_bias": {"49152": 5}}, "logit_bias"),  # SmolLM2 has 49152 tokens ({"stop": ["x"] * 17}, "stop"),
                             ({"seed": -1}, "seed")):
            status, headers, raw = run(request("POST", url, json_body={"model": model, "messages": question, **extra}))
            assert status == 400 and headers["Content-Type"].startswith("application/json"), raw
            error = json.loads(raw)["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error", error
        status, _, raw = run(request("POST", url, json_body={"model": model, "messages": question, "max_tokens": 16,
                                                             "temperature": 0}))
        assert status == 200 and "Paris" in json.loads(raw)["choices"][0]["message"]["content"]
    finally:
        assert server.terminate() == 0
