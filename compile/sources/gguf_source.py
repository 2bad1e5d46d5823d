"""GGUF files (llama.cpp's format) of the architectures below, read with the ``gguf`` package.

Quantized tensors (Q4_0, Q4_1, Q8_0, F16, F32...) are dequantized to float32 with
``gguf.quants.dequantize``; the compile stage re-quantizes to the artifact's own scheme.

Tensors are served under the Hugging Face names of the architecture's mapping
(``compile/model/llama_hf.py``), so one weight plan covers both containers; the feature flags
that a Llama-style GGUF does not spell out in its metadata (Q/K/V and output biases, q/k norm)
are read from which tensors it holds. llama.cpp's converter permutes the rows of Q and K of
``llama`` files so RoPE can rotate adjacent pairs (GPT-J style). TVM's paged-KV kernels rotate
the two halves of each head (Hugging Face style), so those rows are permuted back here; the
other architectures are stored unpermuted (llama.cpp's NEOX rope).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compile.model.llama_hf import HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD, hf_layer_names, window_and_context
from compile.model.qwen_hf import expert_names
from compile.sources.base import DecoderSource
from compile.sources.gguf_tokenizer import build_tokenizer_json
from ferrum.errors import ModelSourceError
from ferrum.manifest import GenerationConfig
from ferrum.model_config import DecoderConfig

_LAYER_PARTS = {
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_qkv": "qkv",
    "attn_output": "o",
    "attn_q_norm": "q_norm",
    "attn_k_norm": "k_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
    "attn_norm": "input_norm",
    "ffn_norm": "post_norm",
}
_GLOBAL = {"token_embd.weight": HF_EMBED, "output_norm.weight": HF_FINAL_NORM, "output.weight": HF_LM_HEAD}


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one llama.cpp architecture maps onto ours."""

    architecture: str  # DecoderConfig.architecture
    permuted_qk: bool  # llama.cpp permuted the Q/K rows for GPT-J-style RoPE
    fused_gate_up: bool = False  # ``ffn_up`` holds gate and up rows (Phi-3)
    gemma: bool = False  # Gemma's norms (stored + 1), scaled embeddings, local layers every ``swa_period``-th
    swa_period: int = 0  # llama.cpp's built-in pattern: every n-th layer is global (when the file names none)


GGUF_ARCHITECTURES = {
    "llama": GGUFArchitecture("llama", permuted_qk=True),  # Llama, SmolLM, Mistral (llama.cpp writes them as llama)
    "qwen2": GGUFArchitecture("qwen2", permuted_qk=False),
    "qwen3": GGUFArchitecture("qwen3", permuted_qk=False),
    "phi3": GGUFArchitecture("phi3", permuted_qk=False, fused_gate_up=True),
    "qwen3moe": GGUFArchitecture("qwen3_moe", permuted_qk=False),
    "gemma2": GGUFArchitecture("gemma2", permuted_qk=False, gemma=True, swa_period=2),
    "gemma3": GGUFArchitecture("gemma3", permuted_qk=False, gemma=True, swa_period=6),
}
# Gemma's per-layer norms under llama.cpp's names (Llama's ``ffn_norm`` is Gemma's pre-MLP norm)
_GEMMA_PARTS = {"post_attention_norm": "post_norm", "ffn_norm": "pre_ffn_norm", "post_ffw_norm": "post_ffn_norm"}
# Qwen3-MoE: llama.cpp stacks the experts of a layer in one 3-D tensor; served one expert at a time
_EXPERT_PARTS = {"ffn_gate_exps": "gate", "ffn_up_exps": "up", "ffn_down_exps": "down"}
LONGROPE_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")  # llama.cpp's Phi-3 LongRoPE
LOCAL_ROPE_BASE = 10000.0  # llama.cpp's Gemma 3 local-layer base when the file has no rope.freq_base_swa


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of Q/K rows (interleaved pairs back to rotate-half)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


class GGUFSource(DecoderSource):
    format = "gguf"

    def __init__(self, path: Path):
        import gguf  # imported here: only GGUF sources need it

        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(self.path)
        except Exception as exc:  # noqa: BLE001  (the reader raises ValueError, IndexError, struct errors...)
            if "reshape" in str(exc):  # a tensor's data runs past the end of the file
                raise ModelSourceError(f"{self.path} is truncated: tensor data runs past the end of the file") from None
            raise ModelSourceError(f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self._gguf = gguf
        self._check_tensor_extents()
        arch = self._field("general.architecture")
        if arch not in GGUF_ARCHITECTURES:
            raise ModelSourceError(
                f"{self.path}: unsupported GGUF architecture {arch!r}; Ferrum compiles "
                f"{', '.join(repr(a) for a in GGUF_ARCHITECTURES)} GGUFs"
            )
        self._arch_key, self._arch = arch, GGUF_ARCHITECTURES[arch]
        self.config = self._read_config()
        self._by_hf_name = self._index_tensors()
        self._last = None
        self.name = re.sub(r"[._-](q\d+_\w+|f16|f32|bf16)$", "", self.path.stem, flags=re.IGNORECASE).lower()
        self.tokenizer_json, special = build_tokenizer_json(self._field, self.path)
        self.generation = self._read_generation(special)

    # -- metadata ---------------------------------------------------------------------------
    def _field(self, key: str, default=None):
        field = self._reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value

    def _require(self, key: str):
        value = self._field(key)
        if value is None:
            raise ModelSourceError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return value

    def _longrope(self) -> dict:
        """Phi-3's LongRoPE as llama.cpp writes it: the factor sets as tensors, the original context
        and the attention factor as keys (the same ``rope_scaling`` as ``phi3_hf.longrope_parameters``)."""
        if self._arch_key != "phi3":
            raise ModelSourceError(f"{self.path}: LongRoPE factors in a {self._arch_key!r} GGUF are not supported")
        tensors = {t.name: t for t in self._reader.tensors}
        if LONGROPE_TENSORS[1] not in tensors:
            raise ModelSourceError(f"{self.path}: LongRoPE needs both {' and '.join(LONGROPE_TENSORS)}")
        long, short = (np.asarray(tensors[n].data, dtype=np.float32).ravel().tolist() for n in LONGROPE_TENSORS)
        a = self._arch_key
        return {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                "original_max_position_embeddings": int(self._require(f"{a}.rope.scaling.original_context_length")),
                "attention_factor": float(self._field(f"{a}.rope.scaling.attn_factor", 1.0))}

    def _check_tensor_extents(self) -> None:
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise ModelSourceError(
                    f"{self.path} is truncated: tensor {t.name} needs bytes up to "
                    f"{t.data_offset + t.n_bytes}, the file has {size}"
                )

    def _read_config(self) -> DecoderConfig:
        a = self._arch_key
        hidden = int(self._require(f"{a}.embedding_length"))
        heads = int(self._require(f"{a}.attention.head_count"))
        scaling, rope_scaling = self._field(f"{a}.rope.scaling.type"), {}
        if scaling == "linear" and self._arch.gemma:  # Gemma 3's global layers (4B and up)
            rope_scaling = {"rope_type": "linear", "factor": float(self._require(f"{a}.rope.scaling.factor"))}
        elif scaling not in (None, "none"):
            raise ModelSourceError(f"{self.path}: RoPE scaling {scaling!r} is not supported for GGUF sources")
        names = {t.name for t in self._reader.tensors}
        if "rope_freqs.weight" in names:
            raise ModelSourceError(f"{self.path}: per-frequency RoPE factors (rope_freqs) are not supported")
        if LONGROPE_TENSORS[0] in names:
            rope_scaling = self._longrope()
        head_dim = int(self._field(f"{a}.attention.key_length", hidden // heads))
        if int(self._field(f"{a}.rope.dimension_count", head_dim)) != head_dim:
            raise ModelSourceError(f"{self.path}: partial rotary embeddings ({a}.rope.dimension_count) are not supported")
        vocab = self._field(f"{a}.vocab_size") or len(self._require("tokenizer.ggml.tokens"))
        window, context = window_and_context(self._field(f"{a}.attention.sliding_window"),
                                             int(self._field(f"{a}.context_length", 2048)))
        flags = self._gemma_flags(hidden, heads, head_dim, names) if self._arch.gemma else {}
        sliding = flags.pop("window_layers", list(range(int(self._require(f"{a}.block_count")))))
        if self._field(f"{a}.expert_count"):
            flags = {"num_experts": int(self._field(f"{a}.expert_count")),
                     "num_experts_per_tok": int(self._require(f"{a}.expert_used_count")),
                     "moe_intermediate_size": int(self._require(f"{a}.expert_feed_forward_length")),
                     "norm_topk_prob": bool(self._field(f"{a}.expert_weights_norm", True))}  # llama.cpp's default
        try:
            return DecoderConfig(
                vocab_size=int(vocab),
                hidden_size=hidden,
                intermediate_size=int(self._require(f"{a}.feed_forward_length")),
                num_hidden_layers=int(self._require(f"{a}.block_count")),
                num_attention_heads=heads,
                num_key_value_heads=int(self._field(f"{a}.attention.head_count_kv", heads)),
                head_dim=head_dim,
                rms_norm_eps=float(self._field(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(self._field(f"{a}.rope.freq_base", 10000.0)),
                context_length=context,
                sliding_window=window,
                window_layers=sliding if window else [],
                tie_word_embeddings="output.weight" not in names,
                rope_scaling=rope_scaling,
                architecture=self._arch.architecture,
                qkv_bias="blk.0.attn_q.bias" in names or "blk.0.attn_qkv.bias" in names,
                o_bias="blk.0.attn_output.bias" in names,
                mlp_bias="blk.0.ffn_down.bias" in names,
                qk_norm="blk.0.attn_q_norm.weight" in names,
                **flags,
            )
        except ValueError as exc:
            raise ModelSourceError(f"{self.path}: inconsistent model metadata: {exc}") from None

    def _gemma_flags(self, hidden: int, heads: int, head_dim: int, names: set[str]) -> dict:
        """Gemma's departures, as llama.cpp reads them: its metadata, else its built-in rules."""
        a, layers = self._arch_key, int(self._require(f"{self._arch_key}.block_count"))
        pattern = self._field(f"{a}.attention.sliding_window_pattern")
        if isinstance(pattern, list):
            sliding = [i for i, on in enumerate(pattern) if on]
        else:
            period = int(pattern or self._arch.swa_period)
            sliding = [i for i in range(layers) if (i + 1) % period]
        # the sliding layers rotate with their own base only where the file gives one that differs
        local_theta = float(self._field(f"{a}.rope.freq_base_swa", LOCAL_ROPE_BASE if a == "gemma3" else 0.0))
        if not local_theta or local_theta == float(self._field(f"{a}.rope.freq_base", 10000.0)):
            local_theta = 0.0
        local = sliding if local_theta else []
        # llama.cpp scales queries by head_dim ** -0.5, except the 27B models' hidden / heads (query_pre_attn_scalar)
        scalar = hidden / heads if layers in (46, 62) else head_dim
        return {
            "activation": "gelu_pytorch_tanh", "post_norms": True, "embed_scale": hidden**0.5,
            "attention_scale": scalar**-0.5, "local_layers": local, "local_rope_theta": local_theta,
            "window_layers": sliding,
            "final_logit_softcap": float(self._field(f"{a}.final_logit_softcapping", 0.0)),
            "attn_logit_softcap": float(self._field(f"{a}.attn_logit_softcapping", 0.0)),
        }

    def _read_generation(self, special: dict[str, int | None]) -> GenerationConfig:
        eos = [special["eos"]] if special["eos"] is not None else []
        if special["eot"] is not None and special["eot"] not in eos:
            eos.append(special["eot"])
        if not eos:
            raise ModelSourceError(f"{self.path}: the GGUF names no EOS token")
        return GenerationConfig(
            bos_token_id=special["bos"],
            eos_token_ids=eos,
            context_length=self.config.context_length,
            chat_template=self._field("tokenizer.chat_template"),
            add_bos_token=bool(self._field("tokenizer.ggml.add_bos_token", special["bos"] is not None)),
            pad_token_id=special["pad"],
        )

    # -- tensors ----------------------------------------------------------------------------
    def _index_tensors(self) -> dict[str, object]:
        index = {}
        for t in self._reader.tensors:
            if t.name in LONGROPE_TENSORS:  # read into the config
                continue
            hf = _GLOBAL.get(t.name)
            match = re.fullmatch(r"blk\.(\d+)\.(ffn_gate_inp|ffn_gate_exps|ffn_up_exps|ffn_down_exps)\.weight", t.name)
            if match and self.config.num_experts:
                layer, part = int(match.group(1)), match.group(2)
                if part == "ffn_gate_inp":
                    index[expert_names(layer, 0)["router"]] = (t, None)
                else:
                    for e in range(self.config.num_experts):
                        index[expert_names(layer, e)[_EXPERT_PARTS[part]]] = (t, e)
                continue
            match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", t.name)
            if match and (match.group(2) in _LAYER_PARTS or self._arch.gemma and match.group(2) in _GEMMA_PARTS):
                part = (self._arch.gemma and _GEMMA_PARTS.get(match.group(2))) or _LAYER_PARTS[match.group(2)]
                if part == "up" and self._arch.fused_gate_up:
                    part = "gate_up"
                hf = hf_layer_names(int(match.group(1))).get(part if match.group(3) == "weight" else f"{part}_bias")
            if hf is None:
                raise ModelSourceError(f"{self.path}: unexpected tensor {t.name!r} for a {self._arch_key} model")
            index[hf] = (t, None)
        return index

    def tensor_names(self) -> set[str]:
        return set(self._by_hf_name)

    @property
    def int4_weights(self) -> bool:
        return any(t.tensor_type.name in ("Q4_0", "Q4_1") for t, _ in self._by_hf_name.values())

    def tensor(self, name: str) -> np.ndarray:
        t, expert = self._by_hf_name[name]
        w = self._dequantized(t)
        if expert is not None:
            return w[expert]
        cfg = self.config
        if self._arch.gemma and name.endswith("norm.weight"):
            return w - np.float32(1)  # llama.cpp stored Gemma's 1 + weight; the weight plan adds the 1 back
        if not self._arch.permuted_qk:
            return w
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_key_value_heads)
        return w

    def _dequantized(self, t) -> np.ndarray:
        """``t`` in float32, in numpy's dimension order; the last one is kept, since the experts of
        a stacked tensor are read one after another."""
        if self._last is not None and self._last[0] is t:
            return self._last[1]
        try:
            w = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError:
            raise ModelSourceError(f"{self.path}: tensor {t.name} has unsupported type {t.tensor_type.name}") from None
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF lists dimensions innermost first
        self._last = (t, w)
        return w
