"""``python -m bench.storage``: a retention sweep next to full load, and reads on a big table.

1. **Retention.** The events table first gets ``--expired`` events received 40 days ago. Then
   batched load (wrk, batches of 100, 20 % duplicates) runs for ``--duration`` seconds three
   times: without a sweep, while a 30-day retention sweep removes those events, and without
   again. It prints the three rates and the ratio of the one during the sweep to the mean of
   the two without (goal: at least 0.95), and fails when the sweep ran out of work before the
   load ended (then the middle run did not measure a sweep).
2. **Reads.** ``--rows`` events (10,000,000) over ``--topics`` topics (10,000) are written
   straight into PostgreSQL, as consumers would have stored them. ``wrk`` then reads
   ``GET /stats``, ``GET /events?limit=100`` and ``GET /events?topic=<random>&limit=100`` for
   ``--read-seconds`` each at ``--read-connections`` connections (goals: ``/stats`` p99 under
   25 ms, ``/events`` p99 under 15 ms).
3. **Search and histogram** (:mod:`bench.finding`): ``q=`` without an index and with the
   trigram one, the histogram from the rollup, the rollup's count from the table (the upgrade
   to schema 5) and the bytes per stored event.
4. **Base and head** (with ``--base``, :mod:`bench.footprint`): the bytes and the PostgreSQL
   CPU time per stored event of this commit's schema and store next to those of ``--base``,
   alternated in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import psycopg

from bench import finding, footprint, record
from bench.system import private_system
from bench.workloads import LUA, Bench, Result, launch, run_wrk, table
from consumer.retention import Sweeper
from pubsub import database, layout
from pubsub.settings import Settings
from stack.supervisor import Supervisor

SWEEP_RATIO_GOAL = 0.95
P99_GOAL_MS = {"stats": 25.0, "events": 15.0, "topic": 15.0}

# Rows as consumers store them, in bulk: topics "topic-<n>", timestamps over 30 days; made in
# a table of their own, then moved into blocks as the upgrade from schema 5 moves its events.
_FILL = """
CREATE TEMP TABLE filling AS
SELECT %(prefix)s || (g %% %(topics)s) AS topic, md5(g::text) AS event_id,
       now() - (g %% 2592000) * interval '1 second' AS ts, 'bench'::text AS source,
       json_build_object('n', g, 'msg', 'event ' || g, 'pad', repeat('x', 100)) AS payload,
       now() - %(age)s * interval '1 day' AS received_at, now() AS stored_at,
       pg_current_xact_id() AS txid
FROM generate_series(%(first)s, %(last)s) AS g
"""
_FILL_TOPICS = """
INSERT INTO topics SELECT %(prefix)s || n FROM generate_series(0, %(topics)s - 1) AS n
ON CONFLICT DO NOTHING
"""
_COUNT = """
INSERT INTO counters AS c (shard, received, unique_processed) VALUES (-2, %(n)s, %(n)s)
ON CONFLICT (tenant, shard) DO UPDATE SET received = c.received + excluded.received,
    unique_processed = c.unique_processed + excluded.unique_processed
"""


def fill(settings: Settings, *, rows: int, topics: int, prefix: str, age_days: float) -> float:
    """Write ``rows`` events straight into the table, a million per transaction; seconds."""
    started = time.perf_counter()
    with psycopg.connect(
        settings.database_url, autocommit=True, **database.connect_kwargs(settings)
    ) as conn:
        for first in range(1, rows + 1, 1_000_000):
            last = min(rows, first + 999_999)
            params = {"prefix": prefix, "topics": topics, "age": age_days}
            with conn.transaction():
                conn.execute(_FILL, {**params, "first": first, "last": last})
                conn.execute(layout.move("filling"))
                conn.execute("DROP TABLE filling")
            print(f"  {last:,} of {rows:,} rows", file=sys.stderr, flush=True)
        conn.execute(_FILL_TOPICS, {"prefix": prefix, "topics": topics})
        conn.execute(_COUNT, {"n": rows})
        conn.execute("VACUUM ANALYZE blocks")
        conn.execute("VACUUM ANALYZE keys")
    return time.perf_counter() - started


async def retention(
    args: argparse.Namespace, bench: Bench, out: record.Output
) -> tuple[list[Result], list[str]]:
    settings = bench.settings
    print(f"retention: {args.expired:,} events received 40 days ago ...", file=sys.stderr)
    fill(settings, rows=args.expired, topics=100, prefix="expired-", age_days=40)
    sweeper = Sweeper(settings.replace(retention="30d"))
    results, problems = [], []

    async def load(name: str) -> Result:
        topic = f"storage-{uuid.uuid4().hex[:6]}"
        print(f"workload {name} ...", file=sys.stderr)
        drive = bench.wrk(topic, batch=100, connections=16, seconds=args.duration)
        return await bench.run(name, topic, drive)

    results.append(await load("batches of 100, no sweep"))
    stop = asyncio.Event()
    began = time.monotonic()
    sweeping = asyncio.create_task(sweeper.sweep(stop))
    done: list[float] = []
    sweeping.add_done_callback(lambda _: done.append(time.monotonic()))
    results.append(await load("batches of 100, during a retention sweep"))
    ended = time.monotonic()
    stop.set()
    swept = await sweeping
    await sweeper.close()
    results.append(await load("batches of 100, no sweep again"))
    removed = swept.events if swept else 0
    with psycopg.connect(settings.database_url, **database.connect_kwargs(settings)) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE topic LIKE 'expired-%'").fetchone()
    left = int(row[0]) if row else 0
    out(f"the sweep removed {removed:,} events during the load; {left:,} were left")
    swept_for = (min(done[0], ended) if done else ended) - began
    out(f"the sweep ran {swept_for:.0f} s of the load's {ended - began:.0f} s")
    if left == 0:
        problems.append("the sweep ran out of work before the load ended: raise --expired")
    if removed + left != args.expired:
        problems.append(f"removed {removed:,} + left {left:,} != {args.expired:,}")
    without = (results[0].rate + results[2].rate) / 2
    ratio = results[1].rate / without if without else 0.0
    verdict = "met" if ratio >= SWEEP_RATIO_GOAL else "NOT MET"
    out(f"throughput during the sweep / without: {ratio:.2f} (goal {SWEEP_RATIO_GOAL}): {verdict}")
    if ratio < SWEEP_RATIO_GOAL:
        problems.append(f"throughput during the sweep was {ratio:.2f} of the rate without")
    return results, problems


@dataclass
class Read:
    kind: str
    path: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float

    @property
    def goal_met(self) -> bool:
        return self.p99_ms < P99_GOAL_MS[self.kind]


async def reads(args: argparse.Namespace, settings: Settings, read_url: str) -> list[Read]:
    print(f"reads: {args.rows:,} events over {args.topics:,} topics ...", file=sys.stderr)
    seconds = fill(settings, rows=args.rows, topics=args.topics, prefix="topic-", age_days=0)
    print(f"  filled in {seconds:.0f} s", file=sys.stderr)
    out = []
    paths = {
        "stats": "/stats",
        "events": "/events?limit=100",
        "topic": "/events?topic=topic-<random>&limit=100",
    }
    for kind, path in paths.items():
        summary = await run_wrk(
            LUA, read_url, threads=1, connections=args.read_connections,
            seconds=args.read_seconds, env={"BENCH_READ": kind, "BENCH_TOPICS": str(args.topics)},
        )  # fmt: skip
        out.append(
            Read(
                kind, path, summary["requests"] / (summary["duration_us"] / 1e6),
                summary["p50_us"] / 1000, summary["p99_us"] / 1000,
            )
        )  # fmt: skip
    return out


@contextlib.asynccontextmanager
async def system() -> AsyncIterator[tuple[Supervisor, aiohttp.ClientSession]]:
    """A private system with every service started, and an HTTP session."""
    async with (
        # A search without an index over all events is measured, not cut off at 10 s.
        private_system("storage", consumers=2, read_statement_timeout=120) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        stack.start_all(["readapi", "ingest", "consumer-1", "consumer-2"])
        yield stack, http


async def main(args: argparse.Namespace) -> int:
    out = record.Output()
    problems: list[str] = []
    results: list[Result] = []
    if args.expired:
        async with system() as (stack, http):
            bench = Bench(stack.settings, stack, http)
            results, problems = await retention(args, bench, out)
            bench.db.close()
    read_rows: list[Read] = []
    blocks = 0
    found = None
    if args.rows:
        # A system of its own: the sweep's load leaves millions of events of one topic and
        # one timestamp, which the reads would find first.
        async with system() as (stack, http):
            read_rows = await reads(args, stack.settings, stack.read_url)
            with psycopg.connect(
                stack.settings.database_url, **database.connect_kwargs(stack.settings)
            ) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM blocks WHERE topic LIKE 'topic-%'"
                ).fetchone()
                blocks = int(row[0]) if row else 0
            if args.search_requests:
                print("search and histogram ...", file=sys.stderr)
                found = await finding.measure(
                    http, stack.settings, stack.read_url, topics=args.topics, prefix="topic-",
                    requests=args.search_requests, budget=args.search_seconds,
                )  # fmt: skip
    if results:
        out()
        out(table(results))
    if read_rows:
        out()
        out(
            f"reads on {args.rows:,} events over {args.topics:,} topics,"
            f" {args.read_connections} connections, {args.read_seconds:g} s each:"
        )
        out("| request | req/s | p50 ms | p99 ms | goal (p99) |")
        out("| --- | --- | --- | --- | --- |")
        for r in read_rows:
            goal = f"< {P99_GOAL_MS[r.kind]:g} ms: " + ("met" if r.goal_met else "NOT MET")
            cells = [f"`GET {r.path}`", f"{r.requests_per_s:,.0f}", f"{r.p50_ms:.1f}"]
            out("| " + " | ".join([*cells, f"{r.p99_ms:.1f}", goal]) + " |")
            if not r.goal_met:
                problems.append(f"GET {r.path}: p99 {r.p99_ms:.1f} ms")
        out(f"blocks: {blocks:,}, {args.rows / max(blocks, 1):,.1f} events each")
    if found is not None:
        out()
        out(f"search and histogram on {args.rows:,} events over {args.topics:,} topics, one "
            "connection, requests in a row:")  # fmt: skip
        problems += finding.report(found, out)
    if args.base:
        out()
        for line in footprint.compare(args.base, "HEAD", rounds=args.footprint_rounds):
            out(line)
    for problem in problems:
        out(f"problem: {problem}")
    if args.rows:
        out.write(
            "storage",
            title="Storage and reads: a retention sweep next to load, reads on a big table",
        )
    else:  # the sweep alone: kept apart, so that it does not replace the reads' last run
        out.write("storage-retention", title="A retention sweep next to load")
    return 1 if problems or any(r.problems for r in results) else 0


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    p.add_argument("--duration", type=float, default=30, help="seconds of each batched load")
    p.add_argument(
        "--expired", type=int, default=3_000_000, help="backdated events to sweep (0: skip)"
    )
    p.add_argument("--rows", type=int, default=10_000_000, help="events for the reads (0: skip)")
    p.add_argument("--topics", type=int, default=10_000, help="topics of those events")
    p.add_argument("--read-seconds", type=float, default=10, help="seconds of each read load")
    p.add_argument("--read-connections", type=int, default=4, help="connections of the reads")
    p.add_argument(
        "--search-requests", type=int, default=50, help="requests per search (0: skip them)"
    )
    p.add_argument(
        "--search-seconds", type=float, default=60, help="most seconds of one search's requests"
    )
    p.add_argument("--base", help="also compare bytes and CPU per stored event with this commit")
    p.add_argument(
        "--footprint-rounds", type=int, default=3, help="runs of base and head each (--base)"
    )
    launch(main, p.parse_args())


if __name__ == "__main__":
    cli()
