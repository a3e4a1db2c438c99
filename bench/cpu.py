"""CPU seconds of the system's processes, by kind: its services (from their supervisor), and
this machine's PostgreSQL and RabbitMQ servers; how busy the whole machine was, and how long
its tasks waited for I/O."""

from __future__ import annotations

import os
import subprocess

from stack.supervisor import Supervisor, process_cpu_seconds


def _pids(user: str, command: str) -> list[int]:
    cmd = ["pgrep", "-u", user, "-x", command]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


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
    """CPU seconds (all cores) spent busy and in all since boot, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return (total - idle) / hz, total / hz


def io_stalled_seconds() -> float:
    """Seconds since boot in which some task waited for I/O (``/proc/pressure/io``); 0 where
    the kernel reports no pressure."""
    try:
        with open("/proc/pressure/io") as f:
            some = f.readline().split()
    except OSError:
        return 0.0
    return int(some[-1].split("=")[1]) / 1e6
