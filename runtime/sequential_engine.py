"""The simplest LLM engine: one request at a time over the paged KV cache.

Requests queue on a lock; the one holding it is prefilled (in chunks of ``prefill_chunk_size``)
and decoded token by token. Model calls run on one dedicated worker thread, so the event loop
stays responsive and TVM is only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import ferrum
from ferrum.engine import LlmInferenceEngine
from ferrum.errors import EngineShutdownError, UnsupportedFeatureError
from ferrum.metrics import (
    ComponentHealth,
    ComponentStatus,
    EngineMetrics,
    EngineStatus,
    HealthStatus,
    HealthStatusType,
)
from ferrum.serde import utc_now
from ferrum.types import EngineConfig, InferenceRequest, InferenceResponse, StreamChunk
from runtime.artifact import LlmArtifact
from runtime.generation import SequenceOutput, collect, prepare_prompt
from runtime.model_runner import KVCacheConfig, ModelRunner
from runtime.sampling import SequenceSampler
from runtime.telemetry import EngineTelemetry
from runtime.tokenizer import ChatTokenizer


class SequentialEngine(LlmInferenceEngine):
    """InferenceEngine + LlmInferenceEngine serving one request at a time."""

    def __init__(self, config: EngineConfig):
        self._config = config
        self.artifact = LlmArtifact.open(config.artifact_path)
        self.model_id = config.model_id or self.artifact.manifest.name
        self.tokenizer = ChatTokenizer(self.artifact.tokenizer_path, self.artifact.generation)
        self.runner = ModelRunner(self.artifact, config.device)
        self.max_model_len = min(config.max_model_len or self.artifact.config.context_length,
                                 self.artifact.config.context_length)
        self.kv = KVCacheConfig(
            max_batch_size=1,
            max_total_tokens=self.max_model_len,
            prefill_chunk_size=min(config.max_num_batched_tokens, self.max_model_len),
            page_size=config.kv_page_size,
        )
        self.runner.create_kv_cache(self.kv)
        self.telemetry = EngineTelemetry()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferrum-model")
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self._last_error: str | None = None
        self._last_heartbeat = utc_now()

    # -- generation -------------------------------------------------------------------------
    async def _call(self, fn, *args):
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            self.telemetry.add_phase_time("model_execution", time.perf_counter() - start)

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[StreamChunk]:
        if self._closed:
            raise EngineShutdownError("the engine is shut down")
        if request.sampling_params.n != 1:
            raise UnsupportedFeatureError("n > 1 needs the continuous-batching engine", param="n", status=400)
        started = time.perf_counter()
        prompt_ids = prepare_prompt(request, self.tokenizer, self.max_model_len)
        self.telemetry.add_phase_time("tokenization", time.perf_counter() - started)
        return self._generate(request, prompt_ids)

    async def _generate(self, request: InferenceRequest, prompt_ids: list[int]) -> AsyncIterator[StreamChunk]:
        rid = request.id
        self.telemetry.on_arrival(rid)
        output = SequenceOutput(request, prompt_ids, self.tokenizer)
        status, error, admitted = "cancelled", None, False
        self._waiting += 1
        try:
            async with self._lock:
                self._waiting -= 1
                self._running += 1
                admitted = True
                async for chunk in self._run(request, prompt_ids, output):
                    yield chunk
            status = "completed"
        except Exception as exc:
            status, error = "failed", exc
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if admitted:
                self._running -= 1
            else:
                self._waiting -= 1
            self.telemetry.on_finish(rid, status, output.prompt_len, len(output.tokens), len(output.text), error)

    async def _run(self, request: InferenceRequest, prompt_ids: list[int], output: SequenceOutput):
        self.telemetry.on_admitted(request.id)
        sampler = SequenceSampler(request.sampling_params, prompt_ids)
        seq = 0
        await self._call(self.runner.add_sequence, seq)
        try:
            chunk_size = self.kv.prefill_chunk_size
            logits = None
            for start in range(0, len(prompt_ids), chunk_size):
                logits = await self._call(self.runner.prefill, [seq], [prompt_ids[start : start + chunk_size]])
            while True:
                t0 = time.perf_counter()
                token, logprob = sampler.sample(logits[0])
                self.telemetry.add_phase_time("sampling", time.perf_counter() - t0)
                chunk = output.append(token, logprob)
                self.telemetry.on_tokens(request.id)
                self._last_heartbeat = utc_now()
                yield chunk
                if output.finished:
                    return
                t0 = time.perf_counter()
                logits = await self._call(self.runner.decode, [seq], [token])
                self.telemetry.on_step(1, 1, time.perf_counter() - t0, 1)
        finally:
            # Queued behind any call still running for this request (one FIFO worker), so the
            # sequence is freed before the next request touches the cache, even on cancellation.
            self._executor.submit(self.runner.remove_sequence, seq)

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        return await collect(request, await self.infer_stream(request))

    # -- lifecycle / status -----------------------------------------------------------------
    def config(self) -> EngineConfig:
        return self._config

    async def shutdown(self) -> None:
        self._closed = True
        async with self._lock:
            self._executor.shutdown(wait=True)

    def _cache_bytes(self) -> int:
        return self.runner.total_pages * self.kv.page_size * self.runner.kv_bytes_per_token()

    async def status(self) -> EngineStatus:
        return EngineStatus(
            is_ready=not self._closed,
            loaded_models=[self.model_id],
            active_requests=self._running,
            queued_requests=self._waiting,
            memory_usage=self.telemetry.memory_usage(self._cache_bytes()),
            uptime_seconds=int(self.telemetry.uptime),
            last_heartbeat=self._last_heartbeat,
            version=ferrum.__version__,
        )

    def metrics(self) -> EngineMetrics:
        return self.telemetry.engine_metrics(self._waiting)

    async def health_check(self) -> HealthStatus:
        free = self.runner.available_pages()
        kv = ComponentHealth.healthy("kv_cache", free_pages=float(free), total_pages=float(self.runner.total_pages))
        model = ComponentHealth.healthy("model")
        if self._last_error:
            model = ComponentHealth(HealthStatusType.Warning, f"last request failed: {self._last_error}")
        scheduler = ComponentHealth.healthy("scheduler", waiting=float(self._waiting), running=float(self._running))
        if self._closed:
            scheduler = ComponentHealth(HealthStatusType.Unhealthy, "engine is shut down")
        return HealthStatus.from_components(
            ComponentStatus(
                scheduler=scheduler,
                model_executor=model,
                tokenizer=ComponentHealth.healthy("tokenizer"),
                kv_cache=kv,
                memory_manager=ComponentHealth.healthy("memory"),
                backend=ComponentHealth.healthy(f"tvm {self.runner.device_kind}"),
            )
        )
