"""CPU seconds of the system's processes, by kind: its services (from their supervisor), and
this machine's PostgreSQL and RabbitMQ servers; how busy the whole machine was, and how long
its tasks waited for I/O."""

from __future__ import annotations

import psutil

from stack.supervisor import Supervisor, process_cpu_seconds


def _pids(user: str, command: str) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["name", "username"])
        if p.info["name"] == command and p.info["username"] == user
    ]


class CpuMeter:
    """CPU seconds of the system's processes by kind, between ``start()`` and ``stop()``."""

    def __init__(self, stack: Supervisor) -> None:
        self.stack = stack
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.stack.names:
            kind = name.split("-")[0]
            out[kind] = out.get(kind, 0.0) + self.stack.cpu_seconds(name)
        out["postgresql"] = sum(process_cpu_seconds(p) for p in _pids("postgres", "postgres"))
        out["rabbitmq"] = sum(process_cpu_seconds(p) for p in _pids("rabbitmq", "beam.smp"))
        return out

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {k: max(0.0, v - self._before.get(k, 0.0)) for k, v in now.items()}


def machine_busy() -> tuple[float, float]:
    """CPU seconds (all cores) spent busy and in all since boot."""
    t = psutil.cpu_times()
    # Guest time is counted in user already.
    total = t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal
    return total - t.idle - t.iowait, total


def io_stalled_seconds() -> float:
    """Seconds since boot in which some task waited for I/O; 0 where the kernel reports no
    pressure. Read from ``/proc/pressure/io`` itself: psutil does not report pressure stall
    information."""
    try:
        with open("/proc/pressure/io") as f:
            some = f.readline().split()
    except OSError:
        return 0.0
    return int(some[-1].split("=")[1]) / 1e6


def server_cpu_seconds() -> dict[str, float]:
    """CPU seconds this machine's PostgreSQL and RabbitMQ servers spent so far, counting the
    backends PostgreSQL's postmaster started and reaped (a run's connections come and go)."""
    out = {"postgresql": 0.0, "rabbitmq": 0.0}
    for kind, user, command in (
        ("postgresql", "postgres", "postgres"),
        ("rabbitmq", "rabbitmq", "beam.smp"),
    ):
        for pid in _pids(user, command):
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            out[kind] += t.user + t.system + t.children_user + t.children_system
    return out
