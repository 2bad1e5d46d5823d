"""``ferrum serve``: open one engine per artifact and run the HTTP server until SIGINT/SIGTERM.

Shutdown is bounded by ``shutdown_timeout_s``: stop listening, let every engine drain what is in
flight (open streams keep streaming meanwhile), then close the connections. When the timeout
passes first, the remaining handlers are cancelled (which cancels their requests, as a client
disconnect does) and the engines get ``CANCEL_GRACE_S`` to stop. A request stuck inside a model
call cannot be interrupted from Python, so ``serve`` (the CLI's entry) also arms a watchdog thread
when the signal arrives: ``FORCED_EXIT_GRACE_S`` after the timeout the process leaves with status 0
whatever the engines are doing, even if one of them blocks the event loop.

Engines open one at a time before the port is bound, so a model that fails to load stops the
command before any client can connect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from aiohttp import web

from ferrum.errors import InvalidRequestError
from ferrum.manifest import Manifest
from ferrum.types import EngineConfig
from runtime.server.app import ServerOptions, build_app
from runtime.server.models import ServedModels

log = logging.getLogger("ferrum.server")

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
# after the drain timeout: how long cancelled handlers get to unwind, and then the engines to stop
CANCEL_GRACE_S = 1.0
# after the drain timeout: when the watchdog ends the process regardless (above 3 x CANCEL_GRACE_S,
# the most the orderly cancel path waits)
FORCED_EXIT_GRACE_S = 5.0


def open_engines(artifacts: list[str], base: EngineConfig) -> ServedModels:
    from runtime.engines import open_engine

    engines = {}
    for path in artifacts:
        name = Manifest.load(path).name
        if name in engines:
            raise InvalidRequestError(f"two artifacts are both called {name!r}")
        config = EngineConfig(**{**base.__dict__, "artifact_path": str(path), "model_id": name})
        log.info("loading %s from %s", name, path)
        engines[name] = open_engine(config)
    return ServedModels(engines)


async def run_server(models: ServedModels, host: str, port: int, options: ServerOptions, stop: asyncio.Event,
                     shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> bool:
    """Serve until ``stop`` is set, then shut down within ``shutdown_timeout_s`` plus the cancel
    grace. True when every engine stopped; False when one was still stopping (its threads may be
    stuck in a model call and are left behind)."""
    app = build_app(models, options)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=CANCEL_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"ferrum: serving {', '.join(models.names())} on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining for at most %g s", shutdown_timeout_s)
        await site.stop()  # stop accepting; open streams continue while engines drain
        stopping = {asyncio.ensure_future(engine.shutdown()): name for name, engine in models.engines.items()}
        _, pending = await asyncio.wait(stopping, timeout=shutdown_timeout_s)
        if pending:
            log.warning("drain timeout (%g s) passed: cancelling the requests still in flight", shutdown_timeout_s)
        await runner.cleanup()  # handlers get CANCEL_GRACE_S to finish, then are cancelled
        if pending:
            _, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
        for task in pending:
            log.warning("engine %s did not stop after its requests were cancelled; leaving it behind",
                        stopping[task])
            task.cancel()
    return not pending


def serve(models: ServedModels, host: str, port: int, options: ServerOptions,
          shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
    """Run the server in this (main) thread until SIGINT or SIGTERM; return once it has shut down,
    or end the process with status 0 when an engine could not be stopped."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if not stop.is_set():
                _exit_later(shutdown_timeout_s + FORCED_EXIT_GRACE_S)
                stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return await run_server(models, host, port, options, stop, shutdown_timeout_s)

    with asyncio.Runner() as runner:
        if not runner.run(main()):
            # the event loop's executor and the interpreter would wait for the stuck threads
            _leave()


def _exit_later(seconds: float) -> None:
    """A daemon thread that ends the process after ``seconds``, even if the event loop is blocked."""
    timer = threading.Timer(seconds, _leave, kwargs={"reason": f"shutdown still running after {seconds:g} s"})
    timer.daemon = True
    timer.start()


def _leave(reason: str = "") -> None:
    if reason:
        log.warning("%s: exiting now", reason)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
