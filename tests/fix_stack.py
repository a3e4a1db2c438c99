"""The real services as child processes: ingest, two consumers and the read API."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pubsub.settings import ENV_PREFIX, Settings
from tests.support import free_port

MODULES = {
    "ingest": "ingest",
    "readapi": "readapi",
    "consumer-1": "consumer",
    "consumer-2": "consumer",
}


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name))
        for f in dataclasses.fields(settings)
    }


class Stack:
    """Starts, kills and restarts the services; only ever signals its own children."""

    def __init__(self, settings: Settings, logdir: Path) -> None:
        self.settings = settings
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports = {
            "ingest": settings.ingest_port,
            "readapi": settings.read_port,
            "consumer-1": free_port(),
            "consumer-2": free_port(),
        }
        self.overrides: dict[str, dict[str, Any]] = {}

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
            [sys.executable, "-m", MODULES[name]], env=env, stdout=log, stderr=log
        )
        log.close()
        if wait:
            self.wait_ready(name)

    def start_all(self) -> None:
        for name in MODULES:
            self.start(name, wait=False)
        for name in MODULES:
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

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(settings, tmp_path_factory.mktemp("logs"))
    s.start_all()
    yield s
    s.stop_all()
