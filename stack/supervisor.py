"""The services as child processes: start them, watch them, restart what dies, stop them in order.

One supervisor serves ``python -m stack`` (the whole system on one machine: the children log to
the terminal and one that dies is restarted after a backoff) and the integration tests and the
benchmark (the children log to files, and a test kills and restarts them one by one). It only
ever signals its own children.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from pubsub.backoff import Backoff
from pubsub.settings import ENV_PREFIX, Settings

log = logging.getLogger("pubsub.stack")


class Role(enum.Enum):
    """What a child does; its value is the module it runs (``python -m <value>``)."""

    INGEST = "ingest"
    CONSUMER = "consumer"
    READAPI = "readapi"


# Ingest first: it stops taking requests and finishes the confirms in flight. Then the
# consumers: they store and acknowledge what they hold. The read API last, so that /stats
# answers until the end.
SHUTDOWN_ORDER = (Role.INGEST, Role.CONSUMER, Role.READAPI)

# A child that keeps dying is restarted after 1, 2, 4... seconds, at most 30.
RESTART_BACKOFF = Backoff(first=1.0, cap=30.0, jitter=False)


class ChildFailed(RuntimeError):
    """A child exited, did not become ready, or ignored the signal to stop."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def role_of(name: str) -> Role:
    """``consumer-3`` is a consumer; the other names are their roles' modules."""
    return Role(name.split("-", 1)[0])


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (0 when it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class Supervisor:
    """The processes of one system: ``ingest``, ``readapi`` and ``consumer-1``..``consumer-N``.

    With ``logdir`` each child writes to ``<logdir>/<name>.log``; without, to this process's
    terminal. With ``own_group`` the children do not receive the terminal's Ctrl-C: the
    supervisor alone stops them, in :data:`SHUTDOWN_ORDER`. With ``code`` the children run
    the services of that checkout (a benchmark's base commit) instead of this one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        logdir: Path | None = None,
        consumers: int = 2,
        own_group: bool = False,
        code: Path | None = None,
    ) -> None:
        self.settings = settings
        self.code = code
        self.logdir = logdir
        self.own_group = own_group
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.ports = {"ingest": settings.ingest_port, "readapi": settings.read_port}
        self.overrides: dict[str, dict[str, Any]] = {}
        for _ in range(consumers):
            self.add_consumer()

    @property
    def names(self) -> list[str]:
        return list(self.ports)

    @property
    def consumers(self) -> list[str]:
        return [n for n in self.ports if role_of(n) is Role.CONSUMER]

    def add_consumer(self) -> str:
        """Name a new consumer (``start`` runs it): on ``consumer_port`` + its index when
        that setting is given, on a free port when it is 0."""
        index = len(self.consumers)
        name = f"consumer-{index + 1}"
        base = self.settings.consumer_port
        self.ports[name] = base + index if base else free_port()
        return name

    def add_ingest(self) -> str:
        """Name another ingest process (``start`` runs it) on the same port: ingest listens
        with ``reuse_port``, and the kernel spreads connections over the processes."""
        index = sum(role_of(n) is Role.INGEST for n in self.ports)
        name = f"ingest-{index + 1}"
        self.ports[name] = self.settings.ingest_port
        return name

    @property
    def ingest_url(self) -> str:
        return self.url("ingest")

    @property
    def read_url(self) -> str:
        return self.url("readapi")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    # --- starting --------------------------------------------------------------------------

    def start(self, name: str, *, wait: bool = True) -> None:
        env = {**os.environ, **self.settings.to_env()}
        env[ENV_PREFIX + "CONSUMER_PORT"] = str(self.ports[name])
        for key, value in self.overrides.get(name, {}).items():
            env[ENV_PREFIX + key.upper()] = str(value)
        out = None if self.logdir is None else (self.logdir / f"{name}.log").open("ab")
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", role_of(name).value],
                env=env,
                stdout=out,
                stderr=out,
                process_group=0 if self.own_group else None,
                cwd=self.code,  # python -m finds the services in the working directory first
            )
        finally:
            if out is not None:
                out.close()
        if wait:
            self.wait_ready(name)

    def start_all(self, names: list[str] | None = None) -> None:
        """Start ``names`` (all by default) at once, and wait until each is ready."""
        names = self.names if names is None else names
        for name in names:
            self.start(name, wait=False)
        for name in names:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        """Poll the child's ``/readyz`` until it answers 200; :class:`ChildFailed` if the child
        exits first or is not ready within ``timeout`` seconds."""
        self.wait_first_ready([name], timeout)

    def wait_first_ready(self, names: list[str], timeout: float = 30.0) -> float:
        """Poll the ``/readyz`` of the children ``names`` until one answers 200, and return
        when (``time.perf_counter()``); :class:`ChildFailed` if one exits first or none is
        ready within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise ChildFailed(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
                try:
                    with urllib.request.urlopen(f"{self.url(name)}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            return time.perf_counter()
                except OSError:
                    pass
            time.sleep(0.02)
        logs = "\n".join(self.log(name) for name in names)
        raise ChildFailed(f"{', '.join(names)} not ready within {timeout}s:\n{logs}")

    # --- stopping --------------------------------------------------------------------------

    def send(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the child and wait for it to exit; return its exit code. A child that
        ignores the signal for ``timeout`` seconds is killed, and :class:`ChildFailed` says so."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ChildFailed(f"{name} ignored signal {sig} for {timeout}s") from None
        return proc.returncode

    def restart(self, name: str, *, sig: int = signal.SIGTERM) -> None:
        self.stop(name, sig=sig)
        self.start(name)

    def stop_all(self, *, timeout: float = 20.0) -> None:
        """Stop every child, one role after another in :data:`SHUTDOWN_ORDER` (the children
        of one role together); then raise :class:`ChildFailed` if one had to be killed."""
        failures: list[str] = []
        for role in SHUTDOWN_ORDER:
            names = [n for n in self.procs if role_of(n) is role]
            for name in names:
                if self.running(name):
                    self.send(name, signal.SIGTERM)
            for name in names:
                try:
                    self.stop(name, timeout=timeout)
                except ChildFailed as exc:
                    failures.append(str(exc))
        if failures:
            raise ChildFailed("; ".join(failures))

    # --- watching --------------------------------------------------------------------------

    def watch(self, stop: threading.Event, *, every: float = 0.2) -> None:
        """Until ``stop`` is set, start again any child that exits, after the backoff of
        :data:`RESTART_BACKOFF` (a child that keeps failing does not spin)."""
        due: dict[str, float] = {}
        while not stop.wait(every):
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                if name not in due:
                    restarts = self.restarts.get(name, 0)
                    self.restarts[name] = restarts + 1
                    delay = RESTART_BACKOFF.delay(restarts)
                    log.error(
                        "%s exited with code %s; restarting in %.1fs",
                        name,
                        proc.returncode,
                        delay,
                    )
                    due[name] = now + delay
                elif now >= due[name]:
                    del due[name]
                    self.start(name, wait=False)

    # --- inspecting ------------------------------------------------------------------------

    def rss_kib(self, name: str) -> int:
        """Resident memory of a running child, in KiB (0 when it is not running)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return 0
        try:
            return int(psutil.Process(proc.pid).memory_info().rss) // 1024
        except psutil.Error:
            return 0

    def cpu_seconds(self, name: str) -> float:
        """User and system CPU time a running child has used so far (0 when not running)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return 0.0
        return process_cpu_seconds(proc.pid)

    def log(self, name: str, tail: int = 4000) -> str:
        """The end of a child's log (empty when it logs to the terminal)."""
        if self.logdir is None:
            return ""
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""
