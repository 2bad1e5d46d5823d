"""Tiny random checkpoints of each model family, written by ``transformers`` itself, and the same
weights as a GGUF with llama.cpp's architecture and tensor names (``gguf`` package).

``transformers`` is the reference: ``reference_logits`` and ``reference_greedy`` run its own
model class on CPU torch in float32. Shares no code with ``compile/`` or ``runtime/``. The sizes
are tiny (2 layers, hidden 64) so one compile takes seconds; weights are redrawn at unit scale
(transformers initializes at std 0.02, which makes every logit ~0 and greedy tokens ties).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": None}

CHATML = (  # Qwen's ChatML template (the shape of Qwen2.5's, without its tool branch)
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL = (  # Mistral Instruct's [INST] template (system folded into the first user turn)
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA = (  # Gemma's template (system folded into the first user turn, assistant as "model")
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + ns.system + message['content'] | trim + '<end_of_turn>\n' }}{% set ns.system = '' %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3 = (  # Phi-3's template
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One family's tiny checkpoint: transformers classes, config and the llama.cpp architecture."""

    name: str
    config_class: str
    model_class: str
    gguf_arch: str
    chat_template: str
    config: dict[str, Any] = field(default_factory=dict)
    permute_qk: bool = False  # llama.cpp permutes Q/K rows of its "llama" architecture
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj are single tensors
    norm_shift: bool = False  # Gemma: llama.cpp stores norm weights + 1


WINDOW = 8  # the sliding windows, shorter than PROMPT (20 tokens): every windowed family masks in every test

FAMILIES = {
    "qwen2": Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "qwen2", CHATML,
                    {"tie_word_embeddings": True, "rope_theta": 1e6}),
    "qwen3": Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "qwen3", CHATML,
                    {"head_dim": 32, "tie_word_embeddings": True, "rope_theta": 1e6}),
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3moe", CHATML,
                        {"head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                         "norm_topk_prob": True, "tie_word_embeddings": False}),
    "mistral": Family("mistral", "MistralConfig", "MistralForCausalLM", "llama", MISTRAL,
                      {"sliding_window": WINDOW, "tie_word_embeddings": False}, permute_qk=True),
    "gemma2": Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", "gemma2", GEMMA,
                     {"head_dim": 32, "query_pre_attn_scalar": 24, "sliding_window": WINDOW, "attn_logit_softcapping": 5.0,
                      "final_logit_softcapping": 30.0}, norm_shift=True),  # released Gemma 2 caps attention at 50
    "gemma3": Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3", GEMMA,
                     {"head_dim": 32, "query_pre_attn_scalar": 24, "sliding_window": WINDOW,
                      "layer_types": ["sliding_attention", "full_attention"]}, norm_shift=True),
    "phi3": Family("phi3", "Phi3Config", "Phi3ForCausalLM", "phi3", PHI3,
                   {"sliding_window": WINDOW + 3, "tie_word_embeddings": False}, fused=True),
}


# Qwen2 (q/k/v biases) and Qwen3 (q/k norm) at shapes Ferrum's CUDA kernels take (head dim 64 and
# 128, widths multiples of 32; the tiny shapes above, head dim 16 and 32, build with TVM's), so their
# CUDA float16 builds run the kernels' block with the bias and q/k norm between QKV and attention.
# Untied, as Qwen2-7B and Qwen3-8B are (the tied tiny checkpoints' greedy tokens repeat one token).
KERNEL_SHAPES = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "tie_word_embeddings": False}
KERNEL_FAMILIES = {
    "qwen2_kernels": replace(FAMILIES["qwen2"], config={**FAMILIES["qwen2"].config, **KERNEL_SHAPES}),  # head dim 64
    "qwen3_kernels": replace(FAMILIES["qwen3"], config={**FAMILIES["qwen3"].config, **KERNEL_SHAPES, "head_dim": 128}),
}


def write_checkpoint(family: Family, folder: Path, tokenizer_json: str, seed: int = 0) -> Path:
    """Save a random ``family`` model with ``save_pretrained`` (safetensors, float32), the
    tokenizer and a tokenizer_config holding the family's chat template."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(transformers, family.config_class)(**{**SIZES, **family.config})
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:  # (out, in), or (experts, out, in)
                scale = 1.0 if "embed_tokens" in name else p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:  # biases
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer_json)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": family.chat_template,
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False,
    }))
    return folder


def _model(folder: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32", attn_implementation="eager").eval()


PROMPT = [int(t) for t in np.random.default_rng(1).integers(2, 300, size=20)]  # fixed; + 8 tokens fits every context
LONGROPE_ORIGINAL = 12  # the original context of ``with_longrope``'s checkpoint; a 20-token prompt crosses it


def with_longrope(folder: Path, out: Path) -> Path:
    """``folder``'s Phi-3 checkpoint under ``out`` (files linked, config rewritten) with LongRoPE: short
    and long factors drawn far apart, so the two sets give clearly different logits, and an original
    context of ``LONGROPE_ORIGINAL`` tokens."""
    config = json.loads((folder / "config.json").read_text())
    half = (config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]) // 2
    rng = np.random.default_rng(5)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": rng.uniform(1, 1.5, half).tolist(),
            "long_factor": rng.uniform(2, 8, half).tolist(), "original_max_position_embeddings": LONGROPE_ORIGINAL}
    out.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name != "config.json":
            (out / path.name).symlink_to(path.resolve())
    config |= {"rope_parameters": rope, "original_max_position_embeddings": LONGROPE_ORIGINAL}
    (out / "config.json").write_text(json.dumps(config))
    return out


def reference_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    """transformers' float32 logits after every position of ``tokens``: (len, vocab)."""
    import torch

    with torch.no_grad():
        return _model(folder)(torch.tensor([tokens])).logits[0].double().numpy()


def reference_greedy(folder: Path, tokens: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``tokens`` by transformers' ``generate`` (no EOS stop)."""
    import torch

    with torch.no_grad():
        out = _model(folder).generate(torch.tensor([tokens]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(tokens):].tolist()


def render_chat(folder: Path, messages: list[dict[str, Any]]) -> str:
    """transformers' ``apply_chat_template`` of ``messages`` with the folder's tokenizer."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _gguf_names(family: Family, layer: int) -> dict[str, str]:
    """Hugging Face tensor name → llama.cpp tensor name, for one layer."""
    hf, cpp = f"model.layers.{layer}.", f"blk.{layer}."
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    if family.norm_shift:  # Gemma: its post-attention norm is on the attention output, then two MLP norms
        parts |= {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                  "post_feedforward_layernorm": "post_ffw_norm"}
    return {f"{hf}{a}.{kind}": f"{cpp}{b}.{kind}" for a, b in parts.items() for kind in ("weight", "bias")}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``permute`` of Q/K rows (rotate-half → adjacent pairs) for its llama architecture."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _stack_experts(tensors: dict[str, np.ndarray], layers: int, experts: int) -> dict[str, np.ndarray]:
    """Per-expert Hugging Face tensors → llama.cpp's stacked ``ffn_*_exps`` and ``ffn_gate_inp`` (its names)."""
    out = dict(tensors)
    for i in range(layers):
        p = f"model.layers.{i}.mlp"
        out[f"blk.{i}.ffn_gate_inp.weight"] = out.pop(f"{p}.gate.weight")
        for part in ("gate", "up", "down"):
            out[f"blk.{i}.ffn_{part}_exps.weight"] = np.stack(
                [out.pop(f"{p}.experts.{e}.{part}_proj.weight") for e in range(experts)])
    return out


def write_gguf(family: Family, folder: Path, path: Path, q4_1_experts: bool = False) -> Path:
    """The checkpoint in ``folder`` as a float32 GGUF, laid out as llama.cpp's converter writes it;
    ``q4_1_experts``: the stacked expert tensors in llama.cpp's Q4_1 blocks (``gguf.quants``)."""
    import gguf
    from safetensors.numpy import load_file

    c = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), family.gguf_arch)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = c["rope_parameters"]
    w.add_rope_freq_base(float(rope.get("full_attention", rope)["rope_theta"]))
    if rope.get("rope_type") == "longrope":  # llama.cpp's Phi-3 converter: the factors as tensors, the attention factor it derives
        original = rope.get("original_max_position_embeddings") or c["original_max_position_embeddings"]
        scale = c["max_position_embeddings"] / original
        w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(original))) if scale > 1 else 1.0)
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))
    if "sliding_attention" in rope:
        w.add_rope_freq_base_swa(float(rope["sliding_attention"]["rope_theta"]))
    w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
    if c.get("sliding_window") and c.get("use_sliding_window", True) and family.gguf_arch != "llama":
        w.add_sliding_window(c["sliding_window"])
    if "layer_types" in c and family.norm_shift:  # Gemma: which layers slide
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c["layer_types"]])
    if c.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
    if c.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(float(c["attn_logit_softcapping"]))
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tok["added_tokens"] if t.get("special")}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in vocab]
    padding = c["vocab_size"] - len(vocab)  # llama.cpp pads the list to the embedding's rows
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab + [f"[PAD{i}]" for i in range(padding)])
    w.add_token_types(types + [gguf.TokenType.UNUSED] * padding)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(c["bos_token_id"])
    w.add_eos_token_id(c["eos_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(family.chat_template)
    experts = c.get("num_experts") or c.get("num_local_experts")
    if experts:  # Qwen3-MoE: llama.cpp stacks each layer's experts
        w.add_expert_count(experts)
        w.add_expert_used_count(c["num_experts_per_tok"])
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
        w.add_expert_weights_norm(bool(c["norm_topk_prob"]))
        tensors = _stack_experts(tensors, c["num_hidden_layers"], experts)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(c["num_hidden_layers"]):
        names.update(_gguf_names(family, i))
    for hf_name, array in tensors.items():
        if hf_name == "lm_head.weight" and c.get("tie_word_embeddings"):
            continue
        if family.norm_shift and hf_name.endswith("norm.weight"):
            array = array + np.float32(1)
        if family.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            array = _permute(array, heads if "q_proj" in hf_name else kv_heads)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if q4_1_experts and "_exps." in hf_name:
            q4_1 = gguf.GGMLQuantizationType.Q4_1
            w.add_tensor(names.get(hf_name, hf_name), gguf.quants.quantize(array, q4_1), raw_dtype=q4_1)
            continue
        w.add_tensor(names.get(hf_name, hf_name), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def routed_experts(folder: Path, tokens: list[int], k: int) -> list[set[int]]:
    """The experts transformers routes ``tokens`` to, per layer (a Qwen3-MoE checkpoint)."""
    import torch

    with torch.no_grad():
        router_logits = _model(folder)(torch.tensor([tokens]), output_router_logits=True).router_logits
    return [set(torch.topk(logits.float().softmax(-1), k, dim=-1).indices.flatten().tolist()) for logits in router_logits]
