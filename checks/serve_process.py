"""Start ``ferrum serve`` (or any server program) as a subprocess and wait until it listens: shared by
the server tests and the benches that serve an artifact (``bench/soak.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
