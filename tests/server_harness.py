"""Helpers for the server tests: free ports, a `ferrum serve` subprocess, an in-process server on a
thread (for fake engines), raw HTTP and SSE calls."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from multidict import CIMultiDict

from checks.serve_process import ROOT, ServeProcess, free_port, start_listening  # noqa: F401 (re-exported)


class CodePointTokenizer:
    """What the fake engines' tokenizer does: one token per character, its code point."""

    vocab_size = 0x110000
    renders_tools = False

    def encode(self, text: str, add_bos=None) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return "\n".join(m["content"] for m in messages)


@contextmanager
def served_in_thread(models, options) -> Iterator[str]:
    """``run_server`` over ``models`` (a ``ServedModels``) on its own thread and event loop; yields
    the base URL and stops the server (gracefully) on exit."""
    from runtime.server.serve import run_server

    port = free_port()
    started, holder = threading.Event(), {}

    def serve() -> None:
        async def main() -> None:
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
            task = asyncio.ensure_future(run_server(models, "127.0.0.1", port, options, holder["stop"]))
            await asyncio.sleep(0.3)
            started.set()
            await task

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def run(coro):
    return asyncio.run(coro)


async def request(method: str, url: str, *, json_body=None, data=None, headers=None) -> tuple[int, CIMultiDict, bytes]:
    """One HTTP call: (status, headers (case-insensitive), body bytes)."""
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, json=json_body, data=data, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def sse_events(url: str, body: dict, headers=None) -> list:
    """POST and read an SSE stream: the decoded ``data:`` payloads, ``"[DONE]"`` kept as a string."""
    events = []
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            line = line.decode().strip()
            if line.startswith("data: "):
                payload = line[len("data: "):]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
