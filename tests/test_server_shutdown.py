"""SIGTERM while a stream is running: the server stops accepting, the engine drains the request
to its end (finish_reason and [DONE] arrive), and the process exits with status 0. The drain is
bounded: a request that never finishes is cancelled after ``--shutdown-timeout`` and the process
still exits 0, also when the engine's own shutdown hangs or blocks the event loop
(``tests/stalled_server.py``)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from server_harness import ServeProcess, free_port, run, start_listening

from runtime.server.serve import CANCEL_GRACE_S, FORCED_EXIT_GRACE_S
from stalled_server import FINISH_AFTER_S

STALLED_SERVER = Path(__file__).with_name("stalled_server.py")


def test_sigterm_drains_in_flight_stream_and_exits_0(smollm2_artifact):
    server = ServeProcess([str(smollm2_artifact)], "--max-model-len", "1024", "--kv-cache-tokens", "4096")

    async def stream_across_sigterm() -> list:
        events = []
        body = {"model": smollm2_artifact.name, "prompt": "Once upon a time", "max_tokens": 40,
                "ignore_eos": True, "temperature": 0, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/v1/completions", json=body) as response:
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].strip()
                    events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
                    if len(events) == 1:
                        server.proc.send_signal(signal.SIGTERM)
                        await asyncio.sleep(0.5)  # the listening socket is closed by now
                        try:
                            async with session.get(server.url + "/health") as late:
                                events.append(("late request answered", late.status))
                        except aiohttp.ClientConnectionError:
                            pass
        return events

    try:
        events = run(stream_across_sigterm())
    finally:
        rc = server.proc.wait(60)
    assert not [e for e in events if isinstance(e, tuple)], events
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for e in events[:-1] if e["choices"][0]["text"]) >= 30
    assert rc == 0, server.proc.stdout.read()


def sigterm_during_a_stream(mode: str, timeout_s: float) -> tuple[list[bytes], float, int, str]:
    """Start the stalled server, read the first token of a stream, SIGTERM; return the stream's
    data lines, the seconds from SIGTERM to exit, the exit status and the server's output."""
    port = free_port()
    proc = start_listening([sys.executable, str(STALLED_SERVER), str(port), str(timeout_s), mode], port, timeout=30)
    signalled = []

    async def stream() -> list[bytes]:
        lines = []
        body = {"model": "stalling", "prompt": "hi", "max_tokens": 2, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                assert response.status == 200
                try:
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            lines.append(line.strip())
                            if len(lines) == 1:
                                proc.send_signal(signal.SIGTERM)
                                signalled.append(time.monotonic())
                except aiohttp.ClientPayloadError:
                    lines.append(b"(connection closed mid-stream)")
        return lines

    try:
        lines = run(asyncio.wait_for(stream(), timeout_s + FORCED_EXIT_GRACE_S + 10))
        rc = proc.wait(timeout_s + FORCED_EXIT_GRACE_S + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return lines, time.monotonic() - signalled[0], rc, proc.stdout.read()


@pytest.mark.parametrize("mode, forced", [("stall", False), ("block", True)])
def test_a_request_that_never_finishes_is_cancelled_after_the_timeout(mode, forced):
    """The engine's shutdown never completes (``stall``) or blocks the event loop (``block``): the
    stream is cut after the timeout and the process exits 0, at the latest when the watchdog fires."""
    timeout_s = 1.0
    lines, elapsed, rc, output = sigterm_during_a_stream(mode, timeout_s)
    assert rc == 0, output
    assert len(lines) == 2 and lines[-1] in (b"(connection closed mid-stream)", b"data: [DONE]"), lines
    assert "drain timeout (1 s) passed" in output, output
    assert timeout_s <= elapsed, elapsed
    if forced:  # the loop is blocked for good: only the watchdog can end the process
        assert f"shutdown still running after {timeout_s + FORCED_EXIT_GRACE_S:g} s: exiting now" in output, output
        assert elapsed < timeout_s + FORCED_EXIT_GRACE_S + 2, elapsed
    else:
        assert "engine stalling did not stop after its requests were cancelled" in output, output
        assert elapsed < timeout_s + 3 * CANCEL_GRACE_S + 2, elapsed


def test_a_request_that_finishes_during_the_drain_ends_normally_before_the_timeout():
    timeout_s = 20.0
    lines, elapsed, rc, output = sigterm_during_a_stream("finish", timeout_s)
    assert rc == 0, output
    assert lines[-1] == b"data: [DONE]", lines
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert FINISH_AFTER_S <= elapsed < FINISH_AFTER_S + 3, elapsed
    assert "drain timeout" not in output, output
