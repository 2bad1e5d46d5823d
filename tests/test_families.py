"""Model families beyond Llama against ``transformers`` itself: a tiny random checkpoint of each
family is written by ``transformers`` (``checks/tiny_families.py``), compiled once (llvm, q0f32),
and must give transformers' logits and greedy tokens; the same weights as a GGUF with llama.cpp's
names must give the same parameters, and the chat template must render as ``apply_chat_template``.

Bound held: max |compiled logit - transformers logit| <= 1e-3 in float32 (logits reach ~135;
measured 1.7e-6 (Mistral, Qwen3-MoE) to 5.3e-5 (Gemma 3)), and the argmax agrees at every position.
The families: ``checks/tiny_families.py::FAMILIES`` (Qwen2, Qwen3, Qwen3-MoE, Mistral, Phi-3, Gemma 2 with
attention soft-capping at 5, Gemma 3), and Phi-3 with LongRoPE on prompts within and past its original context.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tokenizer

from checks import tiny_families as tiny
from compile.sources.gguf_source import GGUFSource
from compile.sources.hf_source import HFSource
from compile.weights import convert_weights
from ferrum.errors import ModelSourceError
from ferrum.quantization import get_quantization
from runtime.tokenizer import ChatTokenizer

pytest.importorskip("transformers")

F32_BOUND = 1e-3
PROMPT = tiny.PROMPT
GREEDY = 8
FAMILIES = sorted(tiny.FAMILIES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root, tokenizer = tmp_path_factory.mktemp("families"), train_tokenizer()
    return {name: tiny.write_checkpoint(fam, root / name, tokenizer, seed=3)
            for name, fam in (tiny.FAMILIES | tiny.KERNEL_FAMILIES).items()}


@pytest.fixture(scope="module")
def artifacts(checkpoints, tmp_path_factory) -> Callable[[str], Path]:
    """family → its checkpoint compiled (llvm, q0f32), once per module, on first use."""
    from compile.compile_model import compile_model

    out, compiled = tmp_path_factory.mktemp("families-art"), {}

    def artifact(family: str) -> Path:
        if family not in compiled:
            compiled[family] = compile_model(str(checkpoints[family]), "llvm", "q0f32", output_root=out / family)
        return compiled[family]

    return artifact


def _runner(artifact: Path):
    from runtime.artifact import LlmArtifact
    from runtime.model_runner import KVCacheConfig, ModelRunner

    runner = ModelRunner(LlmArtifact.open(artifact))
    runner.create_kv_cache(KVCacheConfig(2, 256, 64, 16))
    runner.add_sequence(0)
    return runner


def _chunked_logits(runner) -> np.ndarray:
    """Sequence 0's logits at every PROMPT position along the three attention paths: a first chunk
    (12 tokens: ragged self-attention), 7 more over its cached pages, one decode step."""
    return np.concatenate([runner.verify([0], [PROMPT[:12]]), runner.verify([0], [PROMPT[12:19]]),
                           runner.decode([0], [PROMPT[19]])])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, checkpoints, artifacts):
    compiled = _runner(artifacts(family)).verify([0], [PROMPT])
    expected = tiny.reference_logits(checkpoints[family], PROMPT)
    assert compiled.shape == expected.shape == (len(PROMPT), 320)
    assert np.abs(compiled - expected).max() <= F32_BOUND
    assert (compiled.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_transformers(family, checkpoints, artifacts):
    runner = _runner(artifacts(family))
    tokens = [int(runner.prefill([0], [PROMPT])[0].argmax())]
    while len(tokens) < GREEDY:
        tokens.append(int(runner.decode([0], [tokens[-1]])[0].argmax()))
    assert tokens == tiny.reference_greedy(checkpoints[family], PROMPT, GREEDY)


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_of_the_same_weights_gives_the_same_model(family, checkpoints, tmp_path):
    """llama.cpp's layout (its names, its Q/K permutation for llama files, Phi-3's fused tensors)
    reads back as exactly the parameters and config of the Hugging Face folder."""
    folder = checkpoints[family]
    hf, gg = HFSource(folder), GGUFSource(tiny.write_gguf(tiny.FAMILIES[family], folder, tmp_path / "m.gguf"))
    # GGUF stores the epsilon as float32; llama.cpp writes Mistral as llama, without its window
    same = {"rms_norm_eps": hf.config.rms_norm_eps}
    if family == "mistral":
        same |= {"architecture": "mistral", "sliding_window": hf.config.sliding_window,
                 "window_layers": hf.config.window_layers}
    if family.startswith("gemma"):  # GGUF has no query_pre_attn_scalar: llama.cpp takes head_dim (query_pre_attn_scalar is 24 here)
        assert gg.config.attention_scale == hf.config.head_dim**-0.5
        same |= {"attention_scale": hf.config.attention_scale}
    assert gg.config.rms_norm_eps == pytest.approx(hf.config.rms_norm_eps, rel=1e-6)
    assert {**gg.config.to_dict(), **same} == hf.config.to_dict()
    q = get_quantization("q0f32")
    theirs = dict(convert_weights(hf, q))
    ours = dict(convert_weights(gg, q))
    assert list(ours) == list(theirs)
    for name, w in theirs.items():
        np.testing.assert_array_equal(ours[name], w, err_msg=name)
    text = "the quick brown fox, café 0123"
    hf_tok = ChatTokenizer(folder / "tokenizer.json", hf.generation)
    gg_tok_path = tmp_path / "gguf-tokenizer.json"
    gg_tok_path.write_text(gg.tokenizer_json)
    assert ChatTokenizer(gg_tok_path, gg.generation).encode(text) == hf_tok.encode(text)
    assert gg.generation.chat_template == hf.generation.chat_template


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_a_compiled_gguf_gives_transformers_logits(family, checkpoints, tmp_path):
    """Families end to end from GGUF: Qwen3 (q/k norms under llama.cpp's names, tied embeddings),
    Gemma 2 (its norms shifted by llama.cpp, both soft-caps from the file's keys; GGUF has no
    query_pre_attn_scalar, so this checkpoint's is set to the head dim llama.cpp assumes)."""
    from compile.compile_model import compile_model

    folder = checkpoints[family]
    if family == "gemma2":
        folder = _with_config(folder, tmp_path / "hf", query_pre_attn_scalar=HFSource(folder).config.head_dim)
    gguf = tiny.write_gguf(tiny.FAMILIES[family], folder, tmp_path / f"tiny-{family}.f32.gguf")
    artifact = compile_model(str(gguf), "llvm", "q0f32", output_root=tmp_path / "art")
    compiled = _runner(artifact).verify([0], [PROMPT])
    expected = tiny.reference_logits(folder, PROMPT)
    assert np.abs(compiled - expected).max() <= F32_BOUND


CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_renders_like_transformers(family, checkpoints):
    folder = checkpoints[family]
    ours = ChatTokenizer(folder / "tokenizer.json", HFSource(folder).generation).apply_chat_template(CONVERSATION)
    assert ours == tiny.render_chat(folder, CONVERSATION)
    assert all(m["content"] in ours for m in CONVERSATION)


@pytest.mark.parametrize("family, window, layers", [("mistral", tiny.WINDOW, [0, 1]), ("phi3", tiny.WINDOW + 3, [0, 1]),
                                                    ("gemma2", tiny.WINDOW, [0]), ("gemma3", tiny.WINDOW, [0])])
def test_a_sliding_window_is_kept_with_the_layers_it_applies_to(family, window, layers, checkpoints):
    """The context stays the model's; the attention kernels mask the window in those layers
    (Gemma: the sliding_attention ones), which the logits tests below check against transformers
    on a prompt longer than the window."""
    cfg = HFSource(checkpoints[family]).config
    assert (cfg.context_length, cfg.sliding_window, cfg.window_layers) == (512, window, layers)
    assert len(PROMPT) > window


def _with_config(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / folder.name
    copy.mkdir(parents=True)
    for path in folder.iterdir():
        (copy / path.name).symlink_to(path)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **changes}))
    return copy


def test_partial_rotary_is_refused_by_name(checkpoints, tmp_path):
    folder = _with_config(checkpoints["phi3"], tmp_path / "partial",
                          rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 0.75})
    with pytest.raises(ModelSourceError, match=r"partial rotary embeddings \(partial_rotary_factor 0.75\)"):
        HFSource(folder)


@pytest.mark.slow  # exports the network (~10 s a target)
@pytest.mark.parametrize("kind", ["cuda"])  # CPU: the logits tests below run every CPU kernel
def test_every_attention_kernel_of_a_capped_gemma2_is_rewritten(kind, checkpoints):
    """Each TIR attention kernel the cache is created with (prefill, decode, ragged, sliding-window
    and tree variants) has its finished-score statement capped; a kernel without one fails the
    build by name. CUDA builds cannot run here: this checks the rewrite, not the numbers."""
    from tvm.relax.frontend.nn.llm.kv_cache import _kv_cache_transpose_append

    from compile.build import export_module
    from compile.model.cpu_attention import TVM_DECODE_KERNEL
    from compile.model.gemma import GemmaForCausalLM
    from compile.model.softcap import SCORE_STATEMENTS, attention_kernels, install_attention_soft_cap, soft_cap_kernel
    from compile.targets import resolve_target
    from ferrum.errors import FerrumError

    cfg = HFSource(checkpoints["gemma2"]).config
    assert cfg.attn_logit_softcap == 5.0
    target = resolve_target(kind, "sm_90a" if kind == "cuda" else None).tvm_target
    mod, _ = export_module(GemmaForCausalLM(cfg, get_quantization("q0f32"), target))
    kernels = attention_kernels(mod)
    assert len(kernels) == 7  # ragged prefill, paged prefill, decode, their sliding-window pair, two tree kernels
    # on CPU, Ferrum's decode kernel replaces TVM's (whose script does not parse back) and caps itself
    own = {TVM_DECODE_KERNEL} if kind == "llvm" else set()
    capped = install_attention_soft_cap(mod, cfg.attn_logit_softcap, capped=own)
    assert {g.name_hint for g in kernels} >= own
    for gvar in (g for g in kernels if g.name_hint not in own):
        before, after = mod[gvar].script(), capped[gvar].script()
        scores = sum(bool(SCORE_STATEMENTS.match(line)) for line in before.splitlines())
        assert scores and after.count("T.tanh(") == scores and "T.tanh(" not in before, gvar.name_hint
    with pytest.raises(FerrumError, match="kernel transpose_append has no score statement"):
        soft_cap_kernel(_kv_cache_transpose_append(2, 32, "float32"), 5.0, "transpose_append")


@pytest.mark.slow  # exports the network (~10 s)
def test_a_cuda_build_windows_every_kernel_a_chain_of_sequences_calls(checkpoints):
    """CUDA's ragged, paged prefill and decode kernels each mask by absolute positions when the
    scale is negative (numbers: bench/families_gpu_check.py on a GPU); others are left alone and
    a kernel with no causal mask Ferrum knows fails the build by name."""
    from tvm.relax.frontend.nn.llm.kv_cache import _kv_cache_transpose_append

    from compile.build import export_module
    from compile.model.gemma import GemmaForCausalLM
    from compile.model.sliding_window import WINDOWED_KERNELS, install_sliding_window, window_kernel
    from compile.model.softcap import attention_kernels
    from compile.targets import resolve_target
    from ferrum.errors import FerrumError

    cfg = HFSource(checkpoints["gemma3"]).config
    mod, _ = export_module(GemmaForCausalLM(cfg, get_quantization("q0f16"), resolve_target("cuda", "sm_90a").tvm_target))
    windowed = install_sliding_window(mod, cfg.sliding_window, windowed=set())
    chain = [g for g in attention_kernels(mod) if g.name_hint in WINDOWED_KERNELS]
    assert sorted(g.name_hint for g in chain) == ["batch_decode_paged_kv", "batch_prefill_paged_kv", "batch_prefill_ragged_kv"]
    for gvar in attention_kernels(mod):
        after = windowed[gvar].script()
        masked = "sm_scale >= T.float32(0.0) or q_rope_position[" in after
        assert masked == (gvar in chain) and ("T.fabs(sm_scale)" in after) == (gvar in chain), gvar.name_hint
    with pytest.raises(FerrumError, match="kernel transpose_append has no causal mask"):
        window_kernel(_kv_cache_transpose_append(2, 32, "float32"), 8, "transpose_append")


@pytest.mark.slow
def test_gemma2_soft_cap_holds_in_prefill_over_cached_pages_and_decode(checkpoints, artifacts, tmp_path):
    """The three attention paths of a sequence (a prompt's own tokens, a second chunk over cached
    pages, one decoded token) give transformers' logits, and the cap of 5 moves them far more
    than the bound (transformers without it differs)."""
    folder = checkpoints["gemma2"]
    runner = _runner(artifacts("gemma2"))
    compiled = _chunked_logits(runner)
    expected = tiny.reference_logits(folder, PROMPT)
    assert np.abs(compiled - expected).max() <= F32_BOUND
    uncapped = tiny.reference_logits(_with_config(folder, tmp_path, attn_logit_softcapping=None), PROMPT)
    assert np.abs(uncapped - expected).max() > 1000 * F32_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "phi3", "gemma2", "gemma3"])
def test_a_sliding_window_holds_over_cached_pages_a_forked_prefix_and_decode(family, checkpoints, artifacts, tmp_path):
    """Every attention path masks the window by absolute positions: a second prompt chunk over
    cached pages, a sequence forked from a cached prefix (its keys on two depths of the cache's
    block tree), and decode; the window moves the logits far more than the bound."""
    folder = checkpoints[family]
    runner = _runner(artifacts(family))
    chunked = _chunked_logits(runner)
    runner.fork_sequence(0, 1, 10)
    forked = np.concatenate([runner.verify([1], [PROMPT[10:19]]), runner.decode([1], [PROMPT[19]])])
    expected = tiny.reference_logits(folder, PROMPT)
    assert np.abs(chunked - expected).max() <= F32_BOUND
    assert np.abs(forked - expected[10:]).max() <= F32_BOUND
    unwindowed = tiny.reference_logits(_with_config(folder, tmp_path, sliding_window=4096), PROMPT)
    assert np.abs(unwindowed - expected).max() > 1000 * F32_BOUND


LONGROPE_ORIGINAL = tiny.LONGROPE_ORIGINAL


@pytest.fixture(scope="module")
def longrope(checkpoints, tmp_path_factory) -> Path:
    """The Phi-3 checkpoint with LongRoPE: factors drawn far apart, an original context of 12 tokens."""
    return tiny.with_longrope(checkpoints["phi3"], tmp_path_factory.mktemp("longrope") / "phi3")


@pytest.fixture(scope="module")
def longrope_artifact(longrope, tmp_path_factory) -> Path:
    from compile.compile_model import compile_model

    return compile_model(str(longrope), "llvm", "q0f32", output_root=tmp_path_factory.mktemp("longrope-art"))


def test_longrope_is_read_as_transformers_reads_it(longrope):
    cfg = HFSource(longrope).config
    assert cfg.rope_scaling["rope_type"] == "longrope"
    assert cfg.rope_scaling["original_max_position_embeddings"] == LONGROPE_ORIGINAL
    # max_position_embeddings 512 over the original 12: sqrt(1 + ln(512 / 12) / ln(12))
    assert cfg.rope_scaling["attention_factor"] == pytest.approx((1 + np.log(512 / 12) / np.log(12)) ** 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("length, greedy", [(8, 4), (20, 6)])  # within the original context; past it
def test_longrope_matches_transformers_short_and_long(length, greedy, longrope, longrope_artifact):
    """transformers rotates a sequence of at most the original length with the short factors and
    a longer one with the long factors: the logits of every position, the logits of a decode step
    and the greedy tokens agree on both sides (the 8-token prompt plus 4 tokens stays within 12)."""
    folder, artifact = longrope, longrope_artifact
    prompt = PROMPT[:length]
    expected = tiny.reference_logits(folder, prompt)
    runner = _runner(artifact)
    assert np.abs(runner.verify([0], [prompt]) - expected).max() <= F32_BOUND
    runner = _runner(artifact)
    runner.prefill([0], [prompt[:-1]])
    assert np.abs(runner.decode([0], [prompt[-1]])[0] - expected[-1]).max() <= F32_BOUND
    runner = _runner(artifact)
    tokens = [int(runner.prefill([0], [prompt])[0].argmax())]
    while len(tokens) < greedy:
        tokens.append(int(runner.decode([0], [tokens[-1]])[0].argmax()))
    assert tokens == tiny.reference_greedy(folder, prompt, greedy)


def test_a_longrope_gguf_gives_the_same_model(longrope, tmp_path):
    """llama.cpp's layout of LongRoPE (factor tensors, original context and attention factor keys)
    reads back as the Hugging Face folder's config, and its factor tensors are no parameters."""
    hf = HFSource(longrope)
    gg = GGUFSource(tiny.write_gguf(tiny.FAMILIES["phi3"], longrope, tmp_path / "m.gguf"))
    ours, theirs = gg.config.to_dict(), hf.config.to_dict()
    assert ours["rope_scaling"].pop("attention_factor") == pytest.approx(theirs["rope_scaling"].pop("attention_factor"))
    assert np.allclose(ours["rope_scaling"].pop("short_factor"), theirs["rope_scaling"].pop("short_factor"))
    assert np.allclose(ours["rope_scaling"].pop("long_factor"), theirs["rope_scaling"].pop("long_factor"))
    # GGUF stores the epsilon as float32; llama.cpp's context is max_position_embeddings (no window key for phi3 here)
    assert {**ours, "rms_norm_eps": theirs["rms_norm_eps"]} == theirs
    assert gg.tensor_names() == hf.tensor_names()


def test_the_two_longrope_factor_sets_give_different_logits(longrope):
    """The test above would pass with either set if they rotated alike: the first 8 positions of
    the long prompt (long factors) differ from the short prompt's (short factors) in transformers."""
    folder = longrope
    short, long = tiny.reference_logits(folder, PROMPT[:8]), tiny.reference_logits(folder, PROMPT)[:8]
    assert np.abs(short - long).max() > 100 * F32_BOUND


def test_qwen3_moe_refuses_the_cpu_q4f32_layout(checkpoints):
    from compile.model.qwen3_moe import Qwen3MoeForCausalLM
    from compile.targets import resolve_target

    cfg = HFSource(checkpoints["qwen3_moe"]).config
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.norm_topk_prob) == (8, 2, 32, True)
    with pytest.raises(ModelSourceError, match=r"q4f32 \(its row-interleaved CPU layout"):
        Qwen3MoeForCausalLM(cfg, get_quantization("q4f32"), resolve_target("llvm").tvm_target)


def _q4_round_trip(w: np.ndarray) -> np.ndarray:
    from compile.quantize import dequantize_q4, quantize_q4

    return dequantize_q4(*quantize_q4(w, 32), 32)


def test_qwen3_moe_q4f16_quantizes_the_experts_and_keeps_q4_1_blocks(checkpoints, tmp_path):
    """q4f16 stores every expert in int4 (the router stays float16), each expert's rows quantized
    as that expert's own tensor would be; a GGUF whose experts are llama.cpp Q4_1 blocks converts
    to int4 that dequantizes to exactly the GGUF's values (its blocks kept, nothing re-rounded)."""
    from compile.quantize import dequantize_q4

    folder, q = checkpoints["qwen3_moe"], get_quantization("q4f16")
    hf = HFSource(folder)
    cfg = hf.config
    ffn, d = cfg.moe_intermediate_size, cfg.hidden_size
    ours = dict(convert_weights(hf, q))
    assert ours["layers.1.mlp.router.weight"].dtype == np.float16
    assert ours["layers.1.mlp.experts_gate_up.q_weight"].shape == (cfg.num_experts * 2 * ffn, d // 8)
    down = dequantize_q4(*(ours[f"layers.1.mlp.experts_down.{p}"] for p in ("q_weight", "q_scale", "q_min")), 32)
    np.testing.assert_array_equal(down[3 * d:4 * d], _q4_round_trip(hf.tensor("model.layers.1.mlp.experts.3.down_proj.weight")))

    gg = GGUFSource(tiny.write_gguf(tiny.FAMILIES["qwen3_moe"], folder, tmp_path / "q4_1.gguf", q4_1_experts=True))
    assert gg.int4_weights
    converted = dict(convert_weights(gg, q))
    for layer in range(cfg.num_hidden_layers):
        for part in ("gate_up", "down"):
            name = f"layers.{layer}.mlp.experts_{part}"
            values = dequantize_q4(*(converted[f"{name}.{p}"] for p in ("q_weight", "q_scale", "q_min")), 32)
            stacked = [gg.tensor(f"model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight")
                       for e in range(cfg.num_experts) for p in (("gate", "up") if part == "gate_up" else ("down",))]
            np.testing.assert_array_equal(values, np.concatenate(stacked), err_msg=name)


Q4_BOUND = 2e-2  # float16 activations against float32: logits reach ~3.3 here; measured 4.6e-3


@pytest.mark.slow
def test_qwen3_moe_q4f16_experts_match_transformers_on_their_int4_weights(checkpoints, tmp_path):
    """The llvm q4f16 artifact (int4 experts gathered and dequantized in the product, int4 attention
    projections) against transformers run on the same checkpoint with every projection replaced by
    its int4 round trip: only float16 arithmetic differs. The unquantized checkpoint is far off
    (measured 1.26), so the test fails if the experts were read with other values."""
    from safetensors.numpy import load_file, save_file

    from compile.compile_model import compile_model

    folder = checkpoints["qwen3_moe"]
    rounded = tmp_path / "int4-values"
    rounded.mkdir()
    for path in folder.iterdir():
        if path.name != "model.safetensors":
            (rounded / path.name).symlink_to(path.resolve())
    tensors = load_file(folder / "model.safetensors")
    projections = [name for name, w in tensors.items() if w.ndim == 2 and "_proj." in name]
    assert sum(".experts." in name for name in projections) == 2 * 8 * 3
    save_file({**tensors, **{name: _q4_round_trip(tensors[name]) for name in projections}},
              rounded / "model.safetensors", metadata={"format": "pt"})

    runner = _runner(compile_model(str(folder), "llvm", "q4f16", output_root=tmp_path / "art"))
    compiled = runner.verify([0], [PROMPT])
    expected = tiny.reference_logits(rounded, PROMPT)
    assert np.abs(compiled - expected).max() <= Q4_BOUND
    assert (compiled.argmax(-1) == expected.argmax(-1)).all()
    assert np.abs(compiled - tiny.reference_logits(folder, PROMPT)).max() > 50 * Q4_BOUND
    runner.remove_sequence(0)
    runner.add_sequence(0)
    tokens = [int(runner.prefill([0], [PROMPT])[0].argmax())]
    while len(tokens) < GREEDY:
        tokens.append(int(runner.decode([0], [tokens[-1]])[0].argmax()))
    assert tokens == tiny.reference_greedy(rounded, PROMPT, GREEDY)


MISTRAL_7B_V01 = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
                  "sliding_window": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu"}


@pytest.mark.parametrize("family, says", [
    ("qwen2", "head dim 16"), ("qwen3", "head dim 32"), ("qwen3_moe", "8 routed experts"),
    ("gemma2", "gelu_pytorch_tanh/rmsnorm"), ("gemma3", "Gemma's extra norms"),
])
def test_cuda_builds_say_why_ferrums_kernels_cannot_take_a_family(family, says, checkpoints):
    from compile.kernels.ops import kernel_blockers

    assert any(says in b for b in kernel_blockers(HFSource(checkpoints[family]).config, get_quantization("q0f16")))


@pytest.mark.parametrize("family", sorted(tiny.KERNEL_FAMILIES))
@pytest.mark.parametrize("quant", ["q0f16", "q4f16"])
def test_qwen2_and_qwen3_at_kernel_shapes_take_ferrums_cuda_kernels(family, quant, checkpoints):
    """Their q/k/v bias and q/k norm are no blocker (the network adds them between QKV and
    attention); only the tiny shapes' head dims kept them on TVM's kernels."""
    from compile.kernels.ops import kernel_blockers

    cfg = HFSource(checkpoints[family]).config
    assert (cfg.qkv_bias, cfg.qk_norm) == ((True, False) if family.startswith("qwen2") else (False, True))
    assert cfg.head_dim in (64, 128) and kernel_blockers(cfg, get_quantization(quant)) == []


@pytest.mark.parametrize("family, says", [
    ("qwen2", "q/k/v projection biases"), ("qwen3", "q/k norm"), ("qwen3_moe", "8 routed experts"),
    ("gemma2", "gelu_pytorch_tanh/rmsnorm"), ("gemma3", "Gemma's extra norms"),
])
def test_cpu_builds_say_why_ferrums_cpu_kernels_cannot_take_a_family(family, says, checkpoints):
    """The CPU kernels fuse the same plain Llama block: a family departing from it takes TVM's kernels."""
    from compile.kernels.cpu_ops import CPU_KERNEL_FEATURES, cpu_kernel_blockers

    blockers = cpu_kernel_blockers(HFSource(checkpoints[family]).config, get_quantization("q4f32"),
                                   set(CPU_KERNEL_FEATURES))
    assert any(says in b for b in blockers)


def test_mistral_7b_v01_keeps_its_window_and_says_why_it_takes_tvms_kernels(tmp_path):
    """Its 4096-token window is masked over the whole 32768-token context, which Ferrum's fused
    kernels do not do: the build takes TVM's (and says so)."""
    from compile.kernels.ops import kernel_blockers
    from compile.model.mistral_hf import read_mistral

    cfg = read_mistral(MISTRAL_7B_V01, tmp_path)
    assert (cfg.context_length, cfg.sliding_window, cfg.window_layers, cfg.head_dim) == (32768, 4096, list(range(32)), 128)
    assert kernel_blockers(cfg, get_quantization("q4f16")) == [
        "sliding-window attention (the attention kernels attend to the whole context)"]
    assert read_mistral({**MISTRAL_7B_V01, "sliding_window": None}, tmp_path).window_layers == []


@pytest.mark.slow
def test_qwen3_moe_reads_only_the_routed_experts(checkpoints, artifacts):
    """NaN weights in an expert no token is routed to leave the logits exact; NaN in a routed one
    reaches them (a dense mix that multiplied unrouted experts by zero would give NaN in both)."""
    import tvm

    from runtime.artifact import LlmArtifact
    from runtime.model_runner import KVCacheConfig, ModelRunner

    prompt, cfg = PROMPT[:2], HFSource(checkpoints["qwen3_moe"]).config
    used = tiny.routed_experts(checkpoints["qwen3_moe"], prompt, cfg.num_experts_per_tok)[0]
    unused = min(set(range(cfg.num_experts)) - used)
    artifact = LlmArtifact.open(artifacts("qwen3_moe"))
    rows = 2 * cfg.moe_intermediate_size
    where = artifact.manifest.extra.param_names.index("layers.0.mlp.experts_gate_up.weight")

    loaded = ModelRunner(artifact)

    def logits_with_nan_in(expert: int) -> np.ndarray:
        params = list(loaded.params)
        w = params[where].numpy()
        w[expert * rows:(expert + 1) * rows] = np.nan
        params[where] = tvm.runtime.tensor(w, loaded.device)
        runner = ModelRunner(artifact, params=params)
        runner.create_kv_cache(KVCacheConfig(1, 64, 16, 16))
        runner.add_sequence(0)
        return runner.verify([0], [prompt])

    expected = tiny.reference_logits(checkpoints["qwen3_moe"], prompt)
    assert np.abs(logits_with_nan_in(unused) - expected).max() <= F32_BOUND
    assert np.isnan(logits_with_nan_in(min(used))).any()
