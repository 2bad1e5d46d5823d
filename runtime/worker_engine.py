"""The base of the engines whose model calls run on one worker thread (embedding, Whisper, Piper).

TVM is touched from that thread only and the event loop stays free. What these engines report
about themselves (status, metrics, health) follows from the same few facts — requests queued
and running, the last failed model call, the last heartbeat, the artifact's weights — so it is
computed once, here; an engine supplies how many requests are queued and how it shuts down.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import ferrum
from ferrum.engine import InferenceEngine
from ferrum.errors import FerrumError
from ferrum.metrics import ComponentHealth, ComponentStatus, EngineMetrics, EngineStatus, HealthStatus, HealthStatusType
from ferrum.serde import utc_now
from ferrum.types import EngineConfig
from runtime.artifact import OpenedArtifact
from runtime.telemetry import EngineTelemetry

T = TypeVar("T")


def is_client_error(exc: BaseException) -> bool:
    """A request the client got wrong (a 4xx): it says nothing about the model's health."""
    return isinstance(exc, FerrumError) and exc.status < 500


class WorkerEngine(InferenceEngine):
    """Lifecycle, status, metrics and health of an engine over one artifact with one worker thread.

    Subclasses name their text front end (``text_front_end``, ``front_end_metrics``), what they
    keep instead of a KV cache (``kv_cache_note``) and what one model call serves (``work_unit``).
    """

    text_front_end = "tokenizer"  # the component health reports for the text side
    kv_cache_note: str | None = None  # None: the engine keeps a KV cache; else what health says instead
    work_unit = "request"  # what one model call serves, as health names a failed one

    def __init__(self, config: EngineConfig, artifact: OpenedArtifact, worker_name: str):
        self._config = config
        self.model_id = config.model_id or artifact.manifest.name
        self.device_kind = artifact.manifest.target.device_type
        self.weight_bytes = artifact.weight_bytes
        self.telemetry = EngineTelemetry()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=worker_name)
        self._closed = False
        self._running = 0
        self._last_error: str | None = None
        self._last_heartbeat = utc_now()

    @abc.abstractmethod
    def queued(self) -> int:
        """Requests (or texts) accepted and not yet running."""

    def front_end_metrics(self) -> dict[str, float]:
        return {}

    async def _call_model(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the worker thread, timed as model execution; a failure other than the
        client's is kept for health until a call succeeds."""
        start = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except Exception as exc:
            if not is_client_error(exc):
                self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.telemetry.add_phase_time("model_execution", time.perf_counter() - start)
            self._last_heartbeat = utc_now()
        self._last_error = None
        return result

    # -- InferenceEngine --------------------------------------------------------------------
    def config(self) -> EngineConfig:
        return self._config

    async def status(self) -> EngineStatus:
        return EngineStatus(
            is_ready=not self._closed,
            loaded_models=[self.model_id],
            active_requests=self._running,
            queued_requests=self.queued(),
            memory_usage=self.telemetry.memory_usage(0, self.weight_bytes if self.device_kind == "cuda" else None),
            uptime_seconds=int(self.telemetry.uptime),
            last_heartbeat=self._last_heartbeat,
            version=ferrum.__version__,
        )

    def metrics(self) -> EngineMetrics:
        return self.telemetry.engine_metrics(self.queued())

    async def health_check(self) -> HealthStatus:
        model = ComponentHealth.healthy("model", weight_bytes=float(self.weight_bytes))
        if self._last_error:
            model = ComponentHealth(HealthStatusType.Warning, f"last {self.work_unit} failed: {self._last_error}")
        scheduler = ComponentHealth.healthy("scheduler", waiting=float(self.queued()), running=float(self._running))
        if self._closed:
            scheduler = ComponentHealth(HealthStatusType.Unhealthy, "engine is shut down")
        kv_cache = ComponentHealth.healthy("kv_cache")
        if self.kv_cache_note is not None:
            kv_cache = ComponentHealth(HealthStatusType.Healthy, self.kv_cache_note)
        return HealthStatus.from_components(
            ComponentStatus(
                scheduler=scheduler,
                model_executor=model,
                tokenizer=ComponentHealth.healthy(self.text_front_end, **self.front_end_metrics()),
                kv_cache=kv_cache,
                memory_manager=ComponentHealth.healthy("memory"),
                backend=ComponentHealth.healthy(f"tvm {self.device_kind}"),
            )
        )
