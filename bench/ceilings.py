"""Raw ceilings on this machine, with the system's own event shape and message packing.

* broker: persistent messages of ``message_max_events`` events published with confirms (16 in
  flight) while a consumer takes them with the system's prefetch and multiple-acks;
* database: the consumer's idempotent batch upsert (:class:`consumer.store.Store`) alone, in
  batches of ``batch_max_events`` with 20% duplicates.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from psycopg import sql

from consumer.store import Store, copy_rows
from pubsub import database, dbschema, failover, topology
from pubsub.settings import Settings


@dataclass(frozen=True)
class Ceilings:
    broker_events_per_s: float
    database_events_per_s: float

    @property
    def slowest(self) -> float:
        return min(self.broker_events_per_s, self.database_events_per_s)


def _payload(n: int) -> dict[str, Any]:
    return {"msg": f"event {n}", "n": n}


def _event(run: str, n: int, payload: Callable[[int], dict[str, Any]] = _payload) -> bytes:
    return orjson.dumps(
        {
            "topic": "ceiling",
            "event_id": f"{run}-{n}",
            "timestamp": datetime.now(UTC),
            "source": "bench",
            "payload": payload(n),
        }
    )


async def broker_ceiling(settings: Settings, *, messages: int = 300) -> float:
    per = settings.message_max_events
    body = b"[" + b",".join(_event("c", n) for n in range(per)) + b"]"
    own = settings.replace(queue=f"{settings.queue}.ceiling")
    async with await failover.connect_once(settings.amqp_urls) as conn:
        pub = await conn.channel(publisher_confirms=True)
        topo = await topology.declare(pub, own)
        sub = await conn.channel()
        await sub.set_qos(prefetch_count=settings.prefetch)
        queue = await sub.get_queue(topo.queue.name)
        done = asyncio.Event()
        got = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            orjson.loads(message.body)
            got += 1
            if got % 16 == 0 or got == messages:
                await message.ack(multiple=True)
            if got == messages:
                done.set()

        tag = await queue.consume(on_message)
        window = asyncio.Semaphore(16)
        started = time.perf_counter()

        async def publish() -> None:
            async with window:
                await topo.exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    topology.ROUTING_KEY,
                )

        await asyncio.gather(*(publish() for _ in range(messages)))
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        await queue.cancel(tag)
        await topology.delete(pub, own)
    return messages * per / elapsed


async def database_ceiling(
    settings: Settings,
    *,
    events: int = 200_000,
    alter: str = "",
    name: str = "ceiling",
    payload: Callable[[int], dict[str, Any]] = _payload,
    sizes: list[float] | None = None,
) -> float:
    """Events/s of the batch upsert; ``alter`` is SQL run on the fresh schema first (the
    schema variants of :mod:`bench.store`), ``payload`` makes the n-th event's payload. With
    ``sizes``, the bytes on disk per stored event (every table and index of the schema) are
    appended to it."""
    own = settings.replace(db_schema=f"{settings.db_schema}_{name}")
    await dbschema.ensure(own)
    if alter:
        async with await database.connect(own, autocommit=True) as conn:
            await conn.execute(alter)
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).isoformat()
    size = settings.batch_max_events
    batches = []
    for b in range(events // size):
        # Every fifth event a duplicate, as in the seeds; decoded before the clock starts.
        body = (
            b"["
            + b",".join(
                _event(run, k - 1 if k % 5 == 4 else k, payload)
                for k in range(b * size, (b + 1) * size)
            )
            + b"]"
        )
        batches.append((f"{run}-m{b}", copy_rows(orjson.loads(body), now)))
    store = Store(own, shard=0)
    await store.connect()
    try:
        started = time.perf_counter()
        for batch in batches:
            await store.store([batch])
        elapsed = time.perf_counter() - started
        if sizes is not None:
            sizes.append(await _bytes_per_event(own))
    finally:
        await store.close()
        await dbschema.drop(own)
    return events / elapsed


async def _bytes_per_event(settings: Settings) -> float:
    """Bytes on disk (heap, TOAST and indexes of every table of the schema) per stored
    event, after a VACUUM that settles the visibility map and free space."""
    async with await database.connect(settings, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        for (table,) in await cur.fetchall():
            await conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(str(table))))
        cur = await conn.execute(
            "SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            "        JOIN pg_namespace n ON n.oid = c.relnamespace"
            "        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')),"
            "       (SELECT count(*) FROM events)"
        )
        row = await cur.fetchone()
    assert row is not None
    total, rows = (int(str(v)) for v in row)
    return total / max(rows, 1)


async def measure(settings: Settings) -> Ceilings:
    return Ceilings(await broker_ceiling(settings), await database_ceiling(settings))
