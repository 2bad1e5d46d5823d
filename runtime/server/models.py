"""The models one server serves: name → engine, looked up by the trait a route needs."""

from __future__ import annotations

import time

from ferrum.engine import EmbedEngine, InferenceEngine, LlmInferenceEngine, TranscribeEngine, TtsEngine
from ferrum.errors import InvalidRequestError, ModelNotFoundError

# trait → what the route calls the models that implement it (used in error messages and /v1/models)
_KINDS: list[tuple[type, str]] = [
    (LlmInferenceEngine, "llm"),
    (EmbedEngine, "embedding"),
    (TranscribeEngine, "transcription"),
    (TtsEngine, "tts"),
]


def modality_of(engine: InferenceEngine) -> str:
    for trait, name in _KINDS:
        if isinstance(engine, trait):
            return name
    return "unknown"


class ServedModels:
    def __init__(self, engines: dict[str, InferenceEngine]):
        if not engines:
            raise InvalidRequestError("a server needs at least one model")
        self.engines = engines
        self.created = int(time.time())

    def names(self) -> list[str]:
        return list(self.engines)

    def get(self, name: str, trait: type) -> InferenceEngine:
        """The served engine called ``name`` if it implements ``trait``, else 404 naming what is served."""
        engine = self.engines.get(name)
        if engine is not None and isinstance(engine, trait):
            return engine
        if len(name) > 80:  # the name is echoed back: a megabyte of it must not become the message
            name = name[:77] + "..."
        wanted = dict(_KINDS)[trait]
        fitting = [n for n, e in self.engines.items() if isinstance(e, trait)]
        served = ", ".join(f"{n} ({modality_of(e)})" for n, e in self.engines.items())
        if engine is not None:
            message = f"model '{name}' is a {modality_of(engine)} model, not a {wanted} model; served: {served}"
        elif not fitting:
            message = f"no {wanted} model is served (asked for '{name}'); served: {served}"
        else:
            message = f"the model '{name}' does not exist; served {wanted} models: {', '.join(fitting)}"
        raise ModelNotFoundError(message, param="model")

    def openai_list(self) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "ferrum",
             "modality": modality_of(engine)}
            for name, engine in self.engines.items()
        ]}
