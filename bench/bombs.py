"""``python -m bench.bombs``: whether ingest keeps answering while clients loop bombs at it.

Runs the services as separate processes. ``--clients`` clients each POST, over and over for
``--seconds``, a gzip body of about 1 MB that inflates to ``--gib`` GiB of JSON whitespace
(refused at the body limit: only its first 16 MiB are ever inflated). Meanwhile a probe POSTs
one event every 20 ms and records how long each answer took and what it was.

It prints the probe's latency (p50, p99, max), its answers, ingest's peak RSS, and whether
every probe answered ``503`` "nothing was accepted" indeed left nothing stored (a probe
that was so answered and stored anyway is a false answer). With ``--base REV`` it measures
that commit's services too, first, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psycopg

from bench import record
from bench.ab import worktree
from bench.system import private_system
from bench.workloads import RssSampler
from pubsub import database

GOAL_P99_MS = 100.0


def bomb(gib: float) -> bytes:
    """A gzip body of JSON whitespace that inflates to ``gib`` GiB: about 1 MB per GiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    parts = [packer.compress(b"[")]
    parts += [packer.compress(block) for _ in range(int(gib * 1024))]
    parts.append(packer.compress(b"]") + packer.flush())
    return b"".join(parts)


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    bombs: collections.Counter[int] = field(default_factory=collections.Counter)
    rss_mib: float = 0.0
    false_refusals: int = 0

    def line(self) -> str:
        ms = sorted(d * 1000 for d in self.latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items()))
        bombs = ", ".join(f"{k}: {v}" for k, v in sorted(self.bombs.items()))
        return (
            f"probe p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms "
            f"({len(ms)} probes; {answers}); bombs answered {bombs}; ingest peak RSS "
            f"{self.rss_mib:.0f} MiB; probes answered 503 'nothing was accepted' yet stored: "
            f"{self.false_refusals}"
        )


async def _bombard(
    http: aiohttp.ClientSession, url: str, body: bytes, until: float, figures: Figures
) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    while time.monotonic() < until:
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                figures.bombs[resp.status] += 1
        except aiohttp.ClientError:
            figures.bombs[0] += 1  # the server closed the connection after refusing


async def _probe(
    http: aiohttp.ClientSession, url: str, topic: str, until: float, figures: Figures
) -> list[str]:
    refused: list[str] = []
    n = 0
    while time.monotonic() < until:
        n += 1
        event = {"topic": topic, "event_id": f"p{n}", "source": "bench.bombs"}
        started = time.monotonic()
        async with http.post(
            url, data=orjson.dumps(event), headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.text()
        figures.latencies.append(time.monotonic() - started)
        figures.answers[str(resp.status)] += 1
        if resp.status == 503 and "nothing was accepted" in text:
            refused.append(f"p{n}")
        await asyncio.sleep(0.02)
    return refused


async def measure(args: argparse.Namespace, code: Path | None) -> Figures:
    figures = Figures()
    body = bomb(args.gib)
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    async with (
        private_system("bombbench", consumers=1, code=code) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        stack.start_all()
        url = f"{stack.ingest_url}/publish"
        until = time.monotonic() + args.seconds
        with RssSampler(stack) as rss:
            probing = asyncio.create_task(_probe(http, url, topic, until, figures))
            await asyncio.gather(
                *(_bombard(http, url, body, until, figures) for _ in range(args.clients))
            )
            refused = await probing
        figures.rss_mib = rss.peak.get("ingest", 0) / 1024
        with psycopg.connect(
            stack.settings.database_url, autocommit=True, **database.connect_kwargs(stack.settings)
        ) as db:
            # Everything answered 202 gets stored: once it is, the queue holds no probe.
            for _ in range(300):  # at most a minute
                if _stored(db, topic) >= figures.answers["202"]:
                    break
                await asyncio.sleep(0.2)
            figures.false_refusals = _stored(db, topic, refused) if refused else 0
    return figures


def _stored(db: psycopg.Connection[tuple[int]], topic: str, ids: list[str] | None = None) -> int:
    query = "SELECT count(*) FROM events WHERE topic = %s"
    row = (
        db.execute(query, (topic,))
        if ids is None
        else db.execute(query + " AND event_id = ANY(%s)", (topic, ids))
    ).fetchone()
    return int(row[0]) if row else 0


async def main(args: argparse.Namespace) -> None:
    systems: dict[str, Figures] = {}
    if args.base:
        with worktree(args.base) as tree:
            name = f"base {record.git('rev-parse', '--short', args.base)}"
            systems[name] = await measure(args, tree)
    systems[f"this checkout {record.git('rev-parse', '--short', 'HEAD')}"] = await measure(
        args, None
    )
    out = record.Output()
    out(
        f"{args.clients} clients looping gzip bombs of {args.gib:g} GiB ({len(bomb(args.gib)):,} "
        f"bytes each) at POST /publish for {args.seconds:g} s, a one-event probe every 20 ms "
        f"(goal: p99 under {GOAL_P99_MS:.0f} ms):"
    )
    out("")
    for name, figures in systems.items():
        out(f"- {name}: {figures.line()}")
    out.write("bombs", title="Answering while bombs arrive")


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bombs", description=__doc__)
    p.add_argument("--clients", type=int, default=2, help="clients looping bombs")
    p.add_argument("--gib", type=float, default=1.0, help="what each bomb inflates to, GiB")
    p.add_argument("--seconds", type=float, default=20, help="length of the run")
    p.add_argument("--base", help="also measure the services of this commit, first")
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
