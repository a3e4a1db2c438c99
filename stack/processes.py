"""The services as child processes that can be started, killed and restarted one by one.

Used by the integration tests and the benchmark; ``python -m stack`` is the long-running
supervisor for people.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pubsub.settings import ENV_PREFIX, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def module_of(name: str) -> str:
    """``consumer-3`` runs ``python -m consumer``; the other names are their modules."""
    return name.split("-", 1)[0]


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name))
        for f in dataclasses.fields(settings)
    }


class Stack:
    """Starts, kills and restarts the services; only ever signals its own children."""

    def __init__(self, settings: Settings, logdir: Path, *, consumers: int = 2) -> None:
        self.settings = settings
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports = {"ingest": settings.ingest_port, "readapi": settings.read_port}
        for i in range(1, consumers + 1):
            self.ports[f"consumer-{i}"] = free_port()
        self.overrides: dict[str, dict[str, Any]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.ports)

    @property
    def consumers(self) -> list[str]:
        return [n for n in self.ports if n.startswith("consumer-")]

    def add_consumer(self) -> str:
        name = f"consumer-{len(self.consumers) + 1}"
        self.ports[name] = free_port()
        return name

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def read_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['readapi']}"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str, *, wait: bool = True) -> None:
        env = {**os.environ, **settings_env(self.settings)}
        env[ENV_PREFIX + "CONSUMER_PORT"] = str(self.ports[name])
        for key, value in self.overrides.get(name, {}).items():
            env[ENV_PREFIX + key.upper()] = str(value)
        log = (self.logdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module_of(name)], env=env, stdout=log, stderr=log
        )
        log.close()
        if wait:
            self.wait_ready(name)

    def start_all(self, names: list[str] | None = None) -> None:
        names = self.names if names is None else names
        for name in names:
            self.start(name, wait=False)
        for name in names:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.url(name)}/readyz"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{name} not ready within {timeout}s:\n{self.log(name)}")

    def send(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{name} ignored signal {sig} for {timeout}s") from None
        return proc.returncode

    def restart(self, name: str, *, sig: int = signal.SIGTERM) -> None:
        self.stop(name, sig=sig)
        self.start(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def rss_kib(self, name: str) -> int:
        """Resident memory of a running child, in KiB (0 when it is not running)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return 0
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""
