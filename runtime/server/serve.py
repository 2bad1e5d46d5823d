"""``ferrum serve``: open one engine per artifact and run the HTTP server until SIGINT/SIGTERM.

Shutdown order: stop listening, let every engine drain (``engine.shutdown`` finishes what is in
flight within its timeout and ends the rest with a final cancelled chunk), then close the open
connections. Engines open one at a time before the port is bound, so a model that fails to load
stops the command before any client can connect.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ferrum.errors import InvalidRequestError
from ferrum.manifest import Manifest
from ferrum.types import EngineConfig
from runtime.server.app import ServerOptions, build_app
from runtime.server.models import ServedModels

log = logging.getLogger("ferrum.server")


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


async def run_server(models: ServedModels, host: str, port: int, options: ServerOptions,
                     stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set, then shut down gracefully. Without ``stop`` (the CLI: main
    thread), SIGINT and SIGTERM set it."""
    app = build_app(models, options)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    print(f"ferrum: serving {', '.join(models.names())} on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await site.stop()  # stop accepting; open streams continue while engines drain
        await asyncio.gather(*(engine.shutdown() for engine in models.engines.values()))
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
