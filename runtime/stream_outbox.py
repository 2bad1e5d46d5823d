"""Stream items from the engine's loop thread to asyncio queues, handed over once per loop pass.

``loop.call_soon_threadsafe`` writes to the event loop's self-pipe on every call, and every write
wakes the event loop thread, which then competes with the engine loop for the GIL. At 128
sequences that is 128 system calls and wake-ups per step for one token each. The outbox collects
a pass's items in order and hands each event loop all of its items in one call; each stream's
items keep their order, since they are delivered by one callback in the order they were put.
"""

from __future__ import annotations

import asyncio


def _deliver(items: list[tuple[asyncio.Queue, object]]) -> None:
    for stream, item in items:
        stream.put_nowait(item)


class StreamOutbox:
    """Items waiting for their event loops (used by the engine's loop thread only)."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}

    def put(self, loop: asyncio.AbstractEventLoop, stream: asyncio.Queue, item: object) -> None:
        items = self._pending.get(loop)
        if items is None:
            self._pending[loop] = items = []
        items.append((stream, item))

    def flush(self) -> None:
        """Hand every event loop the items put since the last flush (one wake-up per loop)."""
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody listens any more
                pass
