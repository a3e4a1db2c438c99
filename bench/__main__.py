"""``python -m bench``: ceilings and end-to-end workloads in one run, printed as a table.

Runs the real services as separate processes (ingest, consumers, read API) against the local
RabbitMQ and PostgreSQL, in a schema and queue of its own, drives them over HTTP (``wrk`` with
``bench/load.lua`` for sustained and single-event load, the project's publisher for the seeds'
batch and the backlog) and checks exact counts after every workload: the events ingest
accepted, the events the consumers received, and the rows stored must all agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import fairness, record
from bench.ceilings import measure as measure_ceilings
from bench.system import private_system
from bench.workloads import RSS_CAP_MIB, Bench, Result, launch, table


async def main(args: argparse.Namespace) -> int:
    results: list[Result] = []
    d = args.duration
    async with (
        private_system("bench", consumers=4) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        settings = stack.settings
        print(f"raw ceilings (schema {settings.db_schema}) ...", file=sys.stderr)
        ceilings = await measure_ceilings(settings)
        print(
            f"ceilings: broker publish+consume {ceilings.broker_events_per_s:,.0f} events/s"
            f" ({settings.message_max_events} events/message); database upsert"
            f" {ceilings.database_events_per_s:,.0f} events/s",
            file=sys.stderr,
        )
        stack.start_all(["readapi", "ingest", "consumer-1", "consumer-2"])
        bench = Bench(settings, stack, http)

        async def step(name: str, make: Callable[[str], Any]) -> None:
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            print(f"workload {name} ...", file=sys.stderr)
            results.append(await bench.run(name, topic, make(topic)))

        await step(
            "seeds 5,000 / 20% as one batch",
            lambda t: bench.publisher(t, events=5000, batch=5000, concurrency=1),
        )
        await step(
            "single events, concurrency 16",
            lambda t: bench.wrk(t, batch=1, connections=16, seconds=args.single),
        )
        await step(
            "single events, concurrency 64",
            lambda t: bench.wrk(t, batch=1, connections=64, seconds=args.single),
        )
        await step(
            f"batches of 100, {d:g} s",
            lambda t: bench.wrk(t, batch=100, connections=16, seconds=d),
        )
        await step(
            f"batches of 1,000, {d:g} s",
            lambda t: bench.wrk(t, batch=1000, connections=4, seconds=d),
        )
        # A hostile or simply busy client: 40 maximal batches at once (15.6 MB, 20,000
        # events each). Ingest's memory budget turns most away with 503 + Retry-After; the
        # publisher retries them, and ingest's RSS must stay under its cap throughout.
        await step(
            "burst: 40 concurrent batches of 20,000 events (15.6 MB)",
            lambda t: bench.publisher(
                t, events=800_000, batch=20_000, concurrency=40, payload_bytes=530,
                retries=200,
            ),
        )  # fmt: skip
        # The same with gzip bodies of 0.1 MB that inflate to 15 MB each: the budget counts
        # inflated bytes, and keeps room for the small requests of a probe beside it (its
        # latencies are the row's HTTP column).
        await step(
            "gzip burst: 24 bodies of 0.1 MB inflating to 15 MB, small requests beside",
            bench.gzip_burst,
        )
        print(f"backlog of {args.backlog:,} ...", file=sys.stderr)
        results.append(
            await bench.drain(
                f"backlog {args.backlog:,}, 2 consumers",
                args.backlog,
                ["consumer-1", "consumer-2"],
            )
        )
        for n in (1, 2, 4):
            print(f"drain with {n} consumer(s) ...", file=sys.stderr)
            names = [f"consumer-{i}" for i in range(1, n + 1)]
            results.append(
                await bench.drain(f"drain {args.scaling:,}, {n} consumer(s)", args.scaling, names)
            )
        bench.db.close()
    print("fairness between tenants ...", file=sys.stderr)
    fair = await fairness.measure(
        limit=args.fair_limit, rate=args.fair_rate, seconds=args.fair_seconds
    )
    print()
    out = record.Output()
    out(
        f"ceilings: broker {ceilings.broker_events_per_s:,.0f} events/s, database"
        f" {ceilings.database_events_per_s:,.0f} events/s; machine: {os.cpu_count()} cores"
    )
    out()
    out(table(results, ceilings.slowest))
    out()
    caps = ", ".join(f"{k} {v} MiB" for k, v in RSS_CAP_MIB.items())
    out(f"RSS caps checked on every workload: {caps}")
    out()
    out("Fairness between tenants (`python -m bench.fairness`):")
    out()
    fairness.report(out, fair, limit=args.fair_limit, rate=args.fair_rate)
    out.write("bench", title="Benchmark: ceilings and workloads")
    return 1 if any(r.problems for r in results) or fair.problems else 0


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="pubsub-aggregator bench", description=__doc__)
    p.add_argument("--duration", type=float, default=60, help="seconds of each sustained load")
    p.add_argument("--single", type=float, default=15, help="seconds of each single-event load")
    p.add_argument("--backlog", type=int, default=1_000_000, help="events in the backlog drain")
    p.add_argument("--scaling", type=int, default=200_000, help="events per consumer-count drain")
    p.add_argument("--fair-seconds", type=float, default=30, help="of each fairness run")
    p.add_argument("--fair-limit", type=float, default=500, help="the flooding tenant's events/s")
    p.add_argument("--fair-rate", type=float, default=1000, help="the other tenant's events/s")
    launch(main, p.parse_args(argv))


if __name__ == "__main__":
    cli()
