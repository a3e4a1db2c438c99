"""``python -m bench.fairness``: one tenant floods, another is not hurt.

A system of its own with a tenants file: tenant ``a`` may send ``--limit`` events/s, tenant
``b`` has no limit. Tenant ``b`` sends batches at ``--rate`` events/s while a probe of ``b``
publishes one event every 0.2 s and times it from the POST's answer to the moment
``/events`` returns it. That runs ``--seconds`` alone, then again while ``a`` sends at ten
times its limit, in one run. Goals (issue 32): ``b``'s accepted rate with the flood is at least
0.95 of alone; its latency p99 at most 1.5 times; ``a`` is answered 429 with ``Retry-After``
past its limit, and every event ``a`` was answered 2xx for is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import record
from bench.system import private_system
from bench.workloads import launch
from stack.supervisor import Supervisor

RATE_GOAL = 0.95
LATENCY_GOAL = 1.5
_TIMESTAMP = "2025-10-21T10:00:00Z"


def _token(tenant: str) -> str:
    return f"bench-fairness-{tenant}-0123456789"


def tenants_file(limit: float) -> str:
    return "\n".join(
        [
            f"[tenants.a]\nevents_per_second = {limit}\nburst_seconds = 1",
            "[tenants.b]",
            *(
                f'[[tokens]]\ntoken = "{_token(t)}"\nscope = "both"\ntenants = ["{t}"]'
                for t in ("a", "b")
            ),
        ]
    )


@dataclass
class Sent:
    """What one sender was answered."""

    accepted: int = 0  # events answered 2xx
    refused: int = 0  # requests answered 429
    with_retry_after: int = 0  # of those, how many said when to come back
    other: dict[int, int] = field(default_factory=dict)  # requests by any other status
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


async def send(
    http: aiohttp.ClientSession,
    url: str,
    tenant: str,
    *,
    rate: float,
    batch: int,
    seconds: float,
) -> Sent:
    """Batches of ``batch`` events of ``tenant`` at ``rate`` events/s for ``seconds``, each
    event new; no retries (what was refused is counted, not sent again)."""
    sent = Sent()
    topic = f"fair-{tenant}-{uuid.uuid4().hex[:6]}"
    auth = {"Authorization": f"Bearer {_token(tenant)}"}
    gap = batch / rate
    tasks: set[asyncio.Task[None]] = set()
    lanes = asyncio.Semaphore(64)

    async def post(n: int) -> None:
        body = [
            {"topic": topic, "event_id": f"{n}-{i}", "timestamp": _TIMESTAMP, "source": "bench",
             "payload": {"n": n, "i": i}}
            for i in range(batch)
        ]  # fmt: skip
        async with lanes, http.post(f"{url}/publish", json=body, headers=auth) as resp:
            await resp.read()
            if resp.status < 300:
                sent.accepted += batch
            elif resp.status == 429:
                sent.refused += 1
                sent.with_retry_after += "Retry-After" in resp.headers
            else:
                sent.other[resp.status] = sent.other.get(resp.status, 0) + 1

    started = time.monotonic()
    n = 0
    while (now := time.monotonic()) < started + seconds:
        task = asyncio.create_task(post(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        await asyncio.sleep(max(0.0, started + n * gap - now))
    if tasks:
        await asyncio.gather(*tasks)
    sent.seconds = time.monotonic() - started
    return sent


async def probe(http: aiohttp.ClientSession, stack: Supervisor, seconds: float) -> list[float]:
    """Seconds from a POST's answer to the event's first appearance in ``/events``, for one
    event of ``b`` every 0.2 s."""
    auth = {"Authorization": f"Bearer {_token('b')}"}
    topic = f"fair-probe-{uuid.uuid4().hex[:6]}"
    latencies: list[float] = []
    started = time.monotonic()
    n = 0
    while time.monotonic() < started + seconds:
        one = {"topic": topic, "event_id": str(n), "timestamp": _TIMESTAMP, "source": "probe"}
        async with http.post(f"{stack.ingest_url}/publish", json=one, headers=auth) as resp:
            await resp.read()
            answered = time.monotonic()
        if resp.status < 300:
            params = {"topic": topic, "event_id": str(n)}
            while time.monotonic() < answered + 30:
                async with http.get(f"{stack.read_url}/events", params=params, headers=auth) as got:
                    if await got.json():
                        latencies.append(time.monotonic() - answered)
                        break
                await asyncio.sleep(0.005)
        n += 1
        await asyncio.sleep(max(0.0, started + n * 0.2 - time.monotonic()))
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


async def stored(http: aiohttp.ClientSession, stack: Supervisor, tenant: str) -> int:
    auth = {"Authorization": f"Bearer {_token(tenant)}"}
    async with http.get(f"{stack.read_url}/stats", headers=auth) as resp:
        return int((await resp.json())["unique_processed"])


@dataclass
class Fairness:
    alone: Sent
    beside: Sent
    flood: Sent
    alone_p99: float
    beside_p99: float
    flood_stored: int
    problems: list[str]

    def lines(self, *, limit: float, rate: float) -> list[str]:
        ratio = self.beside.rate / self.alone.rate if self.alone.rate else 0.0
        slower = self.beside_p99 / self.alone_p99 if self.alone_p99 else float("inf")
        return [
            f"| b alone | {self.alone.rate:,.0f} | {self.alone_p99 * 1000:.1f} | |",
            f"| b beside a's flood | {self.beside.rate:,.0f} | {self.beside_p99 * 1000:.1f} | "
            f"a sent {10 * limit:,.0f}/s against a limit of {limit:,.0f}/s: "
            f"{self.flood.accepted:,} accepted, {self.flood.refused:,} requests refused 429 "
            f"({self.flood.with_retry_after:,} with Retry-After), {self.flood_stored:,} stored |",
            "",
            f"b's accepted rate beside the flood / alone: {ratio:.2f} (goal {RATE_GOAL}): "
            + ("met" if ratio >= RATE_GOAL else "NOT MET"),
            f"b's latency p99 beside the flood / alone: {slower:.2f} (goal {LATENCY_GOAL}): "
            + ("met" if slower <= LATENCY_GOAL else "NOT MET"),
            f"(b sent {rate:,.0f} events/s in batches of 100 in both runs)",
        ]


async def measure(*, limit: float, rate: float, seconds: float) -> Fairness:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tenants.toml"
        path.write_text(tenants_file(limit))
        async with (
            private_system("fairness", consumers=2, tenants_file=str(path)) as stack,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        ):
            stack.start_all()
            url = stack.ingest_url
            print(f"b alone, {seconds:g} s ...", file=sys.stderr)
            alone, alone_lat = await asyncio.gather(
                send(http, url, "b", rate=rate, batch=100, seconds=seconds),
                probe(http, stack, seconds),
            )
            print(f"b beside a at {10 * limit:g} events/s, {seconds:g} s ...", file=sys.stderr)
            beside, beside_lat, flood = await asyncio.gather(
                send(http, url, "b", rate=rate, batch=100, seconds=seconds),
                probe(http, stack, seconds),
                send(http, url, "a", rate=10 * limit, batch=100, seconds=seconds),
            )
            deadline = time.monotonic() + 120
            flood_stored = 0
            while time.monotonic() < deadline:
                flood_stored = await stored(http, stack, "a")
                if flood_stored >= flood.accepted:
                    break
                await asyncio.sleep(0.2)
    problems = []
    if flood_stored != flood.accepted:
        problems.append(
            f"a was answered 2xx for {flood.accepted:,} events, {flood_stored:,} stored"
        )
    if flood.refused == 0 or flood.with_retry_after != flood.refused:
        problems.append("a was not refused 429 with Retry-After past its limit")
    for name, sent in (("alone", alone), ("beside", beside), ("flood", flood)):
        if sent.other:
            problems.append(f"{name}: answers other than 2xx and 429: {sent.other}")
    return Fairness(alone, beside, flood, p99(alone_lat), p99(beside_lat), flood_stored, problems)


HEADER = (
    "| tenant b | accepted events/s | latency p99, ms (POST's answer to queryable) | |\n"
    "| --- | --- | --- | --- |"
)


def report(out: record.Output, result: Fairness, *, limit: float, rate: float) -> None:
    """The result's table, verdicts and problems, as lines of ``out``."""
    out(HEADER)
    for line in result.lines(limit=limit, rate=rate):
        out(line)
    for problem in result.problems:
        out(f"PROBLEM: {problem}")


async def main(args: argparse.Namespace) -> int:
    result = await measure(limit=args.limit, rate=args.rate, seconds=args.seconds)
    out = record.Output()
    report(out, result, limit=args.limit, rate=args.rate)
    out.write("fairness", title="Fairness between tenants")
    return 1 if result.problems else 0


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    p.add_argument("--seconds", type=float, default=30, help="of each run")
    p.add_argument("--limit", type=float, default=500, help="tenant a's events/s")
    p.add_argument("--rate", type=float, default=1000, help="tenant b's events/s")
    launch(main, p.parse_args(argv))


if __name__ == "__main__":
    cli()
