"""GGUF files of the llama architecture (llama.cpp's format), read with the ``gguf`` package.

Quantized tensors (Q4_0, Q4_1, Q8_0, F16, F32...) are dequantized to float32 with
``gguf.quants.dequantize``; the compile stage re-quantizes to the artifact's own scheme.

llama.cpp's converter permutes the rows of Q and K so RoPE can rotate adjacent pairs (GPT-J
style). TVM's paged-KV kernels rotate the two halves of each head (Hugging Face style), so those
rows are permuted back here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from compile.model.llama_hf import HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD, hf_layer_names
from compile.sources.base import DecoderSource
from compile.sources.gguf_tokenizer import build_tokenizer_json
from ferrum.errors import ModelSourceError
from ferrum.manifest import GenerationConfig
from ferrum.model_config import DecoderConfig

_LAYER_PARTS = {
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
    "attn_norm": "input_norm",
    "ffn_norm": "post_norm",
}
_GLOBAL = {"token_embd.weight": HF_EMBED, "output_norm.weight": HF_FINAL_NORM, "output.weight": HF_LM_HEAD}


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
        if arch != "llama":
            raise ModelSourceError(
                f"{self.path}: unsupported GGUF architecture {arch!r}; Ferrum compiles 'llama' GGUFs"
            )
        self.config = self._read_config()
        self._by_hf_name = self._index_tensors()
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

    def _check_tensor_extents(self) -> None:
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise ModelSourceError(
                    f"{self.path} is truncated: tensor {t.name} needs bytes up to "
                    f"{t.data_offset + t.n_bytes}, the file has {size}"
                )

    def _read_config(self) -> DecoderConfig:
        hidden = int(self._require("llama.embedding_length"))
        heads = int(self._require("llama.attention.head_count"))
        scaling = self._field("llama.rope.scaling.type")
        if scaling not in (None, "none"):
            raise ModelSourceError(f"{self.path}: RoPE scaling {scaling!r} is not supported for GGUF sources")
        if "rope_freqs.weight" in {t.name for t in self._reader.tensors}:
            raise ModelSourceError(f"{self.path}: per-frequency RoPE factors (rope_freqs) are not supported")
        vocab = self._field("llama.vocab_size") or len(self._require("tokenizer.ggml.tokens"))
        try:
            return DecoderConfig(
                vocab_size=int(vocab),
                hidden_size=hidden,
                intermediate_size=int(self._require("llama.feed_forward_length")),
                num_hidden_layers=int(self._require("llama.block_count")),
                num_attention_heads=heads,
                num_key_value_heads=int(self._field("llama.attention.head_count_kv", heads)),
                head_dim=int(self._field("llama.attention.key_length", hidden // heads)),
                rms_norm_eps=float(self._field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(self._field("llama.rope.freq_base", 10000.0)),
                context_length=int(self._field("llama.context_length", 2048)),
                tie_word_embeddings="output.weight" not in {t.name for t in self._reader.tensors},
            )
        except ValueError as exc:
            raise ModelSourceError(f"{self.path}: inconsistent model metadata: {exc}") from None

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
            hf = _GLOBAL.get(t.name)
            match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
            if match and match.group(2) in _LAYER_PARTS:
                hf = hf_layer_names(int(match.group(1)))[_LAYER_PARTS[match.group(2)]]
            if hf is None:
                raise ModelSourceError(f"{self.path}: unexpected tensor {t.name!r} for a llama model")
            index[hf] = t
        return index

    def tensor_names(self) -> set[str]:
        return set(self._by_hf_name)

    @property
    def int4_weights(self) -> bool:
        return any(t.tensor_type.name in ("Q4_0", "Q4_1") for t in self._by_hf_name.values())

    def tensor(self, name: str) -> np.ndarray:
        t = self._by_hf_name[name]
        try:
            w = self._gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError:
            raise ModelSourceError(f"{self.path}: tensor {t.name} has unsupported type {t.tensor_type.name}") from None
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = w.reshape(shape)
        cfg = self.config
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, cfg.num_key_value_heads)
        return w
