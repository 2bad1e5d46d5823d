"""Hugging Face model folders: ``config.json``, (sharded) ``*.safetensors``, ``tokenizer.json``.

Reads checkpoints of every decoder architecture in ``compile/model/architectures.py`` (by the
config's ``model_type``: Llama, Mistral, Qwen2/3, Qwen3-MoE, Phi-3, Gemma 2/3), whose mapping
turns ``config.json`` into a ``DecoderConfig``. Safetensors are read by a small memory-mapped
reader so bfloat16 checkpoints work with numpy alone.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from compile.model.architectures import architecture_for_hf
from compile.sources.base import DecoderSource
from ferrum.errors import ModelSourceError
from ferrum.manifest import GenerationConfig

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class SafetensorsFile:
    """Memory-mapped view of one .safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                (header_len,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(header_len))
        except (OSError, struct.error, ValueError) as exc:
            raise ModelSourceError(f"{path} is not a readable safetensors file: {exc}") from None
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + header_len
        self._map = np.memmap(path, dtype=np.uint8, mode="r")

    def names(self) -> list[str]:
        return list(self._header)

    def get(self, name: str) -> np.ndarray:
        info = self._header[name]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelSourceError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = (self._data_start + o for o in info["data_offsets"])
        if end > self._map.size:
            raise ModelSourceError(f"{self.path} is truncated (tensor {name})")
        raw = self._map[begin:end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)


class HFSource(DecoderSource):
    format = "hf"

    def __init__(self, folder: Path):
        self.path = Path(folder)
        config = self._json("config.json", required=True)
        architecture = architecture_for_hf(config.get("model_type"))
        if architecture is None:
            raise ModelSourceError(f"{self.path}: model_type {config.get('model_type')!r} is not a decoder Ferrum compiles")
        self.config = architecture.hf_mapping().read_config(config, self.path)
        self._files = self._open_shards()
        self._where = {name: f for f in self._files for name in f.names()}
        tokenizer_path = self.path / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelSourceError(f"{self.path}: tokenizer.json is missing")
        self.tokenizer_json = tokenizer_path.read_text()
        self.name = self.path.name.lower()
        self.generation = self._read_generation(config)

    def _json(self, name: str, required: bool = False) -> dict[str, Any]:
        path = self.path / name
        if not path.is_file():
            if required:
                raise ModelSourceError(f"{self.path}: {name} is missing")
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise ModelSourceError(f"{path} is not valid JSON: {exc}") from None

    def _open_shards(self) -> list[SafetensorsFile]:
        index = self._json("model.safetensors.index.json")
        if index:
            names = sorted(set(index["weight_map"].values()))
        else:
            names = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not names:
            raise ModelSourceError(f"{self.path}: no *.safetensors weights found")
        missing = [n for n in names if not (self.path / n).is_file()]
        if missing:
            raise ModelSourceError(f"{self.path}: weight shards missing: {', '.join(missing)}")
        return [SafetensorsFile(self.path / n) for n in names]

    def _token_id(self, token: Any) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        if not isinstance(token, str):
            return None
        for added in json.loads(self.tokenizer_json).get("added_tokens", []):
            if added["content"] == token:
                return int(added["id"])
        return None

    def _read_generation(self, config: dict[str, Any]) -> GenerationConfig:
        gen = self._json("generation_config.json")
        tok_cfg = self._json("tokenizer_config.json")
        eos = gen.get("eos_token_id", config.get("eos_token_id"))
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        tok_eos = self._token_id(tok_cfg.get("eos_token"))
        if tok_eos is not None and tok_eos not in eos_ids:
            eos_ids.append(tok_eos)
        if not eos_ids:
            raise ModelSourceError(f"{self.path}: no eos_token_id in generation_config.json or config.json")
        bos = gen.get("bos_token_id", config.get("bos_token_id"))
        template = tok_cfg.get("chat_template")
        if isinstance(template, list):
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja = self.path / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text()
        return GenerationConfig(
            bos_token_id=bos,
            eos_token_ids=[int(e) for e in eos_ids],
            context_length=self.config.context_length,
            chat_template=template,
            add_bos_token=bool(tok_cfg.get("add_bos_token", bos is not None)),
            pad_token_id=gen.get("pad_token_id", config.get("pad_token_id")),
        )

    def tensor_names(self) -> set[str]:
        return set(self._where)

    def tensor(self, name: str) -> np.ndarray:
        return self._where[name].get(name)
