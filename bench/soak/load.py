"""The soak's load: batches of 100 events on a schedule, a trickle of single events and
reads beside them, and the probe that finds the rate the machine sustains at that shape."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from bench.cpu import machine_busy
from bench.soak.counts import Counts
from publisher.load import EventSource, LoadConfig, Report, send_body
from stack.supervisor import Supervisor

BATCH = 100


class Load:
    def __init__(self, stack: Supervisor, http: aiohttp.ClientSession, counts: Counts) -> None:
        self.http, self.counts = http, counts
        self.cfg = LoadConfig(
            ingest_url=stack.ingest_url,
            read_url=stack.read_url,
            batch_size=BATCH,
            duplicates=0.2,
            topic="soak",
            retries=100,
        )
        self.source = EventSource(self.cfg)
        self.report = Report()  # the sampler takes it, and leaves a new one, every minute
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
        accepted = await self.counts.accepted()
        busy, total = machine_busy()
        started = time.monotonic()
        await self.send_batches(rate, started + seconds)
        elapsed = time.monotonic() - started
        now_busy, now_total = machine_busy()
        share = (now_busy - busy) / max(now_total - total, 1e-9)
        return (await self.counts.accepted() - accepted) / elapsed / max(share, 0.05)

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
