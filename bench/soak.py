"""``python -m bench.soak``: the whole system under steady load for a long time, judged by itself.

Runs the services as separate processes (ingest, two consumers, read API) in a schema and queue
of their own. First it measures the batched rate the system sustains on this machine, twice:

- a burst: events sent at full speed for ``--probe`` seconds, divided by the time until all of
  them are stored (ingest accepts faster than the consumers store, so its own rate would
  overstate it). The consumers then store batches of thousands, the cheapest per event;
- the soak's own shape: ``--shape`` seconds of batches of 100 at half the burst rate, measuring
  how busy the machine was (load generator included). A steady flow fills smaller batches, so
  an event costs more than in the burst; the rate at which the machine would be fully busy,
  ``rate / busy``, is the maximum for this shape.

Then for ``--minutes`` it sends batches of 100 events (20 % duplicates) at half the lower of
the two maximums, plus a trickle of single events and of ``GET /events`` reads. Every minute
it prints a row: events/s, p99 HTTP latency, p99 lag (ingest's accept to the consumer's
commit), the RSS of every process, the PostgreSQL table and index bytes, the queue depth, the
CPU per event and how busy the machine was. At the end it judges the run:

- no process's RSS grows by 10 % or more after the warm-up;
- p99 latency and lag stay flat: the last window within 1.5 times the window after the warm-up
  (plus a noise floor of 5 ms and 50 ms: a flat line at 3 ms is not a regression at 5 ms);
  judged from 10 minutes on (a shorter run, as in CI, reports the trend: its one-minute
  windows right after start-up measure tables filling from empty);
- the counts are exact: accepted = received, unique + duplicate = received, rows = unique.

The windows are a sixth of the run (at least a minute): minutes 5-10 and 25-30 of 30 minutes.
``--plot PNG`` draws rate, p99 latency and RSS over time (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

from bench.cpu import CpuMeter, io_stalled_seconds, machine_busy
from bench.disk import FsyncProbe
from bench.postgres import RECOMMENDED, own_server
from bench.system import private_system
from publisher import watch
from publisher.load import EventSource, LoadConfig, Report, send_body
from pubsub import database
from pubsub.settings import Settings
from stack.supervisor import Supervisor, free_port

BATCH = 100
RSS_GROWTH = 0.10
FLAT = 1.5
LATENCY_FLOOR_MS, LAG_FLOOR_MS = 5.0, 50.0
FLAT_JUDGED_FROM = 10  # minutes: shorter runs report latency and lag trends without judging


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


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Soak:
    def __init__(self, settings: Settings, stack: Supervisor, http: aiohttp.ClientSession) -> None:
        self.settings, self.stack, self.http = settings, stack, http
        self.cfg = LoadConfig(
            ingest_url=stack.ingest_url,
            read_url=stack.read_url,
            batch_size=BATCH,
            duplicates=0.2,
            topic="soak",
            retries=100,
        )
        self.source = EventSource(self.cfg)
        self.report = Report()  # replaced every minute
        self.failed = 0

    async def send_batches(self, rate: float, until: float, concurrency: int = 16) -> None:
        """Batches of 100 events at ``rate`` events/s (as fast as possible when 0) until the
        monotonic time ``until``: each sender takes the next slot of a common schedule."""
        interval = BATCH / rate if rate else 0.0
        start = time.monotonic()
        slot = 0

        async def sender() -> None:
            nonlocal slot
            while True:
                due = start + slot * interval
                slot += 1
                if due >= until or time.monotonic() >= until:
                    return
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                body = self.source.body(None)
                if body is None:
                    return
                key = f"{self.cfg.run_id}:{self.source.made}"
                if not await send_body(self.http, self.cfg, body[0], self.report, key):
                    self.failed += body[1]

        await asyncio.gather(*(sender() for _ in range(concurrency)))

    async def shape_maximum(self, rate: float, seconds: float) -> float:
        """Events/s at which batches of :data:`BATCH` would keep the machine fully busy, from
        ``seconds`` of them at ``rate``: the accepted rate divided by the busy share."""
        accepted = await self.accepted()
        busy, total = machine_busy()
        started = time.monotonic()
        await self.send_batches(rate, started + seconds)
        elapsed = time.monotonic() - started
        now_busy, now_total = machine_busy()
        share = (now_busy - busy) / max(now_total - total, 1e-9)
        return (await self.accepted() - accepted) / elapsed / max(share, 0.05)

    async def trickle(self, until: float) -> None:
        """Single events (20/s) and ``GET /events`` reads (5/s), alongside the batches."""
        single = LoadConfig(
            ingest_url=self.cfg.ingest_url, read_url=self.cfg.read_url, mode="single",
            topic="soak-single", retries=100, run_id=self.cfg.run_id + "s",
        )  # fmt: skip
        singles = EventSource(single)
        ignored = Report()
        tick = 0
        while time.monotonic() < until:
            tick += 1
            item = singles.body(None)
            if item is not None and not await send_body(
                self.http, single, item[0], ignored, f"{single.run_id}:{tick}"
            ):
                self.failed += 1
            if tick % 4 == 0:
                topic = random.choice(("soak", "soak-single"))
                async with self.http.get(
                    f"{self.cfg.read_url}/events", params={"topic": topic, "limit": "100"}
                ) as resp:
                    await resp.read()
            await asyncio.sleep(0.05)

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

    async def accepted(self) -> float:
        return await watch.metric(
            self.http, [self.stack.ingest_url], "pubsub_ingest_events_accepted_total"
        )

    async def sample(self, minutes: int, out: list[Minute]) -> None:
        """One row a minute, printed as it comes."""
        accepted, lag = await self.accepted(), await self.lag_buckets()
        meter = CpuMeter(self.stack)
        meter.start()
        disk = FsyncProbe()
        disk.start()
        busy, total = machine_busy()
        stalled = io_stalled_seconds()
        _, checkpoints, vacuums = self.database_sample()
        print(_HEAD, file=sys.stderr, flush=True)
        try:
            for minute in range(1, minutes + 1):
                await asyncio.sleep(60)
                report, self.report = self.report, Report()
                now_accepted, now_lag = await self.accepted(), await self.lag_buckets()
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
                print(_row(row), file=sys.stderr, flush=True)
        finally:
            disk.stop()

    def verify(self, before: dict[str, int], after: dict[str, int]) -> list[str]:
        problems = []
        d = {k: after[k] - before[k] for k in after}
        if self.failed:
            problems.append(f"{self.failed} events were never accepted")
        if d["accepted"] != d["received"]:
            problems.append(f"accepted {d['accepted']} != received {d['received']}")
        if d["unique"] + d["duplicate"] != d["received"]:
            problems.append(f"unique + duplicate != received: {d}")
        with psycopg.connect(
            self.settings.database_url, **database.connect_kwargs(self.settings)
        ) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        if row is None or row[0] != d["unique"]:
            problems.append(f"{row} rows stored but unique_processed grew {d['unique']}")
        return problems

    def target(self, before: dict[str, int]) -> Callable[[], Awaitable[int]]:
        """``received`` once all that ingest accepted since ``before`` is stored."""

        async def goal() -> int:
            return before["received"] + int(await self.accepted()) - before["accepted"]

        return goal

    async def counts(self) -> dict[str, int]:
        stats = await watch.fetch_stats(self.http, self.stack.read_url)
        return {
            "accepted": int(await self.accepted()),
            "received": int(stats["received"]),
            "unique": int(stats["unique_processed"]),
            "duplicate": int(stats["duplicate_dropped"]),
        }


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


_HEAD = (
    "| minute | events/s | p99 HTTP ms | p99 lag ms | RSS MiB ingest / consumers / read API"
    " | tables MiB | queued | CPU µs/event | machine busy | I/O stalled"
    " | checkpoints, autovacuums | disk fsync max ms |"
    "\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _row(m: Minute) -> str:
    consumers = " + ".join(f"{v:.0f}" for k, v in m.rss_mib.items() if k.startswith("consumer"))
    rss = f"{m.rss_mib.get('ingest', 0):.0f} / {consumers} / {m.rss_mib.get('readapi', 0):.0f}"
    return (
        f"| {m.minute} | {m.rate:,.0f} | {m.p99_ms:.1f} | {m.lag_p99_ms:.0f} | {rss}"
        f" | {m.table_mib:,.0f} | {m.queued} | {m.cpu_us:.0f} | {m.busy:.0%} | {m.io_stall:.0%}"
        f" | {m.checkpoints}, {m.vacuums} | {m.fsync_max_ms:.0f} |"
    )


def judge(rows: list[Minute]) -> Verdict:
    verdict = Verdict()
    n = len(rows)
    window = max(1, n // 6)
    warm = window
    if n < warm + 2 * window:
        verdict.problems.append(f"{n} minute(s) are too few to judge")
        return verdict
    base, last = rows[warm : warm + window], rows[-window:]
    for name, after_warmup in rows[warm - 1].rss_mib.items():
        end = rows[-1].rss_mib.get(name, 0.0)
        if after_warmup and end > after_warmup * (1 + RSS_GROWTH):
            verdict.problems.append(
                f"{name} RSS grew {end / after_warmup - 1:.0%} after the warm-up"
                f" ({after_warmup:.0f} -> {end:.0f} MiB)"
            )
    series: tuple[tuple[str, float, Callable[[Minute], float]], ...] = (
        ("p99 HTTP latency", LATENCY_FLOOR_MS, lambda m: m.p99_ms),
        ("p99 lag", LAG_FLOOR_MS, lambda m: m.lag_p99_ms),
    )
    for what, floor, get in series:
        early = sum(get(m) for m in base) / len(base)
        late = sum(get(m) for m in last) / len(last)
        if late <= max(FLAT * early, early + floor):
            continue
        change = f"{what} rose from {early:.1f} to {late:.1f} ms (allowed: {FLAT}x or +{floor:g})"
        if n < FLAT_JUDGED_FROM:
            # Windows of a minute right after start-up measure the tables filling from empty.
            verdict.notes.append(f"{change}; not judged under {FLAT_JUDGED_FROM} minutes")
        else:
            verdict.problems.append(change)
    if any(m.fsync_max_ms for m in rows):
        # Whose stall was it: the probe writes next to nothing, so a slow fsync there is the
        # disk's, not the system's load alone.
        verdict.notes.append(
            "the disk's own 8 KiB fdatasync, probed 4 times a second beside the system, took at"
            f" worst {max(m.fsync_max_ms for m in base):.0f} ms in {_span(base)} and"
            f" {max(m.fsync_max_ms for m in last):.0f} ms in {_span(last)};"
            f" the median minute's worst was {_median_worst(rows):.0f} ms"
        )
    return verdict


def _span(rows: list[Minute]) -> str:
    if len(rows) == 1:
        return f"minute {rows[0].minute}"
    return f"minutes {rows[0].minute}-{rows[-1].minute}"


def _median_worst(rows: list[Minute]) -> float:
    worst = sorted(m.fsync_max_ms for m in rows)
    return worst[len(worst) // 2]


def plot(rows: list[Minute], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [m.minute for m in rows]
    fig, (rate, latency, rss) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    rate.plot(minutes, [m.rate for m in rows], marker="o")
    rate.set_ylabel("events/s accepted")
    rate.set_ylim(bottom=0)
    latency.plot(minutes, [m.p99_ms for m in rows], marker="o", label="p99 HTTP (batches)")
    latency.plot(minutes, [m.lag_p99_ms for m in rows], marker="o", label="p99 lag to commit")
    latency.plot(minutes, [m.fsync_max_ms for m in rows], marker=".", linestyle=":",
                 label="disk fsync, worst (probe)")  # fmt: skip
    latency.set_ylabel("ms (log)")
    latency.set_yscale("log")  # stalls are seconds, calm minutes tens of ms
    latency.legend()
    for name in rows[0].rss_mib:
        rss.plot(minutes, [m.rss_mib.get(name, 0) for m in rows], marker="o", label=name)
    rss.set_ylabel("RSS MiB")
    rss.set_ylim(bottom=0)
    rss.set_xlabel("minute")
    rss.legend()
    fig.suptitle(f"pubsub-aggregator soak, {len(rows)} minutes, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> int:
    if args.postgres == "machine":
        return await soak(args, {})
    print("starting a PostgreSQL server of the soak's own, configured as recommended: "
          + ", ".join(f"{k}={v}" for k, v in RECOMMENDED.items()), file=sys.stderr)  # fmt: skip
    with own_server(free_port()) as url:
        return await soak(args, {"database_url": url})


async def soak(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    rows: list[Minute] = []
    async with (
        private_system("soak", consumers=2, **overrides) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        stack.start_all()
        soak = Soak(stack.settings, stack, http)
        before = await soak.counts()
        peak = 0.0
        if args.rate:
            rate = args.rate
            print(f"soaking at {rate:,.0f} events/s (given)", file=sys.stderr)
        else:
            print(f"measuring the sustained batched rate ({args.probe:g} s) ...", file=sys.stderr)
            started = time.monotonic()
            await soak.send_batches(0, started + args.probe)
            accept_rate = soak.source.made / args.probe
            await watch.wait_stored(http, stack.read_url, soak.target(before), timeout=600)
            # What the system sustains is what it stores: ingest alone accepts faster, and the
            # queue takes the difference only for a while.
            burst = soak.source.made / (time.monotonic() - started)
            print(
                f"burst: accepted {accept_rate:,.0f} events/s, stored {burst:,.0f} events/s"
                f" end to end; now {args.shape:g} s at {burst / 2:,.0f} ...",
                file=sys.stderr,
            )
            steady = await soak.shape_maximum(burst / 2, args.shape)
            peak = min(burst, steady)
            rate = peak / 2
            print(
                f"steady batches of {BATCH} would fill the machine at {steady:,.0f} events/s;"
                f" soaking at {rate:,.0f} (half of {peak:,.0f})",
                file=sys.stderr,
            )
        until = time.monotonic() + args.minutes * 60 + 1
        await asyncio.gather(
            soak.send_batches(rate, until),
            soak.trickle(until),
            soak.sample(args.minutes, rows),
        )
        await watch.wait_stored(http, stack.read_url, soak.target(before), timeout=600)
        problems = soak.verify(before, await soak.counts())
    verdict = judge(rows)
    verdict.problems += problems
    print()
    share = f"half of {peak:,.0f}, the steady maximum" if peak else "given"
    print(f"soak: {args.minutes} min at {rate:,.0f} events/s ({share}), "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(_HEAD)
    for row in rows:
        print(_row(row))
    for note in verdict.notes:
        print(f"note: {note}")
    print("verdict: " + ("OK" if verdict.ok else "FAIL: " + "; ".join(verdict.problems)))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0 if verdict.ok else 1


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=int, default=30, help="length of the soak")
    p.add_argument("--probe", type=float, default=20, help="seconds of the full-rate probe")
    p.add_argument(
        "--shape", type=float, default=30, help="seconds of the probe at the soak's own shape"
    )
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of the run here")
    p.add_argument(
        "--rate", type=float, default=0, help="events/s to soak at, instead of half the probe's"
    )
    p.add_argument(
        "--postgres",
        choices=("own", "machine"),
        default="own",
        help="own: a server of the soak's own with the recommended settings (needs root and "
        "initdb); machine: PUBSUB_DATABASE_URL, as it is configured",
    )
    raise SystemExit(asyncio.run(main(p.parse_args())))


if __name__ == "__main__":
    cli()
