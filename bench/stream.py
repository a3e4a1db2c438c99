"""``python -m bench.stream``: how fast the live stream shows new events under load, and what
watching costs.

Runs the services as separate processes. Then:

1. **Latency under load**: batched load (batches of 100, 20% duplicates) at ``--rate`` events/s
   on one topic while a probe POSTs one event every 100 ms to a topic of its own, which one
   stream follows, next to ``--streams`` - 1 more streams on topics that get nothing (they
   poll all the same). Each probe event's delay from its POST's answer to its arrival on the
   stream is recorded: an upper bound of the delay from its commit.
2. **Cost of watching**: PostgreSQL's and the read API's CPU over ``--idle`` seconds with no
   stream, then with each number of ``--idle-streams`` idle streams.

With ``--base REV`` it measures the services of that commit too (from a git worktree), in the
same run, so that the two sets of figures compare; ``--rounds N`` measures each N times,
alternated (base, this checkout, base...), and pools the probes of all rounds: a p99 of one
round's 80 probes is its worst probe but one, and moves by a tenth from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bench import record
from bench.ab import worktree
from bench.cpu import CpuMeter
from bench.soak.counts import Counts
from bench.soak.load import Load
from bench.system import private_system
from publisher.tail import messages
from stack.supervisor import Supervisor


@contextlib.asynccontextmanager
async def following(
    http: aiohttp.ClientSession, stack: Supervisor, topic: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    async with http.get(
        f"{stack.read_url}/events/stream",
        params={"topic": topic},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}: {await resp.text()}")
        yield resp


async def probe(
    http: aiohttp.ClientSession, stack: Supervisor, until: float, delays: list[float]
) -> None:
    async with following(http, stack, "probe") as resp:
        stream = messages(resp)
        n = 0
        while time.monotonic() < until:
            n += 1
            body = {"topic": "probe", "event_id": f"p{n}", "source": "bench"}
            async with http.post(f"{stack.ingest_url}/publish", json=body) as answer:
                if answer.status != 202:
                    raise RuntimeError(f"probe event refused: {answer.status}")
            answered = time.monotonic()
            msg = await asyncio.wait_for(anext(stream), 10)
            if orjson.loads(msg.data)["event_id"] != f"p{n}":
                raise RuntimeError(f"the stream sent {msg.data}, not p{n}")
            delays.append(time.monotonic() - answered)
            await asyncio.sleep(0.1)


async def streams_closed(http: aiohttp.ClientSession, stack: Supervisor) -> None:
    """Wait until the read API counts no stream open (its ``pubsub_readapi_streams``): a stream
    the client closed is let go a moment later, and the next phase would otherwise meet the
    read API's limit, or measure the closing."""
    deadline = time.monotonic() + 30
    while True:
        async with http.get(f"{stack.read_url}/metrics") as resp:
            text = await resp.text()
        if "\npubsub_readapi_streams 0.0\n" in text:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the read API still counts open streams 30 s after they closed")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def idle_streams(
    http: aiohttp.ClientSession, stack: Supervisor, n: int
) -> AsyncIterator[None]:
    """``n`` streams open on topics that get nothing, for the ``with`` block."""
    async with contextlib.AsyncExitStack() as streams:
        for i in range(n):
            await streams.enter_async_context(following(http, stack, f"quiet-{i}"))
        yield


async def idle_until(http: aiohttp.ClientSession, stack: Supervisor, n: int, until: float) -> None:
    async with idle_streams(http, stack, n):
        await asyncio.sleep(max(0.0, until - time.monotonic()))


def _cpu_ms_per_s(cpu: dict[str, float], seconds: float) -> tuple[float, float]:
    """PostgreSQL's and the read API's CPU, in ms per second."""
    return (cpu.get("postgresql", 0.0) / seconds * 1000, cpu.get("readapi", 0.0) / seconds * 1000)


@dataclass
class Figures:
    """What one system measured, in one round."""

    delays: list[float] = field(default_factory=list)
    idle: dict[int, tuple[float, float]] = field(default_factory=dict)


def _latency(delays: list[float]) -> str:
    delays = sorted(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return (
        f"p50 {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {delays[-1] * 1000:.0f} ms ({len(delays)} probes)"
    )


async def measure(args: argparse.Namespace, code: Path | None) -> Figures:
    figures = Figures()
    async with (
        private_system(
            "streambench",
            consumers=2,
            code=code,
            stream_max_clients=max(args.streams, *args.idle_streams) + 8,
            # No background merge: it compacts the load's blocks a minute after they were
            # stored, which is when the idle streams are measured, and its PostgreSQL CPU
            # would be counted as theirs (a commit without merges ignores the setting).
            merge_interval=0,
        ) as stack,
        # No limit on connections (100 by default): each stream holds one.
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=0)
        ) as http,
    ):
        stack.start_all()
        load = Load(stack, http, Counts(stack.settings, stack, http))
        until = time.monotonic() + args.seconds
        await asyncio.gather(
            load.send_batches(args.rate, until),
            probe(http, stack, until, figures.delays),
            idle_until(http, stack, args.streams - 1, until),
        )
        meter = CpuMeter(stack)
        for n in [0, *args.idle_streams]:
            await streams_closed(http, stack)
            async with idle_streams(http, stack, n):
                meter.start()  # once the streams are open: what watching costs, not connecting
                await asyncio.sleep(args.idle)
                figures.idle[n] = _cpu_ms_per_s(meter.stop(), args.idle)
    return figures


async def main(args: argparse.Namespace) -> None:
    head = f"this checkout {record.git('rev-parse', '--short', 'HEAD')}"
    systems: dict[str, list[Figures]] = {}
    with contextlib.ExitStack() as trees:
        codes: dict[str, Path | None] = {}
        if args.base:
            base = f"base {record.git('rev-parse', '--short', args.base)}"
            codes[base] = trees.enter_context(worktree(args.base))
        codes[head] = None
        for r in range(args.rounds):
            for name, code in codes.items():
                print(f"round {r + 1}: {name} ...", file=sys.stderr, flush=True)
                systems.setdefault(name, []).append(await measure(args, code))
    out = record.Output()
    out(
        f"Latency from the POST's answer to the probe event on its stream, with {args.streams} "
        f"streams open and batched load at {args.rate:,.0f} events/s"
        + (f", {args.rounds} rounds alternated, probes pooled:" if args.rounds > 1 else ":")
    )
    out("")
    for name, rounds in systems.items():
        out(f"- {name}: {_latency([d for f in rounds for d in f.delays])}")
        if args.rounds > 1:
            for r, f in enumerate(rounds, 1):
                out(f"  - round {r}: {_latency(f.delays)}")
    out("")
    out(
        f"CPU of watching, over {args.idle:g} s with that many idle streams open (ms per second"
        + (", the median of the rounds):" if args.rounds > 1 else "):")
    )
    out("")
    names = list(systems)
    out("| idle streams | " + " | ".join(f"PostgreSQL, {n} | read API, {n}" for n in names) + " |")
    out("|---:|" + "---:|---:|" * len(names))
    for n in [0, *args.idle_streams]:
        cells = " | ".join(
            f"{statistics.median(f.idle[n][0] for f in rounds):.0f} | "
            f"{statistics.median(f.idle[n][1] for f in rounds):.0f}"
            for rounds in systems.values()
        )
        out(f"| {n} | {cells} |")
    out.write("stream", title="The live stream: latency under load, cost of idle streams")


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__)
    p.add_argument("--rate", type=float, default=20_000, help="batched load, events/s")
    p.add_argument("--seconds", type=float, default=30, help="length of the loaded part")
    p.add_argument("--streams", type=int, default=256, help="streams open during the load")
    p.add_argument(
        "--idle-streams",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 64, 256],
        help="numbers of idle streams whose cost is measured, comma-separated",
    )
    p.add_argument("--idle", type=float, default=10, help="seconds of each idle measurement")
    p.add_argument(
        "--base", help="also measure the services of this commit (a git worktree), first"
    )
    p.add_argument("--rounds", type=int, default=1, help="measurements of each, alternated")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
