"""The engine traits of ``spec/engine.rs`` as abstract base classes.

One class per Rust trait, same method names. Rust ``async fn`` becomes ``async def``; plain
``fn`` stays synchronous. ``infer_stream`` returns an async iterator of ``StreamChunk`` (the
Rust ``Result<Pin<Box<dyn Stream<...>>>>``: ``stream = await engine.infer_stream(req)`` raises
for a bad request, then ``async for chunk in stream``); errors surface as exceptions
(``ferrum.errors``) instead of ``Result``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

from ferrum.metrics import (
    DiagnosticsReport,
    EngineMetrics,
    EngineState,
    EngineStatus,
    HealthStatus,
    SpeculationConfig,
    WarmupResult,
)
from ferrum.types import EngineConfig, InferenceRequest, InferenceResponse, StreamChunk


class InferenceEngine(abc.ABC):
    """Lifecycle / status methods shared by every engine kind."""

    @abc.abstractmethod
    async def status(self) -> EngineStatus:
        """Current engine status."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop accepting work, finish or abort what is in flight, release the device."""

    @abc.abstractmethod
    def config(self) -> EngineConfig:
        """The configuration the engine runs with."""

    @abc.abstractmethod
    def metrics(self) -> EngineMetrics:
        """Metrics computed from the engine's real events."""

    @abc.abstractmethod
    async def health_check(self) -> HealthStatus:
        """Component-by-component health."""

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        """Optional cache counters (prefix cache, KV pages) of LLM engines."""
        return None

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        """Optional LoRA metrics; no Ferrum engine serves LoRA adapters."""
        return None


class LlmInferenceEngine(InferenceEngine):
    """LLM text generation; backs ``/v1/chat/completions`` and ``/v1/completions``."""

    @abc.abstractmethod
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request to completion."""

    @abc.abstractmethod
    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[StreamChunk]:
        """Validate and admit one request, then return its chunk stream (the last chunk has the
        finish reason). Awaiting raises for a bad request, before anything is streamed; closing
        the stream early (``aclose``) cancels the request and frees its resources."""


class EmbedEngine(InferenceEngine):
    """Embeddings; backs ``/v1/embeddings``."""

    @abc.abstractmethod
    async def embed_text(self, text: str) -> list[float]:
        """Embed one text (the engine tokenizes)."""

    @abc.abstractmethod
    async def embed_image(self, image: str) -> list[float]:
        """Embed an image given as a path or base64 data."""

    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Length of the vectors ``embed_text`` returns."""


class TranscribeEngine(InferenceEngine):
    """Speech to text; backs ``/v1/audio/transcriptions``."""

    @abc.abstractmethod
    async def transcribe_file(self, path: str, language: str | None = None) -> str:
        """Transcribe an audio file."""

    @abc.abstractmethod
    async def transcribe_bytes(self, data: bytes, language: str | None = None) -> str:
        """Transcribe encoded audio (WAV, FLAC, MP3...)."""


class TtsEngine(InferenceEngine):
    """Text to speech; backs ``/v1/audio/speech``."""

    @abc.abstractmethod
    async def synthesize_speech(
        self, text: str, language: str | None = None, chunk_frames: int = 4096
    ) -> list[list[float]]:
        """Synthesize ``text`` into chunks of float32 PCM samples."""

    @abc.abstractmethod
    def tts_sample_rate(self) -> int:
        """Sample rate of the PCM ``synthesize_speech`` returns."""


class AdvancedInferenceEngine(LlmInferenceEngine):
    """Batching, speculation, runtime reconfiguration and diagnostics."""

    @abc.abstractmethod
    async def infer_batch(
        self, requests: list[InferenceRequest]
    ) -> list[InferenceResponse | BaseException]:
        """Run many requests together; each entry is its response or the error it failed with."""

    @abc.abstractmethod
    async def infer_speculative(
        self, request: InferenceRequest, speculation_config: SpeculationConfig
    ) -> InferenceResponse:
        """Generate with draft-and-verify speculative decoding."""

    @abc.abstractmethod
    async def warmup(self, warmup_requests: list[InferenceRequest]) -> WarmupResult:
        """Run sample requests so first real requests do not pay one-time costs."""

    @abc.abstractmethod
    async def reconfigure(self, config: EngineConfig) -> None:
        """Apply a new configuration at run time."""

    @abc.abstractmethod
    async def diagnostics(self) -> DiagnosticsReport:
        """Detailed diagnostics."""

    @abc.abstractmethod
    async def export_state(self) -> EngineState:
        """Snapshot of engine state for debugging."""

    @abc.abstractmethod
    async def import_state(self, state: EngineState) -> None:
        """Restore what ``export_state`` produced (configuration)."""
