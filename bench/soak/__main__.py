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
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import record
from bench.postgres import RECOMMENDED, own_server
from bench.soak import report
from bench.soak.counts import Counts
from bench.soak.judge import judge
from bench.soak.load import BATCH, Load
from bench.soak.plot import plot
from bench.soak.sampling import Minute, Sampler
from bench.system import private_system
from publisher import watch
from stack.supervisor import free_port


async def main(args: argparse.Namespace) -> int:
    if args.postgres == "machine":
        return await soak(args, {})
    print("starting a PostgreSQL server of the soak's own, configured as recommended: "
          + ", ".join(f"{k}={v}" for k, v in RECOMMENDED.items()), file=sys.stderr)  # fmt: skip
    with own_server(free_port()) as url:
        return await soak(args, {"database_url": url})


async def soak(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    rows: list[Minute] = []
    async with (
        private_system("soak", consumers=2, **overrides) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        stack.start_all()
        counts = Counts(stack.settings, stack, http)
        load = Load(stack, http, counts)
        before = await counts.counts()
        rate, peak = await choose_rate(args, load, counts, before)
        until = time.monotonic() + args.minutes * 60 + 1
        await asyncio.gather(
            load.send_batches(rate, until),
            load.trickle(until),
            Sampler(stack.settings, stack, http, counts).sample(load, args.minutes, rows),
        )
        await watch.wait_stored(http, stack.read_url, counts.target(before), timeout=600)
        problems = counts.verify(before, await counts.counts(), failed=load.failed)
    verdict = judge(rows)
    verdict.problems += problems
    text = report.render(rows, verdict, minutes=args.minutes, rate=rate, peak=peak)
    print()
    print(text)
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
        text += f"\n\n![soak: rate, p99 latency and lag, RSS]({report.link(args.plot)})\n"
    if args.record:
        record.write(f"soak-{args.minutes}min", title=f"Soak, {args.minutes} minutes", body=text)
    return 0 if verdict.ok else 1


async def choose_rate(
    args: argparse.Namespace, load: Load, counts: Counts, before: dict[str, int]
) -> tuple[float, float]:
    """The rate to soak at, and the maximum it is half of (0 when given)."""
    if args.rate:
        print(f"soaking at {args.rate:,.0f} events/s (given)", file=sys.stderr)
        return args.rate, 0.0
    print(f"measuring the sustained batched rate ({args.probe:g} s) ...", file=sys.stderr)
    started = time.monotonic()
    await load.send_batches(0, started + args.probe)
    accept_rate = load.source.made / args.probe
    await watch.wait_stored(load.http, load.cfg.read_url, counts.target(before), timeout=600)
    # What the system sustains is what it stores: ingest alone accepts faster, and the
    # queue takes the difference only for a while.
    burst = load.source.made / (time.monotonic() - started)
    print(
        f"burst: accepted {accept_rate:,.0f} events/s, stored {burst:,.0f} events/s"
        f" end to end; now {args.shape:g} s at {burst / 2:,.0f} ...",
        file=sys.stderr,
    )
    steady = await load.shape_maximum(burst / 2, args.shape)
    peak = min(burst, steady)
    print(
        f"steady batches of {BATCH} would fill the machine at {steady:,.0f} events/s;"
        f" soaking at {peak / 2:,.0f} (half of {peak:,.0f})",
        file=sys.stderr,
    )
    return peak / 2, peak


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="pubsub-aggregator soak", description=__doc__)
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
    p.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="do not write docs/measurements/soak.md",
    )
    raise SystemExit(asyncio.run(main(p.parse_args(argv))))


if __name__ == "__main__":
    cli()
