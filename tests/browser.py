"""Drive headless Chromium through the DevTools protocol (no extra Python package): start it, open a
page, evaluate JavaScript. Used by the chat-page test."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import aiohttp
from server_harness import free_port


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, executable: str):
        self.port = free_port()
        # Chromium's helper processes (zygote, crashpad) may still write the profile after the main one
        # exits: they share a new process group that close() ends, and a profile file they leave is no error
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)

    async def page(self) -> aiohttp.ClientWebSocketResponse:
        """A DevTools connection to the browser's open tab."""
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    return await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.2)

    async def call(self, ws, method: str, **params) -> dict:
        msg_id = next(self._ids)
        await ws.send_json({"id": msg_id, "method": method, "params": params})
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("DevTools connection closed")

    async def evaluate(self, ws, expression: str):
        result = await self.call(ws, "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def close(self) -> None:
        await self.session.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.profile.cleanup()
