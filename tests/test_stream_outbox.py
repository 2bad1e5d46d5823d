"""The engine's per-step hand-offs: stream items through ``StreamOutbox`` (one wake-up per event loop
per flush, each stream's order kept) and a step's tokens through ``EngineTelemetry.on_each_token``
(the same timing events as one ``on_tokens`` call per token)."""

from __future__ import annotations

import asyncio
import threading

from runtime.stream_outbox import StreamOutbox
from runtime.telemetry import EngineTelemetry


def test_outbox_delivers_each_stream_in_order_and_only_on_flush():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        streams = [asyncio.Queue(), asyncio.Queue()]
        outbox = StreamOutbox()
        wakeups = []
        original = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(a), original(*a))[1]
        for i in range(5):
            outbox.put(loop, streams[i % 2], i)
        assert not wakeups and all(s.empty() for s in streams)
        outbox.flush()
        outbox.flush()  # nothing left: no second wake-up
        assert len(wakeups) == 1

        async def drain(stream):
            return [stream.get_nowait() for _ in range(stream.qsize())]
        got = [asyncio.run_coroutine_threadsafe(drain(s), loop).result(5) for s in streams]
        assert got == [[0, 2, 4], [1, 3]]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_outbox_drops_items_for_a_closed_event_loop():
    loop = asyncio.new_event_loop()
    loop.close()
    outbox = StreamOutbox()
    outbox.put(loop, asyncio.Queue(), "late")
    outbox.flush()  # no error: nobody listens any more


class Recorder:
    def __init__(self):
        self.firsts, self.gaps = [], []

    def first_token(self, seconds):
        self.firsts.append(seconds)

    def token_gap(self, seconds, n):
        self.gaps.append((seconds, n))

    def finished(self, status, seconds, prompt_tokens, output_tokens):
        pass


def test_a_steps_tokens_at_once_give_the_events_of_one_call_per_token():
    """Two requests, three steps (the second request's first token arrives in step 2): one first
    token each, a gap per later token, every token counted, unknown requests ignored."""
    telemetry, recorder = EngineTelemetry(), Recorder()
    telemetry.observe(recorder)
    for rid in ("a", "b"):
        telemetry.on_arrival(rid)
    telemetry.on_each_token(["a", "gone"])
    telemetry.on_each_token(["a", "b"])
    telemetry.on_each_token(["a", "b"])
    assert len(recorder.firsts) == 2 and all(t >= 0 for t in recorder.firsts)
    assert len(recorder.gaps) == 3 and all(n == 1 and s >= 0 for s, n in recorder.gaps)
    assert sum(n for _, n in telemetry._tokens_window) == 5
    assert len(telemetry._itl_all) == 3
