"""The typed ``extra`` of each modality's manifest: what a builder records and its runtime reads.

A builder constructs one of these records and the runtime reads its attributes, so the two
stages share field names through this module instead of repeating string keys. Field names are
the JSON keys, so manifests written before these types existed load unchanged. ``from_dict``
refuses a missing, unknown or mistyped field with an ``ArtifactError`` naming it, so a
malformed manifest fails when it is opened rather than inside a model call.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Self

from ferrum.errors import ArtifactError


class Record:
    """A dataclass that reads and writes itself as JSON-shaped dicts, checking field types on read."""

    @classmethod
    def from_dict(cls, data: Any, where: str = "extra") -> Self:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must be an object, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ArtifactError(f"{where} has unknown fields: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, f in known.items():
            if name in data:
                values[name] = _convert(hints[name], data[name], f"{where}.{name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ArtifactError(f"{where} lacks the field {name!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped dict; optional fields that are unset (None) are left out, as old manifests have them."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.to_dict() if isinstance(value, Record) else value
        return out


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (nested records built); ArtifactError if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        for option in args:
            try:
                return _convert(option, value, where)
            except ArtifactError:
                continue
        raise ArtifactError(f"{where} must be {' or '.join(_name(a) for a in args)}, not {_json_name(value)}")
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ArtifactError(f"{where} must be a list, not {_json_name(value)}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ArtifactError(f"{where} must be an object, not {_json_name(value)}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is type(None) and value is None:
        return None
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ArtifactError(f"{where} must be {_name(tp)}, not {_json_name(value)}")


def _name(tp: Any) -> str:
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _json_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass
class ArtifactExtra(Record):
    """What every modality records: the weight names in the order the compiled functions take them."""

    param_names: list[str]


@dataclass
class LlmExtra(ArtifactExtra):
    """``extra`` of an LLM artifact."""

    decode_max_batch: int | None = None  # CUDA graph builds: the largest decode batch the library plans for
    param_shapes: dict[str, list[Any]] | None = None  # shape-only benchmark builds: [shape, dtype] per weight
    weights: str | None = None  # shape-only benchmark builds: where the weights come from instead of weights/
    # parameters split under a storage-binding limit: [parameter cut from, first row, row after the last] per shard
    param_splits: dict[str, list[Any]] | None = None


@dataclass
class EmbeddingInputs(Record):
    """How the ``embed`` function is fed: right-padded int32 (batch, seq) blocks."""

    function: str
    tensors: list[str]
    shape: list[str]
    dtype: str
    padding: str
    max_length: int


@dataclass
class EmbeddingOutput(Record):
    dtype: str
    shape: list[str | int]


@dataclass
class EmbeddingExtra(ArtifactExtra):
    """``extra`` of a sentence-embedding artifact: its inputs and what a client sees."""

    inputs: EmbeddingInputs
    output: EmbeddingOutput
    embedding_dim: int
    max_length: int  # longer texts are truncated to this many tokens
    pooling: str
    normalize: bool


@dataclass
class WhisperSpecialTokens(Record):
    """Ids of Whisper's control tokens."""

    eot: int
    sot: int
    transcribe: int
    translate: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int


@dataclass
class TranscriptionExtra(ArtifactExtra):
    """``extra`` of a transcription (Whisper) artifact: the audio front end and control tokens."""

    sample_rate: int
    n_mels: int
    n_fft: int
    hop_length: int
    n_frames: int  # mel frames per window
    chunk_seconds: int
    special_tokens: WhisperSpecialTokens


WHISPER_DECODING_FILE = "whisper.json"


@dataclass
class WhisperDecoding(Record):
    """``whisper.json`` beside a Whisper library: everything its greedy decoding loop and log-mel need."""

    special_tokens: WhisperSpecialTokens
    languages: dict[str, int]  # language code → its language token id
    suppress_tokens: list[int]  # never sampled
    suppress_tokens_at_begin: list[int]  # not sampled as the first token
    sample_rate: int
    n_mels: int
    n_fft: int
    hop_length: int
    n_frames: int
    chunk_seconds: int


@dataclass
class TtsFrontEnd(Record):
    """What the runtime needs to turn text into phoneme ids and noise."""

    phonemizer: str
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    sample_rate: int
    hop_length: int
    noise_scale: float
    length_scale: float
    noise_w: float


@dataclass
class TtsExtra(ArtifactExtra):
    """``extra`` of a speech-synthesis (Piper) artifact."""

    front_end: TtsFrontEnd


ModalityExtra = LlmExtra | EmbeddingExtra | TranscriptionExtra | TtsExtra

EXTRA_TYPES: dict[str, type[ArtifactExtra]] = {
    "llm": LlmExtra,
    "embedding": EmbeddingExtra,
    "transcription": TranscriptionExtra,
    "tts": TtsExtra,
}
