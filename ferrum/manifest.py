"""The artifact format: a folder with a versioned ``manifest.json`` that says what is inside.

This is the only thing the compile stage and the runtime share. The compile stage writes it
(``Manifest.write``); the runtime reads it and refuses anything it cannot run
(``Manifest.load`` + ``verify_files``) before touching TVM.

Layout of an LLM artifact::

    manifest.json        this schema
    model.so             compiled TVM library (Relax VM executable + kernels)
    kernels/*.fatbin     CUDA only: device code compiled ahead of time, keyed by kernel-source hash
    weights/             TVM tensor cache: tensor-cache.json + params_shard_*.bin
    tokenizer.json       Hugging Face ``tokenizers`` file
    generation.json      chat template, BOS/EOS ids, context length
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ferrum.errors import ArtifactError
from ferrum.hash_cache import file_sha256
from ferrum.manifest_extra import EXTRA_TYPES, ModalityExtra

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Ferrum's WebGPU runtime plugin in a vulkan artifact's kernels/ (built by compile/webgpu_plugin.py)
WEBGPU_PLUGIN = "ferrum_webgpu.so"
MODALITIES = tuple(EXTRA_TYPES)  # each modality's ``extra`` has its own type (ferrum/manifest_extra.py)
# Functions every LLM artifact's library exports: the runtime's whole interface to the network, whatever
# its architecture (see compile/model/llama.py for their signatures).
LLM_FUNCTIONS = ("embed", "batch_prefill", "batch_decode", "batch_verify", "create_paged_kv_cache")
# Columns of the params argument of an LLM artifact's ``sample_tokens(logits[b, vocab], params[b, 5])``
# (CUDA builds): temperature (0 = greedy), top_p, top_k (0 = off), min_p, a uniform number in [0, 1).
# The CUDA sampler's column indices are generated from this tuple (compile/kernels/build.py).
SAMPLE_PARAMS = ("temperature", "top_p", "top_k", "min_p", "uniform")


def sample_row(*, temperature: float, top_p: float, top_k: float, min_p: float, uniform: float) -> tuple[float, ...]:
    """One row of ``sample_tokens``' params in ``SAMPLE_PARAMS`` order (keyword arguments, so a
    reordering of the columns cannot silently swap values)."""
    values = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p, "uniform": uniform}
    return tuple(float(values[name]) for name in SAMPLE_PARAMS)


def mask_words(vocab_size: int) -> int:
    """int32 words of one row of a grammar bitmask, the ``masks`` argument of a CUDA artifact's
    ``sample_tokens_masked(logits[b, vocab], params[b, 5], masks[b, mask_words(vocab)])``: bit
    ``t % 32`` of word ``t // 32`` set = token ``t`` allowed (llguidance's layout)."""
    return (vocab_size + 31) // 32


# A row that samples greedily and draws no random number: for rows whose token is thrown away.
IGNORED_SAMPLE_ROW = sample_row(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, uniform=0.0)
# Device type of the library's code for artifacts written before the manifest recorded it (frozen:
# newer artifacts carry ``target.device_type``, taken from the compile stage's target table).
_LEGACY_DEVICE_TYPES = {"llvm": "cpu", "cuda": "cuda"}


@dataclass
class TargetInfo:
    """What the library was compiled for.

    ``kind`` is the compile target (``llvm``, ``cuda``: ``compile/targets.py``); ``device_type`` the
    runtime device its code runs on (``cpu``, ``cuda``), which picks the runtime's device entry
    (``runtime/tvm_env.py``); ``arch`` the device architectures (``sm_80,sm_90a``); ``triple`` the
    host triple; ``cpu_features`` CPU flags the host code needs (as in /proc/cpuinfo);
    ``requirements`` what the device must offer beyond its type (WebGPU: ``features``, ``limits``).
    """

    kind: str
    triple: str
    arch: str | None = None
    cpu_features: list[str] = field(default_factory=list)
    device_type: str = ""
    requirements: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetInfo:
        """The manifest's ``target``; older manifests lack ``device_type`` and get their kind's."""
        info = cls(**data)
        if not info.device_type:
            info.device_type = _LEGACY_DEVICE_TYPES.get(info.kind, "")
        return info


@dataclass
class GenerationConfig:
    """Defaults the runtime needs to generate text with this model."""

    bos_token_id: int | None
    eos_token_ids: list[int]
    context_length: int
    chat_template: str | None = None
    add_bos_token: bool = False
    pad_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        return cls(**data)


@dataclass
class Manifest:
    """``manifest.json``: schema version, model, quantization, target, and every file's hash.

    ``extra`` is the modality's typed record (``EXTRA_TYPES[modality]``)."""

    name: str
    modality: str
    architecture: str
    model: dict[str, Any]
    quantization: dict[str, Any]
    target: TargetInfo
    tvm_version: str
    ferrum_version: str
    source: dict[str, Any]
    library: str
    functions: list[str]
    files: dict[str, dict[str, Any]]
    extra: ModalityExtra
    kernels: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""

    def __post_init__(self) -> None:
        expected = EXTRA_TYPES.get(self.modality)
        if expected is None:
            raise ArtifactError(f"unknown modality {self.modality!r} (choose {', '.join(MODALITIES)})")
        if not isinstance(self.extra, expected):
            raise ArtifactError(
                f"the extra of a {self.modality} manifest is a {expected.__name__}, not {type(self.extra).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "extra": self.extra.to_dict()}

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read and structurally validate ``folder/manifest.json``."""
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise ArtifactError(f"artifact folder {folder} does not exist")
        if not path.is_file():
            raise ArtifactError(f"{folder} is not a Ferrum artifact: {MANIFEST_NAME} is missing")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path} has schema version {version!r}; this Ferrum reads version {SCHEMA_VERSION}. "
                "Recompile the model with this version of Ferrum."
            )
        extra_type = EXTRA_TYPES.get(data.get("modality"))
        if extra_type is None:
            raise ArtifactError(f"{path}: unknown modality {data.get('modality')!r} (choose {', '.join(MODALITIES)})")
        try:
            data["target"] = TargetInfo.from_dict(data["target"])
            data["extra"] = extra_type.from_dict(data.get("extra"), f"{path}: extra")
            manifest = cls(**data)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{path} is malformed: {exc}") from None
        return manifest


def host_cpu_flags() -> set[str]:
    """CPU flags of this machine as /proc/cpuinfo lists them (empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Hash and size of every file under ``folder`` except the manifest, by relative path."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return files


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Refuse an artifact whose files are missing, truncated or altered."""
    for rel, info in manifest.files.items():
        path = Path(folder) / rel
        if not path.is_file():
            raise ArtifactError(f"artifact {folder} is incomplete: {rel} is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(f"artifact file {rel} has {size} bytes, manifest says {info['bytes']}")
        if file_sha256(path) != info["sha256"]:
            raise ArtifactError(f"artifact file {rel} does not match its sha256 in the manifest")
