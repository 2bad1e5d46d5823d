"""The architecture seam: decoder configs with explicit feature flags, a registry of architectures
on the compile side, and a runtime that accepts an LLM artifact by the functions it exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_tiny_llama

from compile.builders import get_builder
from compile.compile_model import compile_model
from compile.model.architectures import ARCHITECTURES, architecture_for_hf, get_architecture
from ferrum.errors import ArtifactError, ModelSourceError
from ferrum.manifest import LLM_FUNCTIONS, Manifest
from ferrum.model_config import DecoderConfig, LlamaConfig
from runtime.artifact import LlmArtifact

# the ``model`` dict of a manifest written before the feature flags existed (SmolLM2, as compiled then)
OLD_MODEL = {"architecture": "llama", "context_length": 8192, "head_dim": 64, "hidden_size": 576,
             "intermediate_size": 1536, "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
             "rms_norm_eps": 1e-5, "rope_scaling": {}, "rope_theta": 100000.0, "tie_word_embeddings": True,
             "vocab_size": 49152}


def test_old_manifests_model_loads_with_llamas_flags():
    cfg = LlamaConfig.from_dict(OLD_MODEL)
    assert cfg == DecoderConfig.from_dict(OLD_MODEL)
    assert (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias, cfg.qk_norm) == (False, False, False, False)
    assert (cfg.sliding_window, cfg.activation, cfg.norm) == (0, "silu", "rmsnorm")
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg


def test_config_refuses_malformed_flags():
    with pytest.raises(ValueError, match="norm must be one of rmsnorm, layernorm"):
        DecoderConfig.from_dict({**OLD_MODEL, "norm": "batchnorm"})
    with pytest.raises(ValueError, match="sliding_window must be >= 0"):
        DecoderConfig.from_dict({**OLD_MODEL, "sliding_window": -1})
    with pytest.raises(ValueError, match=r"a sliding window \(64\) needs the layers it applies to"):
        DecoderConfig.from_dict({**OLD_MODEL, "sliding_window": 64})
    with pytest.raises(ValueError, match=r"window_layers \[30\] name layers outside"):
        DecoderConfig.from_dict({**OLD_MODEL, "sliding_window": 64, "window_layers": [30]})


def test_registry_rejects_an_unknown_architecture():
    assert architecture_for_hf("llama") is ARCHITECTURES["llama"] and architecture_for_hf("gpt2") is None
    with pytest.raises(ModelSourceError, match="unsupported decoder architecture 'gpt2'; Ferrum compiles gemma2, gemma3, llama, mistral"):
        get_architecture("gpt2")
    with pytest.raises(ModelSourceError, match=r"no compile path for architecture 'gpt2'; Ferrum compiles .*llama"):
        get_builder("gpt2")
    assert all(get_builder(name).build.__name__ == "build_decoder" for name in ARCHITECTURES)


@pytest.mark.parametrize("flag, value, says", [
    ("activation", "gelu_pytorch_tanh", "activation 'gelu_pytorch_tanh'"),
    ("norm", "layernorm", "norm 'layernorm'"),
])
def test_flags_the_network_lacks_are_refused_at_compile_time(flag, value, says):
    from compile.model.llama import LlamaForCausalLM
    from compile.targets import resolve_target
    from ferrum.quantization import get_quantization

    cfg = DecoderConfig.from_dict({**OLD_MODEL, flag: value})
    with pytest.raises(ModelSourceError, match=f"llama models with {re.escape(says)}.* are not supported yet"):
        LlamaForCausalLM(cfg, get_quantization("q0f32"), resolve_target("llvm").tvm_target)


def test_a_checkpoints_activation_is_read_not_ignored(tmp_path):
    folder = write_tiny_llama(tmp_path / "gelu")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ModelSourceError, match="activation 'gelu' .only silu. are not supported yet"):
        compile_model(str(folder), "llvm", output_root=tmp_path / "art")
    assert not list((tmp_path / "art").iterdir())  # nothing half-written


def _relinked(artifact: Path, folder: Path, **changes) -> Path:
    """``artifact`` with the same files (linked) and its manifest changed."""
    folder.mkdir()
    for path in artifact.iterdir():
        if path.name != "manifest.json":
            (folder / path.name).symlink_to(path.resolve())
    manifest = json.loads((artifact / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    return folder


def test_runtime_checks_an_llms_functions_not_its_architecture_name(tmp_path, smollm2_artifact):
    renamed = _relinked(smollm2_artifact, tmp_path / "renamed", architecture="some-future-decoder")
    assert LlmArtifact.open(renamed).manifest.architecture == "some-future-decoder"

    functions = [f for f in Manifest.load(smollm2_artifact).functions if f != "batch_decode"]
    assert set(LLM_FUNCTIONS) - set(functions) == {"batch_decode"}
    lacking = _relinked(smollm2_artifact, tmp_path / "lacking", functions=functions)
    with pytest.raises(ArtifactError, match="is not a runnable LLM: its library lacks batch_decode"):
        LlmArtifact.open(lacking)
