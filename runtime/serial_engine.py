"""Lifecycle, status, metrics and health for engines that run one request at a time.

The Whisper and Piper engines run each request on a single worker thread behind an asyncio lock
(their models take batch 1); what they report about themselves is the same, so it lives here.
A subclass sets ``_config``, ``model_id``, ``telemetry``, ``_executor``, ``_lock``, ``_closed``,
``_running``, ``_waiting``, ``_last_error``, ``_last_heartbeat``, and names its device kind and
its text front end.
"""

from __future__ import annotations

import ferrum
from ferrum.metrics import ComponentHealth, ComponentStatus, EngineMetrics, EngineStatus, HealthStatus, HealthStatusType
from ferrum.types import EngineConfig


class SerialEngineMixin:
    text_front_end = "tokenizer"  # the component name health reports for the text side

    @property
    def device_kind(self) -> str:
        raise NotImplementedError

    def config(self) -> EngineConfig:
        return self._config

    async def shutdown(self) -> None:
        self._closed = True
        async with self._lock:
            self._executor.shutdown(wait=True)

    async def status(self) -> EngineStatus:
        return EngineStatus(
            is_ready=not self._closed,
            loaded_models=[self.model_id],
            active_requests=self._running,
            queued_requests=self._waiting,
            memory_usage=self.telemetry.memory_usage(0),
            uptime_seconds=int(self.telemetry.uptime),
            last_heartbeat=self._last_heartbeat,
            version=ferrum.__version__,
        )

    def metrics(self) -> EngineMetrics:
        return self.telemetry.engine_metrics(self._waiting)

    async def health_check(self) -> HealthStatus:
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
                tokenizer=ComponentHealth.healthy(self.text_front_end),
                kv_cache=ComponentHealth.healthy("kv_cache"),
                memory_manager=ComponentHealth.healthy("memory"),
                backend=ComponentHealth.healthy(f"tvm {self.device_kind}"),
            )
        )
