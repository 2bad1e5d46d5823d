"""Helpers for the server tests: free ports, a `ferrum serve` subprocess, an in-process server on a
thread (for fake engines), raw HTTP and SSE calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_listening(command: list[str], port: int, *, timeout: float = 120.0, cwd: Path = ROOT,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` (stdout and stderr together, as text) and return once ``port`` accepts."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited early:\n{proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{command[0]} did not start listening in time")


class ServeProcess:
    """``python -m ferrum serve ...`` from this checkout on a free port, ready once it accepts.

    ``program`` replaces ``python -m ferrum`` (an installed ``ferrum`` script); it then runs from
    ``cwd`` without this checkout on its path."""

    def __init__(self, artifacts: list[str], *extra: str, timeout: float = 120.0, program: list[str] | None = None,
                 cwd: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FERRUM_API_KEY")}
        if program is None:
            env["PYTHONPATH"] = str(ROOT)
        command = [*(program or [sys.executable, "-m", "ferrum"]), "serve", *artifacts, "--port", str(self.port), *extra]
        self.proc = start_listening(command, self.port, timeout=timeout, cwd=cwd, env=env)

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


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
