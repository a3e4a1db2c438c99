"""The bench's workloads: a system under load over HTTP, timed until everything accepted is
stored, with the counts checked exactly and every process's peak memory sampled.

:class:`Bench` drives the system (``wrk`` with ``load.lua``, the project's publisher, drains of
a queued backlog) and returns a :class:`Result` per workload; ``python -m bench`` and
``python -m bench.storage`` print them with :func:`table`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from publisher import watch
from publisher.load import EventSource, LoadConfig, Report, send_load
from pubsub import database
from pubsub.settings import Settings
from stack.supervisor import Supervisor

LUA = Path(__file__).with_name("load.lua")
# Resident memory each process must stay under, whatever the load (MiB): every buffer in the
# system is bounded (prefetch, batch size, request body, messages in flight).
RSS_CAP_MIB = {"ingest": 256, "consumer": 256, "readapi": 128}


@dataclass
class Result:
    name: str
    events: int = 0
    seconds: float = 0.0
    http_ms: tuple[float, float] | None = None
    queryable_ms: tuple[float, float] | None = None
    mean_batch: float = 0.0
    rss_mib: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class RssSampler:
    """Peak resident memory of each child, sampled every 100 ms in a thread."""

    def __init__(self, stack: Supervisor) -> None:
        self.stack, self.peak = stack, dict[str, int]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name in self.stack.names:
                kind = name.split("-")[0]
                self.peak[kind] = max(self.peak.get(kind, 0), self.stack.rss_kib(name))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(
        self, settings: Settings, stack: Supervisor, session: aiohttp.ClientSession
    ) -> None:
        self.settings, self.stack, self.http = settings, stack, session
        self.db = psycopg.connect(
            settings.database_url, autocommit=True, **database.connect_kwargs(settings)
        )

    def checkpoint(self) -> None:
        """Write PostgreSQL's dirty pages out now, so that the checkpoint a run's writes make
        due does not land in the next run (skipped when the role may not)."""
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            self.db.execute("CHECKPOINT")

    async def metric(self, names: list[str], metric: str) -> float:
        urls = [self.stack.url(name) for name in names if self.stack.running(name)]
        return await watch.metric(self.http, urls, metric)

    async def snapshot(self) -> dict[str, float]:
        stats = await watch.fetch_stats(self.http, self.stack.read_url)
        consumers = self.stack.consumers
        return {
            "accepted": await self.metric(["ingest"], "pubsub_ingest_events_accepted_total"),
            "received": stats["received"],
            "unique": stats["unique_processed"],
            "duplicate": stats["duplicate_dropped"],
            "queued": stats["queued_messages"] or 0,
            "batch_sum": await self.metric(consumers, "pubsub_consumer_batch_events_sum"),
            "batch_count": await self.metric(consumers, "pubsub_consumer_batch_events_count"),
        }

    async def settle(self, before: dict[str, float], timeout: float = 600) -> dict[str, float]:
        """Wait until all that ingest accepted is stored. Requests the load generator gave up
        on at its deadline may still be accepted after it exits, so ingest's count is read
        again at each poll."""

        async def target() -> int:
            accepted = await self.metric(["ingest"], "pubsub_ingest_events_accepted_total")
            return int(before["received"] + accepted - before["accepted"])

        # First until ingest holds no request: one still awaiting its confirm would be counted
        # as accepted after the count below was read, and seem lost.
        deadline = time.monotonic() + timeout
        while await self.metric(["ingest"], "pubsub_ingest_bytes_in_flight") > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("ingest still holds requests")
            await asyncio.sleep(0.05)
        await watch.wait_stored(self.http, self.stack.read_url, target, timeout=timeout)
        return await self.snapshot()

    async def run(
        self,
        name: str,
        topic: str,
        drive: Callable[[], Awaitable[tuple[float, float] | None]],
        *,
        before: dict[str, float] | None = None,
        started: float | None = None,
    ) -> Result:
        """Time ``drive()`` until everything accepted since ``before`` is stored; check counts.
        The clock starts at ``started`` (``time.perf_counter()``) when given, else now."""
        result = Result(name)
        if before is None:
            before = await self.snapshot()
        with RssSampler(self.stack) as rss:
            started = time.perf_counter() if started is None else started
            result.http_ms = await drive()
            after = await self.settle(before)
            result.seconds = time.perf_counter() - started
        result.rss_mib = {k: round(v / 1024, 1) for k, v in rss.peak.items()}
        for kind, peak in result.rss_mib.items():
            if peak > RSS_CAP_MIB.get(kind, 256):
                result.problems.append(f"{kind} peaked at {peak} MiB, over its cap")
        self.verify(result, topic, before, after)
        batches = after["batch_count"] - before["batch_count"]
        if batches > 0:
            result.mean_batch = (after["batch_sum"] - before["batch_sum"]) / batches
        row = self.db.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
            " (ORDER BY extract(epoch FROM stored_at - received_at)) FROM events"
            " WHERE topic = %s",
            (topic,),
        ).fetchone()
        if row and row[0]:
            result.queryable_ms = (row[0][0] * 1000, row[0][1] * 1000)
        return result

    def verify(
        self, result: Result, topic: str, before: dict[str, float], after: dict[str, float]
    ) -> None:
        d = {k: int(after[k] - before[k]) for k in ("accepted", "received", "unique", "duplicate")}
        result.events = d["received"]
        (rows,) = self.db.execute(
            "SELECT count(*) FROM events WHERE topic = %s", (topic,)
        ).fetchone() or (0,)
        if d["accepted"] != d["received"]:
            result.problems.append(f"accepted {d['accepted']} != received {d['received']}")
        if d["unique"] + d["duplicate"] != d["received"]:
            result.problems.append(f"unique + duplicate != received: {d}")
        if rows != d["unique"]:
            result.problems.append(f"{rows} rows stored but unique_processed grew {d['unique']}")
        if d["received"] == 0:
            result.problems.append("nothing was sent")

    # --- drivers -------------------------------------------------------------------------

    def wrk(
        self,
        topic: str,
        *,
        batch: int,
        connections: int,
        seconds: float,
        protocol: str = "publish",
    ) -> Callable[[], Awaitable[tuple[float, float]]]:
        """``wrk`` sending ``batch`` events per request for ``seconds``, 20% of them again, to
        ``POST /publish`` or as ``protocol`` says (the kinds ``bench/load.lua`` lists)."""

        async def drive() -> tuple[float, float]:
            env = {
                "BENCH_RUN": uuid.uuid4().hex[:8],
                "BENCH_BATCH": str(batch),
                "BENCH_TOPIC": topic,
                "BENCH_DUP": "0.2",
                "BENCH_PROTOCOL": protocol,
            }
            threads = 2 if batch >= 100 else 1  # Lua builds the bodies: big ones want a thread more
            summary = await run_wrk(
                LUA, self.stack.ingest_url, threads=threads, connections=connections,
                seconds=seconds, env=env,
            )  # fmt: skip
            return summary["p50_us"] / 1000, summary["p99_us"] / 1000

        return drive

    def publisher(
        self,
        topic: str,
        *,
        events: int,
        batch: int,
        concurrency: int,
        payload_bytes: int = 0,
        retries: int = 20,
    ) -> Callable[[], Awaitable[tuple[float, float]]]:
        async def drive() -> tuple[float, float]:
            cfg = LoadConfig(
                ingest_url=self.stack.ingest_url,
                read_url=self.stack.read_url,
                events=events,
                batch_size=batch,
                concurrency=concurrency,
                topic=topic,
                payload_bytes=payload_bytes,
                retries=retries,
            )
            report = Report()
            await send_load(self.http, cfg, EventSource(cfg), report)
            if report.failed_events:
                raise RuntimeError(f"{report.failed_events} events were not accepted")
            return report.percentile(50) * 1000, report.percentile(99) * 1000

        return drive

    def gzip_burst(
        self, topic: str, *, bodies: int = 24, events: int = 18_000
    ) -> Callable[[], Awaitable[tuple[float, float]]]:
        """``bodies`` gzip requests at once, each inflating to ``events`` events (~15 MB from
        ~0.1 MB), retried after 503 as ``Retry-After`` says, while a probe sends one small
        event every 0.2 s. The HTTP latencies reported are the probe's: what other clients
        see during the burst."""

        async def drive() -> tuple[float, float]:
            batch = [
                {"topic": topic, "event_id": str(i), "source": "bench", "payload": {"m": "x" * 700}}
                for i in range(events)
            ]
            body = gzip.compress(json.dumps(batch).encode())
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            url = f"{self.stack.ingest_url}/publish"
            probe = Report()
            done = asyncio.Event()

            async def big() -> None:
                for _ in range(200):
                    async with self.http.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status == 202:
                            return
                        if resp.status != 503:
                            raise RuntimeError(f"gzip burst: {resp.status}")
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                raise RuntimeError("gzip burst: a body was never accepted")

            async def small() -> None:
                n = 0
                while not done.is_set():
                    n += 1
                    one = {"topic": topic, "event_id": f"probe-{n}", "source": "probe"}
                    started = time.perf_counter()
                    async with self.http.post(url, json=one) as resp:
                        await resp.read()
                        if resp.status != 202:
                            raise RuntimeError(f"gzip burst: a small request got {resp.status}")
                    probe.latencies.append(time.perf_counter() - started)
                    await asyncio.sleep(0.2)

            prober = asyncio.create_task(small())
            try:
                await asyncio.gather(*(big() for _ in range(bodies)))
            finally:
                done.set()
                await prober
            return probe.percentile(50) * 1000, probe.percentile(99) * 1000

        return drive

    async def drain(
        self,
        name: str,
        events: int,
        consumers: list[str],
        *,
        queued: Callable[[], None] | None = None,
    ) -> Result:
        """Queue ``events`` with every consumer stopped, then time ``consumers`` draining it;
        ``queued()`` is called once the backlog is in the queue."""
        for c in self.stack.consumers:
            if self.stack.running(c):
                self.stack.stop(c)
        topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        report = Report()
        cfg = LoadConfig(
            ingest_url=self.stack.ingest_url, read_url=self.stack.read_url,
            events=events, batch_size=1000, concurrency=4, topic=topic,
        )  # fmt: skip
        before = await self.snapshot()
        await send_load(self.http, cfg, EventSource(cfg), report)
        if report.failed_events:
            raise RuntimeError(f"{report.failed_events} events of the backlog not accepted")
        if queued is not None:
            queued()
        for consumer in consumers:
            self.stack.start(consumer, wait=False)
        # The clock starts when the first consumer answers /readyz: from then on the backlog
        # drains, whether the others are ready or not (a small backlog can be gone before the
        # last of four has started, which timed from then made 20,000 events a 23 ms drain).
        first = self.stack.wait_first_ready(consumers)
        for consumer in consumers:
            self.stack.wait_ready(consumer)
        return await self.run(name, topic, nothing, before=before, started=first)


def launch(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> None:
    """Run a bench's ``main`` and exit with its status; one line instead if wrk is missing."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the HTTP load: apt-get install wrk (or ./scripts/bench)")
    raise SystemExit(asyncio.run(main(args)))


async def run_wrk(
    script: Path, url: str, *, threads: int, connections: int, seconds: float,
    env: dict[str, str],
) -> dict[str, int]:  # fmt: skip
    """Run ``wrk`` with one of the bench's Lua scripts; its JSON summary (requests, p50_us,
    p99_us, duration_us). Any failed request or non-2xx answer raises."""
    proc = await asyncio.create_subprocess_exec(
        "wrk", f"-t{threads}", f"-c{max(connections, threads)}", f"-d{seconds:g}s",
        "--timeout", "30s", "-s", str(script), url,
        env={**os.environ, **env}, stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    summary: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    if summary["non2xx"] or summary["errors"]:
        raise RuntimeError(f"wrk saw failures: {summary}")
    return summary


async def nothing() -> None:
    return None


def table(results: list[Result], slowest_ceiling: float | None = None) -> str:
    """Results as a Markdown table; with a ceiling, each rate is also shown as a share of it."""
    cols = [
        "workload", "events", "events/s", "HTTP p50 / p99 ms", "queryable p50 / p99 ms",
        "mean batch", "peak RSS MiB (ingest / consumer / read API)",
    ]  # fmt: skip
    if slowest_ceiling:
        cols.append("vs slowest ceiling")
    cols.append("check")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in results:
        http = f"{r.http_ms[0]:.1f} / {r.http_ms[1]:.1f}" if r.http_ms else "-"
        q = f"{r.queryable_ms[0]:.0f} / {r.queryable_ms[1]:.0f}" if r.queryable_ms else "-"
        rss = " / ".join(f"{r.rss_mib.get(k, 0):.0f}" for k in ("ingest", "consumer", "readapi"))
        cells = [r.name, f"{r.events:,}", f"{r.rate:,.0f}", http, q, f"{r.mean_batch:,.0f}", rss]
        if slowest_ceiling:
            cells.append(f"{r.rate / slowest_ceiling:.2f}")
        cells.append("exact" if not r.problems else "FAIL: " + "; ".join(r.problems))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
