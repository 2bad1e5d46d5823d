"""Server-sent events as the OpenAI API streams them: ``data: {json}`` blocks, then ``data: [DONE]``."""

from __future__ import annotations

import json

from aiohttp import web

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Send the headers of an event stream (nothing is buffered by proxies)."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    return response
