"""SIGTERM while a stream is running: the server stops accepting, the engine drains the request
to its end (finish_reason and [DONE] arrive), and the process exits with status 0."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
from server_harness import ServeProcess, run


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
