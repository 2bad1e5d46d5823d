"""Hugging Face BERT folders as sentence-embedding models (sentence-transformers layout).

A folder holds ``config.json`` (``model_type: bert``), ``*.safetensors`` and ``tokenizer.json``.
What turns token states into one vector comes from sentence-transformers' files when present:
``modules.json`` lists the pipeline (a ``Pooling`` module, whose folder holds ``config.json`` with
the pooling mode, and optionally a ``Normalize`` module); ``sentence_bert_config.json`` gives
``max_seq_length``. A folder without ``modules.json`` gets what sentence-transformers itself does
for a plain BERT: mean pooling, no normalization, the tokenizer's ``model_max_length``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compile.sources.base import ModelSource
from compile.sources.hf_source import SafetensorsFile
from ferrum.embedding_config import POOLING_MODES, BertConfig
from ferrum.errors import ModelSourceError

_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class BertSource(ModelSource):
    """A BERT encoder with its pooling; tensors by Hugging Face ``BertModel`` name, float32."""

    architecture = "bert"
    format = "hf"

    def __init__(self, folder: Path):
        self.path = Path(folder)
        config = self._json(self.path / "config.json")
        tokenizer_path = self.path / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelSourceError(f"{self.path}: tokenizer.json is missing")
        self.tokenizer_json = tokenizer_path.read_text()
        self.config = self._read_config(config)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"{self.path}: no *.safetensors weights found")
        self._where = {name: f for f in map(SafetensorsFile, files) for name in f.names()}
        self.name = self._packaged_name() or self.path.name.lower()

    def _packaged_name(self) -> str | None:
        """A model shipped in a pip package is named by its known name, not by its folder ("model")."""
        from compile.sources import KNOWN_MODELS, packaged_model_path

        for name in KNOWN_MODELS:
            try:
                if packaged_model_path(name).resolve() == self.path.resolve():
                    return name
            except ModelSourceError:
                continue
        return None

    @staticmethod
    def _json(path: Path, default: Any = None) -> Any:
        if not path.is_file():
            if default is None:
                raise ModelSourceError(f"{path} is missing")
            return default
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise ModelSourceError(f"{path} is not valid JSON: {exc}") from None

    def _pipeline(self) -> tuple[str, bool]:
        """(pooling mode, normalize) from sentence-transformers' ``modules.json``."""
        modules = self._json(self.path / "modules.json", default=[])
        if not modules:
            return "mean", False
        kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
        pooling = kinds.get("Pooling")
        if pooling is None:
            raise ModelSourceError(f"{self.path}/modules.json has no Pooling module")
        unknown = set(kinds) - {"Transformer", "Pooling", "Normalize"}
        if unknown:
            raise ModelSourceError(f"{self.path}/modules.json: unsupported modules {', '.join(sorted(unknown))}")
        cfg = self._json(self.path / pooling.get("path", "") / "config.json")
        modes = [mode for key, mode in _POOLING_KEYS.items() if cfg.get(key)] or [cfg.get("pooling_mode")]
        if len(modes) != 1 or modes[0] not in POOLING_MODES:
            raise ModelSourceError(
                f"{self.path}: pooling {modes} is not supported; Ferrum compiles {', '.join(POOLING_MODES)} pooling"
            )
        return modes[0], "Normalize" in kinds

    def _max_length(self, c: dict[str, Any]) -> int:
        st = self._json(self.path / "sentence_bert_config.json", default={})
        tok = self._json(self.path / "tokenizer_config.json", default={})
        limit = int(c.get("max_position_embeddings", 512))
        return int(st.get("max_seq_length") or min(int(tok.get("model_max_length", limit)), limit))

    def _read_config(self, c: dict[str, Any]) -> BertConfig:
        if c.get("hidden_act", "gelu") != "gelu":
            raise ModelSourceError(f"{self.path}: activation {c['hidden_act']!r} is not supported (only gelu)")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ModelSourceError(f"{self.path}: position embeddings {c['position_embedding_type']!r} are not supported")
        pooling, normalize = self._pipeline()
        try:
            return BertConfig(
                vocab_size=c["vocab_size"],
                hidden_size=c["hidden_size"],
                intermediate_size=c["intermediate_size"],
                num_hidden_layers=c["num_hidden_layers"],
                num_attention_heads=c["num_attention_heads"],
                layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
                max_position_embeddings=int(c.get("max_position_embeddings", 512)),
                type_vocab_size=int(c.get("type_vocab_size", 2)),
                max_length=self._max_length(c),
                pooling=pooling,
                normalize=normalize,
            )
        except KeyError as exc:
            raise ModelSourceError(f"{self.path}/config.json lacks {exc}") from None
        except ValueError as exc:
            raise ModelSourceError(f"{self.path}: {exc}") from None

    def tensor_names(self) -> set[str]:
        return set(self._where)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor by ``BertModel`` name; a ``bert.`` prefix (``BertFor*`` checkpoints) is accepted."""
        for key in (name, f"bert.{name}"):
            if key in self._where:
                return self._where[key].get(key)
        raise ModelSourceError(f"{self.path}: tensor {name} is missing")

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "pooling": self.config.pooling, "normalize": str(self.config.normalize)}
