"""Open the engine an artifact needs, chosen by its manifest's modality.

Engines are imported only when used, so serving an LLM never imports the audio stack and so on.
"""

from __future__ import annotations

import importlib

from ferrum.engine import InferenceEngine
from ferrum.errors import ArtifactError
from ferrum.manifest import Manifest
from ferrum.types import EngineConfig

# modality → "module:class" implementing the matching engine trait
ENGINES = {
    "llm": "runtime.batch_engine:ContinuousBatchEngine",
    "transcription": "runtime.whisper_engine:WhisperEngine",
    "tts": "runtime.tts_engine:PiperTtsEngine",
    "embedding": "runtime.embedding_engine:EmbeddingEngine",
}


def open_engine(config: EngineConfig) -> InferenceEngine:
    manifest = Manifest.load(config.artifact_path)
    spec = ENGINES.get(manifest.modality)
    if spec is None:
        raise ArtifactError(f"artifact {manifest.name}: no engine serves {manifest.modality!r} models")
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)(config)
