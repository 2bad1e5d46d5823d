"""How a decoder block departs from the plain Llama block that Ferrum's fused kernels implement.

Both kernel sets, CUDA (``compile/kernels/ops.py``) and CPU (``compile/kernels/cpu_ops.py``), fuse
exactly RMSNorm, SwiGLU, full causal attention and bias-free output and MLP projections; each adds
its own limits (dtypes, widths, head dims, CPU features) to these. The Llama network adds a q/k/v
bias and q/k norm (Qwen2, Qwen3) with TVM ops between the kernels' QKV projection and attention
(``compile/model/llama.py``); only the CUDA build has been checked that way, so the CPU kernels
still count both as departures. A model with any departure builds with TVM's kernels, and the
compile log names why.
"""

from __future__ import annotations

from ferrum.model_config import DecoderConfig


def block_departures(cfg: DecoderConfig, *, qkv_extras: bool = False) -> list[str]:
    """What the fused kernels do not implement in ``cfg``'s blocks (empty: a plain Llama block).

    ``qkv_extras``: the kernel set runs with the q/k/v bias and q/k norm added between its QKV
    projection and attention, so neither is a departure."""
    departures = []
    biases = [name for name, on in (("q/k/v", cfg.qkv_bias and not qkv_extras), ("output", cfg.o_bias),
                                    ("MLP", cfg.mlp_bias)) if on]
    if biases:
        departures.append(f"{', '.join(biases)} projection biases (the kernels take none)")
    if cfg.qk_norm and not qkv_extras:
        departures.append("q/k norm (not fused)")
    if cfg.sliding_window:
        departures.append("sliding-window attention (the attention kernels attend to the whole context)")
    if cfg.activation != "silu" or cfg.norm != "rmsnorm":
        departures.append(f"{cfg.activation}/{cfg.norm} (the kernels fuse silu and rmsnorm)")
    gemma = (cfg.post_norms, cfg.embed_scale != 1, cfg.attention_scale, cfg.final_logit_softcap,
             cfg.attn_logit_softcap, cfg.local_layers)
    if any(gemma):
        departures.append("Gemma's extra norms, scales, soft-caps or local RoPE layers (not fused)")
    if cfg.num_experts:
        departures.append(f"{cfg.num_experts} routed experts (no grouped expert kernel)")
    return departures


def qkv_extras_used(cfg: DecoderConfig) -> list[str]:
    """The q/k/v additions the network makes with TVM ops around the kernels (for the compile log)."""
    return [what for what, on in (("q/k/v bias add", cfg.qkv_bias), ("per-head q/k RMSNorm", cfg.qk_norm)) if on]
