"""``python -m bench.stream``: how fast the live stream shows new events under load, and what
watching costs.

Runs the services as separate processes. Then:

1. **Latency under load**: batched load (batches of 100, 20% duplicates) at ``--rate`` events/s
   on one topic while a probe POSTs one event every 100 ms to a topic of its own, which one
   stream follows, next to ``--streams`` - 1 more streams on topics that get nothing (they
   poll all the same). Each probe event's delay from its POST's answer to its arrival on the
   stream is recorded: an upper bound of the delay from its commit.
2. **Cost of watching**: PostgreSQL's and the read API's CPU over ``--idle`` seconds with no
   stream, then with ``--streams`` idle streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from bench import record
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


async def idle_streams(
    http: aiohttp.ClientSession, stack: Supervisor, n: int, until: float
) -> None:
    async with contextlib.AsyncExitStack() as streams:
        for i in range(n):
            await streams.enter_async_context(following(http, stack, f"quiet-{i}"))
        await asyncio.sleep(max(0.0, until - time.monotonic()))


def _cpu_ms_per_s(cpu: dict[str, float], seconds: float) -> str:
    return (
        f"PostgreSQL {cpu.get('postgresql', 0.0) / seconds * 1000:.0f} ms/s, read API "
        f"{cpu.get('readapi', 0.0) / seconds * 1000:.0f} ms/s"
    )


async def main(args: argparse.Namespace) -> None:
    async with (
        private_system("streambench", consumers=2) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        stack.start_all()
        load = Load(stack, http, Counts(stack.settings, stack, http))
        delays: list[float] = []
        until = time.monotonic() + args.seconds
        await asyncio.gather(
            load.send_batches(args.rate, until),
            probe(http, stack, until, delays),
            idle_streams(http, stack, args.streams - 1, until),
        )
        delays.sort()
        out = record.Output()
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        out(
            f"latency from the POST's answer to the event on the stream, {len(delays)} probes, "
            f"{args.streams} streams open, batched load at {args.rate:,.0f} events/s: "
            f"p50 {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {delays[-1] * 1000:.0f} ms"
        )
        meter = CpuMeter(stack)
        meter.start()
        await asyncio.sleep(args.idle)
        quiet = meter.stop()
        meter.start()
        await idle_streams(http, stack, args.streams, time.monotonic() + args.idle)
        watched = meter.stop()
        out(f"idle, no stream: {_cpu_ms_per_s(quiet, args.idle)}")
        out(f"idle, {args.streams} streams: {_cpu_ms_per_s(watched, args.idle)}")
        out.write("stream", title="The live stream: latency under load, cost of idle streams")


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__)
    p.add_argument("--rate", type=float, default=20_000, help="batched load, events/s")
    p.add_argument("--seconds", type=float, default=30, help="length of the loaded part")
    p.add_argument("--streams", type=int, default=64, help="streams open at once")
    p.add_argument("--idle", type=float, default=10, help="seconds of each idle measurement")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
