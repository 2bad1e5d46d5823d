"""Shared fixtures: the real SmolLM2 artifact and tiny random Llamas written as HF folders.

Tiers: a test that compiles a model or needs a compiled artifact is ``slow``. Taking one of
``ARTIFACT_FIXTURES`` marks it automatically; a test that calls the compiler itself carries
``@pytest.mark.slow``, and a test without the mark that reaches ``tvm.compile`` fails, so
``pytest -m "not slow"`` can never start a compile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]  # test helpers, and checks/ shared with bench/
import hypothesis_profiles  # noqa: E402,F401  (the profile must load before test modules are imported)

# fixtures that compile a model or load a compiled one: any test whose fixture closure holds one is slow
ARTIFACT_FIXTURES = frozenset({"smollm2_artifact", "whisper_artifact", "piper_artifact", "minilm_artifact",
                               "tiny_artifact", "tiny_vulkan", "smollm2_reference"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ARTIFACT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _compiling_needs_the_slow_mark(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test that is not marked slow as soon as it reaches the TVM compiler."""
    if request.node.get_closest_marker("slow") is not None:
        return
    try:
        import tvm
    except ImportError:  # runtime-only or no TVM: nothing can compile
        return
    if not hasattr(tvm, "compile"):
        return

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} compiles a model: mark it @pytest.mark.slow", pytrace=False)

    monkeypatch.setattr(tvm, "compile", refuse)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from compile.sources import packaged_model_path

    return packaged_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_artifact() -> Path:
    """The default model compiled for this CPU (reused from artifacts/ when intact)."""
    from compile.compile_model import compile_model

    return compile_model(None, "llvm", "q0f32", output_root=ROOT / "artifacts", skip_existing=True)


def _compiled(model: str) -> Path:
    """A model compiled for this CPU (reused from artifacts/ when intact)."""
    from compile.compile_model import compile_model

    return compile_model(model, "llvm", "q0f32", output_root=ROOT / "artifacts", skip_existing=True)


@pytest.fixture(scope="session")
def whisper_artifact() -> Path:
    return _compiled("whisper-base")


@pytest.fixture(scope="session")
def piper_artifact() -> Path:
    return _compiled("piper-joe")


@pytest.fixture(scope="session")
def minilm_artifact() -> Path:
    return _compiled("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    from checks import reference_llama

    return reference_llama.load_gguf(smollm2_gguf)


def train_tokenizer() -> str:
    """A small byte-level BPE tokenizer (vocab ~300) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, this is a tiny model",
              "numbers 0123456789 and café, naïve, 日本語"] * 20
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()


def write_tiny_llama(folder: Path, *, seed: int = 0, tie: bool = False, rope_scaling: dict | None = None,
                     layers: int = 2, vocab: int = 320, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 128, drop: str | None = None, bias: bool = False) -> Path:
    """Write a random LlamaForCausalLM as a Hugging Face folder (``drop`` omits one tensor; ``bias``:
    ``attention_bias`` and ``mlp_bias`` with random biases)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": tie,
        "bos_token_id": 0, "eos_token_id": 1, "attention_bias": bias, "mlp_bias": bias,
    }
    if rope_scaling:
        config["rope_scaling"] = rope_scaling

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
               "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    if not tie:
        tensors["lm_head.weight"] = mat(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors.update({
            f"{p}.self_attn.q_proj.weight": mat(heads * hd, hidden),
            f"{p}.self_attn.k_proj.weight": mat(kv_heads * hd, hidden),
            f"{p}.self_attn.v_proj.weight": mat(kv_heads * hd, hidden),
            f"{p}.self_attn.o_proj.weight": mat(hidden, heads * hd),
            f"{p}.mlp.gate_proj.weight": mat(intermediate, hidden),
            f"{p}.mlp.up_proj.weight": mat(intermediate, hidden),
            f"{p}.mlp.down_proj.weight": mat(hidden, intermediate),
            f"{p}.input_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
            f"{p}.post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
        })
        if bias:
            for module, rows in (("self_attn.q_proj", heads * hd), ("self_attn.k_proj", kv_heads * hd),
                                 ("self_attn.v_proj", kv_heads * hd), ("self_attn.o_proj", hidden),
                                 ("mlp.gate_proj", intermediate), ("mlp.up_proj", intermediate),
                                 ("mlp.down_proj", hidden)):
                tensors[f"{p}.{module}.bias"] = (0.5 * rng.standard_normal(rows)).astype(np.float32)
    if drop:
        tensors.pop(drop)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(train_tokenizer())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "</s>", "add_bos_token": True})
    )
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_llama, tmp_path_factory) -> Path:
    from compile.compile_model import compile_model

    return compile_model(str(tiny_llama), "llvm", "q0f32", output_root=tmp_path_factory.mktemp("tiny-art"))


@pytest.fixture(scope="session")
def tiny_vulkan(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama for the vulkan target (WebGPU kernels and Ferrum's plugin), shared by the
    lavapipe tests and the runtime-wheel install that runs it."""
    from compile.compile_model import compile_model

    return compile_model(str(tiny_llama), "vulkan", "q0f32", output_root=tmp_path_factory.mktemp("tiny-vk"))
