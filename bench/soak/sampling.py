"""The soak's minutes: one row of measurements a minute, printed as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass

import aiohttp
import psycopg

from bench.cpu import CpuMeter, io_stalled_seconds, machine_busy
from bench.disk import FsyncProbe
from bench.soak.counts import Counts
from bench.soak.load import Load
from bench.soak.report import HEAD, row_line
from publisher import watch
from publisher.load import Report
from pubsub import database
from pubsub.settings import Settings
from stack.supervisor import Supervisor


@dataclass
class Minute:
    minute: int
    rate: float  # events accepted per second
    p99_ms: float  # batched requests
    lag_p99_ms: float
    rss_mib: dict[str, float]
    table_mib: float
    queued: int
    cpu_us: float = 0.0  # CPU of the services, PostgreSQL and RabbitMQ per accepted event
    busy: float = 0.0  # share of the machine's CPU time spent busy, load generator included
    io_stall: float = 0.0  # share of the time some task waited for I/O (/proc/pressure/io)
    checkpoints: int = 0  # PostgreSQL checkpoints that began in the minute
    vacuums: int = 0  # autovacuum and autoanalyze runs on the events table that ended in it
    fsync_max_ms: float = 0.0  # the slowest 8 KiB write + fdatasync of the disk probe


class Sampler:
    def __init__(
        self, settings: Settings, stack: Supervisor, http: aiohttp.ClientSession, counts: Counts
    ) -> None:
        self.settings, self.stack, self.http, self.counts = settings, stack, http, counts

    async def lag_buckets(self) -> dict[float, float]:
        """The consumers' lag histogram, summed: upper bound -> cumulative count."""
        out: dict[float, float] = {}
        for name in self.stack.consumers:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(self.stack.url(name) + "/metrics") as resp:
                    text = await resp.text()
                for line in text.splitlines():
                    if line.startswith("pubsub_consumer_lag_seconds_bucket{"):
                        le = line.split('le="')[1].split('"')[0]
                        bound = float("inf") if le == "+Inf" else float(le)
                        out[bound] = out.get(bound, 0.0) + float(line.split()[-1])
        return out

    def database_sample(self) -> tuple[float, int, int]:
        """Table and index MiB, and the checkpoints and autovacuum runs on ``events`` so far:
        what PostgreSQL did that could stall the consumers' commits."""
        with psycopg.connect(
            self.settings.database_url, **database.connect_kwargs(self.settings)
        ) as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size('events') + pg_total_relation_size('ledger')"
                " + pg_total_relation_size('counters'),"
                " (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),"
                " (SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables"
                "  WHERE relid = 'events'::regclass)"
            ).fetchone()
        if row is None:
            return 0.0, 0, 0
        return int(row[0] or 0) / 2**20, int(row[1] or 0), int(row[2] or 0)

    async def sample(self, load: Load, minutes: int, out: list[Minute]) -> None:
        """One row a minute, printed as it comes."""
        accepted, lag = await self.counts.accepted(), await self.lag_buckets()
        meter = CpuMeter(self.stack)
        meter.start()
        disk = FsyncProbe()
        disk.start()
        busy, total = machine_busy()
        stalled = io_stalled_seconds()
        _, checkpoints, vacuums = self.database_sample()
        print(HEAD, file=sys.stderr, flush=True)
        try:
            for minute in range(1, minutes + 1):
                await asyncio.sleep(60)
                report, load.report = load.report, Report()
                now_accepted, now_lag = await self.counts.accepted(), await self.lag_buckets()
                cpu = sum(meter.stop().values())
                meter.start()
                now_busy, now_total = machine_busy()
                now_stalled = io_stalled_seconds()
                table_mib, now_checkpoints, now_vacuums = self.database_sample()
                stats = await watch.stats_if_up(self.http, self.stack.read_url) or {}
                row = Minute(
                    minute=minute,
                    rate=(now_accepted - accepted) / 60,
                    p99_ms=report.percentile(99) * 1000,
                    lag_p99_ms=_p99({k: v - lag.get(k, 0.0) for k, v in now_lag.items()}) * 1000,
                    rss_mib={n: self.stack.rss_kib(n) / 1024 for n in self.stack.names},
                    table_mib=table_mib,
                    queued=int(stats.get("queued_messages") or 0),
                    cpu_us=cpu / max(now_accepted - accepted, 1) * 1e6,
                    busy=(now_busy - busy) / max(now_total - total, 1e-9),
                    io_stall=(now_stalled - stalled) / 60,
                    checkpoints=now_checkpoints - checkpoints,
                    vacuums=now_vacuums - vacuums,
                    fsync_max_ms=max(disk.take(), default=0.0) * 1000,
                )
                accepted, lag, busy, total = now_accepted, now_lag, now_busy, now_total
                stalled, checkpoints, vacuums = now_stalled, now_checkpoints, now_vacuums
                out.append(row)
                print(row_line(row), file=sys.stderr, flush=True)
        finally:
            disk.stop()


def _p99(buckets: dict[float, float]) -> float:
    """The 99th percentile of a cumulative histogram, interpolated inside its bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return 0.0
    goal, lower, below = 0.99 * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= goal:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (goal - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower
