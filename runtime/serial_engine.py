"""The base of the engines that serve one request at a time (Whisper, Piper: their models take batch 1).

``SerialEngine.serve`` is the whole request path: refuse when shut down or when the waiting line
is full, wait for the turn (arrival order), run the model call on the worker thread, and — in a
``finally``, so also when the caller is cancelled while waiting or running — give back the
waiting/running count and report the request's end to telemetry. An engine only supplies the
model call and what it produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ferrum.errors import EngineShutdownError, OverloadedError
from ferrum.types import EngineConfig, new_request_id
from runtime.artifact import OpenedArtifact
from runtime.worker_engine import WorkerEngine

T = TypeVar("T")


@dataclass(frozen=True)
class RequestUsage:
    """What one completed request consumed and produced, for telemetry."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    chars: int = 0


class SerialEngine(WorkerEngine):
    """A ``WorkerEngine`` whose requests run one at a time, in arrival order, behind an asyncio lock.

    A request cancelled while its model call runs stops waiting at once (its count and telemetry
    end with it); the call itself cannot be interrupted and finishes on the worker thread, where
    the next request's call queues behind it.
    """

    def __init__(self, config: EngineConfig, artifact: OpenedArtifact, worker_name: str):
        super().__init__(config, artifact, worker_name)
        self._lock = asyncio.Lock()
        self._waiting = 0

    def queued(self) -> int:
        return self._waiting

    async def serve(self, work: Callable[[], T], usage: Callable[[T], RequestUsage]) -> T:
        """Run ``work`` (blocking, on the worker thread) when this request's turn comes; its result.

        ``usage`` says what a result consumed and produced. Raises ``EngineShutdownError`` after
        ``shutdown`` and ``OverloadedError`` when ``max_queue_size`` requests already wait."""
        if self._closed:
            raise EngineShutdownError("the engine is shut down")
        if self._waiting >= self._config.max_queue_size:
            self.telemetry.on_rejected()
            raise OverloadedError(f"{self._waiting} requests are already waiting; retry later")
        rid = new_request_id()
        self.telemetry.on_arrival(rid)
        status, error, used = "failed", None, RequestUsage()
        self._waiting += 1
        admitted = False
        try:
            async with self._lock:
                self._waiting -= 1
                self._running += 1
                admitted = True
                self.telemetry.on_admitted(rid)
                result = await self._call_model(work)
            used = usage(result)
            if used.output_tokens:
                self.telemetry.on_tokens(rid, used.output_tokens)
            status = "completed"
            return result
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception as exc:
            error = exc
            raise
        finally:
            if admitted:
                self._running -= 1
            else:
                self._waiting -= 1
            self.telemetry.on_finish(rid, status, used.prompt_tokens, used.output_tokens, used.chars, error)

    async def shutdown(self) -> None:
        """Refuse new requests, let the accepted ones finish, then stop the worker thread."""
        self._closed = True
        async with self._lock:
            self._executor.shutdown(wait=True)
