"""A client that gives up while waiting for a serial engine (Whisper, Piper): the check both engines' tests run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from runtime.serial_engine import SerialEngine


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def assert_cancelled_waiter_leaves_no_trace(engine: SerialEngine, gate: threading.Event,
                                            request: Callable[[], Awaitable]) -> None:
    """``request()`` twice while the engine's model call (patched by the caller to wait for ``gate``)
    holds the first: cancelling the second leaves waiting/running at what the first accounts for,
    telemetry counts it cancelled, and once the first completes nothing is waiting or running."""
    counts = dict(engine.telemetry.counts)

    async def scenario():
        first = asyncio.create_task(request())
        await until(lambda: engine._running == 1)
        second = asyncio.create_task(request())
        await until(lambda: engine.queued() == 1)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        status = await engine.status()
        assert (status.queued_requests, status.active_requests) == (0, 1)
        gate.set()
        await first
        return await engine.status()

    status = asyncio.run(scenario())
    assert (status.queued_requests, status.active_requests) == (0, 0)
    assert engine.telemetry.counts["cancelled"] == counts["cancelled"] + 1
    assert engine.telemetry.counts["completed"] == counts["completed"] + 1
    assert engine.telemetry.counts["submitted"] == counts["submitted"] + 2
    assert engine.telemetry.active_requests() == 0  # telemetry saw both requests end
