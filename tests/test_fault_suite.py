"""Nothing lost, nothing doubled: a stream of events through kills, restarts and cut links.

One stack of its own (ingest, two consumers, read API) with ingest's broker link and the
consumers' database link running through TCP proxies. Each phase streams at least 20,000 events (20%
duplicates, batches of 50, idempotency keys and retries as the publisher sends them) and
injects one fault mid-stream; afterwards every accepted event must be stored exactly once
and the counters must match what was accepted. The table is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import psycopg
import pytest

from publisher import watch
from publisher.load import LoadConfig
from pubsub import database
from pubsub.topology import Names
from stack.supervisor import Supervisor
from tests.fix_faults import REPORTS, FaultStack
from tests.servers import Server
from tests.support import queue_depth, settled, stats_when_up, stream_through

EVENTS_PER_PHASE = 20_000
HOLD = 2.0  # seconds each fault lasts


@dataclass
class Phase:
    fault: str
    sent: int = 0
    lost: int = 0
    doubled: int = 0
    recovery: float = 0.0
    refusals: int = 0
    slowest_refusal: float = 0.0
    dead_letters: int = 0
    store_errors: float = 0.0
    hit: str = ""  # what shows that the fault reached the system; empty: it did not


async def _consumer_store_errors(http: aiohttp.ClientSession, stack: Supervisor) -> float:
    urls = [stack.url(name) for name in stack.consumers]
    return await watch.metric(http, urls, "pubsub_consumer_store_errors_total")


async def _phase(
    faults: FaultStack,
    http: aiohttp.ClientSession,
    name: str,
    inject: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
) -> Phase:
    stack = faults.stack
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    before = await stats_when_up(http, stack.read_url)
    errors_before = await _consumer_store_errors(http, stack)
    dead_before = await queue_depth(stack.settings, Names.of(stack.settings).dead_queue)
    cfg = LoadConfig(
        ingest_url=stack.ingest_url,
        read_url=stack.read_url,
        events=EVENTS_PER_PHASE,
        batch_size=50,
        concurrency=2,
        topic=topic,
        retries=200,
    )
    restored = 0.0

    async def fault() -> None:
        nonlocal restored
        await inject()
        await asyncio.sleep(HOLD)
        await restore()
        restored = time.monotonic()

    source, report = await stream_through(http, cfg, fault, start_after=EVENTS_PER_PHASE // 4)
    assert report.failed_events == 0, f"{name}: events never accepted"
    after = await settled(http, stack.read_url, before["received"] + report.sent, timeout=120)
    recovery = time.monotonic() - restored
    with psycopg.connect(
        stack.settings.database_url, **database.connect_kwargs(stack.settings)
    ) as conn:
        (rows,) = conn.execute(
            "SELECT count(*) FROM events WHERE topic = %s", (topic,)
        ).fetchone() or (0,)
    received = after["received"] - before["received"]
    unique = after["unique_processed"] - before["unique_processed"]
    return Phase(
        fault=name,
        sent=report.sent,
        lost=source.unique - rows,
        doubled=(received - report.sent) + (unique - rows),
        recovery=recovery,
        refusals=sum(n for status, n in report.answers.items() if status != 202),
        slowest_refusal=report.slowest_refusal,
        dead_letters=await queue_depth(stack.settings, Names.of(stack.settings).dead_queue)
        - dead_before,
        store_errors=await _consumer_store_errors(http, stack) - errors_before,
    )


Evidence = Callable[[Phase], str]
Step = Callable[[], Awaitable[None]]


def _refused(p: Phase) -> str:
    return f"{p.refusals} refused requests" if p.refusals else ""


def _store_retries(p: Phase) -> str:
    return f"{p.store_errors:.0f} store retries" if p.store_errors else ""


async def test_nothing_lost_nothing_doubled_through_faults(
    faults: FaultStack,
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
    broker: Server,
    database: Server,
) -> None:
    stack = faults.stack
    exits: dict[str, int] = {}

    def kill(name: str) -> Callable[[], Awaitable[None]]:
        async def inject() -> None:
            exits[name] = stack.stop(name, sig=signal.SIGKILL)

        return inject

    def killed(name: str) -> Evidence:
        return lambda _: f"exit {exits[name]}" if exits.get(name) == -signal.SIGKILL else ""

    def start(name: str) -> Callable[[], Awaitable[None]]:
        async def restore() -> None:
            await asyncio.to_thread(stack.start, name)

        return restore

    def call(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await asyncio.to_thread(fn)

        return run

    def both(a: Evidence, b: Evidence) -> Evidence:
        return lambda p: f"{a(p)}, {b(p)}" if a(p) and b(p) else ""

    noop = call(lambda: None)
    schedule: list[tuple[str, Step, Step, Evidence]] = [
        ("SIGKILL a consumer, restart it", kill("consumer-1"), start("consumer-1"),
         killed("consumer-1")),
        ("SIGKILL ingest, restart it", kill("ingest"), start("ingest"),
         both(killed("ingest"), _refused)),
        (f"stop and start RabbitMQ ({broker.control.what})", call(broker.control.stop),
         call(broker.control.start), _refused),
        (f"restart PostgreSQL ({database.control.what})", call(database.control.restart), noop,
         _store_retries),
        ("cut consumers <-> PostgreSQL", call(faults.database_link.cut),
         call(faults.database_link.restore), _store_retries),
        ("cut ingest <-> RabbitMQ", call(faults.broker_link.cut),
         call(faults.broker_link.restore), _refused),
    ]  # fmt: skip
    phases = []
    for name, inject, restore, evidence in schedule:
        phase = await _phase(faults, http, name, inject, restore)
        phase.hit = evidence(phase)
        phases.append(phase)

    # Consumers stopped, nothing may wait unacknowledged in the queue: it all went back to
    # "ready" and would be counted there.
    for name in stack.consumers:
        stack.stop(name)
    assert await queue_depth(stack.settings, Names.of(stack.settings).queue) == 0
    for name in stack.consumers:
        stack.start(name)

    table = _table(phases)
    request.config.stash.setdefault(REPORTS, []).append(table)
    for p in phases:
        assert p.hit, f"{p.fault}: the fault did not reach the system\n{table}"
        assert (p.lost, p.doubled) == (0, 0), table
        assert p.dead_letters == 0, table
        # Backoff, not a hot loop: a few retries per consumer during a 2 s outage.
        assert p.store_errors < 40, table
        assert p.slowest_refusal < stack.settings.publish_timeout + 3, table
    assert sum(p.sent for p in phases) >= 100_000


def _table(phases: list[Phase]) -> str:
    lines = [
        "| fault | events sent | lost | doubled | recovery s | refused requests"
        " | slowest refusal s | dead letters | store retries | hit |",
        "|" + " --- |" * 10,
    ]
    for p in phases:
        lines.append(
            f"| {p.fault} | {p.sent:,} | {p.lost} | {p.doubled} | {p.recovery:.1f} | {p.refusals}"
            f" | {p.slowest_refusal:.1f} | {p.dead_letters} | {p.store_errors:.0f}"
            f" | {p.hit or 'NOT HIT'} |"
        )
    return "\n".join(lines)
