"""``ferrum serve``'s shutdown path (``runtime.server.serve.serve``) over a fake LLM whose requests
stall, for tests/test_server_shutdown.py. Run as a script:

    python tests/stalled_server.py PORT SHUTDOWN_TIMEOUT_S MODE

Every completion streams one token, then:

- ``stall``: waits on a worker thread that never returns (a model call that hangs). The engine's
  ``shutdown`` waits for its in-flight requests without a limit, then for the worker, without
  blocking the event loop: it never completes.
- ``block``: the same, but ``shutdown`` joins the worker synchronously and so blocks the event loop
  for good: the worst an engine can do.
- ``finish``: sleeps ``FINISH_AFTER_S`` and ends the stream normally, so the drain completes before
  the timeout.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferrum.engine import LlmInferenceEngine  # noqa: E402
from ferrum.metrics import (  # noqa: E402
    ComponentHealth,
    ComponentStatus,
    EngineMetrics,
    EngineStatus,
    HealthStatus,
    MemoryUsage,
)
from ferrum.serde import utc_now  # noqa: E402
from ferrum.types import EngineConfig, FinishReason, InferenceRequest, StreamChunk, TokenUsage  # noqa: E402
from runtime.server.app import ServerOptions  # noqa: E402
from runtime.server.models import ServedModels  # noqa: E402
from runtime.server.serve import serve  # noqa: E402
from server_harness import CodePointTokenizer  # noqa: E402  (this script's folder is on sys.path)

FINISH_AFTER_S = 1.0


class StallingLlm(LlmInferenceEngine):
    max_model_len = 4096
    tokenizer = CodePointTokenizer()

    def __init__(self, mode: str):
        self.mode = mode
        self.in_flight = 0
        self.worker = ThreadPoolExecutor(1)  # not a daemon: the interpreter would wait for it at exit

    async def infer_stream(self, request: InferenceRequest):
        request.sampling_params.validate()
        return self._stream(request)

    async def _stream(self, request: InferenceRequest):
        self.in_flight += 1
        try:
            yield StreamChunk(request.id, "a", ord("a"), None, None)
            if self.mode in ("stall", "block"):
                await asyncio.get_running_loop().run_in_executor(self.worker, threading.Event().wait)
            await asyncio.sleep(FINISH_AFTER_S)
            yield StreamChunk(request.id, "b", ord("b"), FinishReason.Length,
                              TokenUsage.of(len(request.prompt_token_ids or []), 2))
        finally:
            self.in_flight -= 1

    async def infer(self, request):
        raise NotImplementedError("the shutdown tests stream")

    async def shutdown(self) -> None:
        while self.in_flight:
            await asyncio.sleep(0.05)
        if self.mode == "block":
            self.worker.shutdown(wait=True)
        else:
            await asyncio.to_thread(self.worker.shutdown, wait=True)

    async def status(self) -> EngineStatus:
        return EngineStatus(True, ["stalling"], self.in_flight, 0, MemoryUsage(0, 0, 0, None, None, 0), 0, utc_now(),
                            "test")

    def config(self) -> EngineConfig:
        return EngineConfig()

    def metrics(self) -> EngineMetrics:
        return EngineMetrics()

    async def health_check(self) -> HealthStatus:
        ok = ComponentHealth.healthy("fake")
        return HealthStatus.from_components(ComponentStatus(ok, ok, ok, ok, ok, ok))


if __name__ == "__main__":
    port, timeout, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    serve(ServedModels({"stalling": StallingLlm(mode)}), "127.0.0.1", port, ServerOptions(), timeout)
