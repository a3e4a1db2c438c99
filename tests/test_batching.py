"""The consumer's batching and acknowledgements, in process: deliveries made by the message
encoder, a store that records what it is given.

The real broker and database are exercised by the integration tests; here the point is which
deliveries go into which batch, that nothing is acknowledged before its batch is stored, and
that one multiple-ack per channel settles a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import orjson
import psycopg
from aio_pika.abc import AbstractIncomingMessage

from consumer.store import Row, Store, Stored
from consumer.worker import Worker
from pubsub import message
from pubsub.message import Claim
from pubsub.settings import Settings

NOW = datetime(2026, 1, 2, tzinfo=UTC)


class Journal:
    """What happened, in order: ``("store", n events)``, ``("ack", tag, multiple)``..."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.changed = asyncio.Event()

    def add(self, *entry: Any) -> None:
        self.entries.append(entry)
        self.changed.set()

    async def wait_for(self, kind: str, count: int) -> None:
        async with asyncio.timeout(5):
            while sum(1 for e in self.entries if e[0] == kind) < count:
                self.changed.clear()
                await self.changed.wait()


class Delivery:
    """An incoming message as aio-pika hands it to the consumer."""

    def __init__(self, outgoing: aio_pika.Message, tag: int, channel: object, log: Journal):
        self.body = outgoing.body
        self.content_encoding = outgoing.content_encoding
        self.message_id = outgoing.message_id
        self.headers = outgoing.headers
        self.delivery_tag = tag
        self.channel = channel
        self.processed = False
        self._log = log

    async def ack(self, multiple: bool = False) -> None:
        self.processed = True
        self._log.add("ack", self.delivery_tag, multiple)

    async def reject(self, requeue: bool = False) -> None:
        self.processed = True
        self._log.add("reject", self.delivery_tag, requeue)


class RecordingStore:
    def __init__(self, log: Journal) -> None:
        self._log = log
        self.connected = True

    async def store(
        self, batch: Sequence[tuple[str, Sequence[Row]]], *, claims: Sequence[Claim] = ()
    ) -> Stored:
        events = sum(len(rows) for _, rows in batch)
        self._log.add("store", events)
        return Stored(len(batch), 0, events, events)

    async def close(self) -> None:
        pass


def outgoing(count: int, *, start: int = 0) -> aio_pika.Message:
    events = [
        {"topic": "t", "event_id": str(i), "source": "s", "timestamp": NOW, "payload": {}}
        for i in range(start, start + count)
    ]
    return message.encode(
        [orjson.dumps(events)[1:-1]],
        keys=[["", count]],
        received_at=NOW.isoformat(),
        request_ids=[],
    )


def worker(log: Journal, **settings: Any) -> Worker:
    w = Worker(Settings(**settings), shard=1)
    w.store = cast(Store, RecordingStore(log))
    return w


async def deliver(w: Worker, delivery: Delivery) -> None:
    await w.on_message(cast(AbstractIncomingMessage, delivery))


async def test_deliveries_are_batched_up_to_the_limit_and_acked_once_per_channel() -> None:
    log = Journal()
    w = worker(log, batch_max_events=10, batch_max_wait=5.0)
    one, two = object(), object()
    # Tags 1-4: 4 messages of 3 events over two channels; a batch closes at 10 events or more.
    for tag, channel in ((1, one), (2, two), (3, one), (4, two)):
        await deliver(w, Delivery(outgoing(3, start=tag * 10), tag, channel, log))
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    await log.wait_for("ack", 2)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert log.entries[0] == ("store", 12), "a full batch is stored without waiting"
    assert sorted(log.entries[1:]) == [("ack", 3, True), ("ack", 4, True)]


async def test_a_partial_batch_is_stored_after_the_wait() -> None:
    log = Journal()
    w = worker(log, batch_max_events=1000, batch_max_wait=0.01)
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    await deliver(w, Delivery(outgoing(2), 7, object(), log))
    await log.wait_for("ack", 1)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert log.entries == [("store", 2), ("ack", 7, True)]


async def test_an_undecodable_delivery_is_dead_lettered_and_never_stored() -> None:
    log = Journal()
    w = worker(log)
    bad = aio_pika.Message(b"[1]", message_id="m", headers={message.RECEIVED_AT: "now"})
    await deliver(w, Delivery(bad, 5, object(), log))
    assert log.entries == [("reject", 5, False)]


async def test_what_was_delivered_is_stored_before_stopping() -> None:
    log = Journal()
    w = worker(log, batch_max_events=4, batch_max_wait=5.0)
    channel = object()
    for tag in range(1, 4):
        await deliver(w, Delivery(outgoing(2, start=tag * 10), tag, channel, log))
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(w.run(stop), 5)
    assert log.entries == [("store", 4), ("ack", 2, True), ("store", 2), ("ack", 3, True)]


class UnreachableStore(RecordingStore):
    async def store(
        self, batch: Sequence[tuple[str, Sequence[Row]]], *, claims: Sequence[Claim] = ()
    ) -> Stored:
        self._log.add("attempt", sum(len(rows) for _, rows in batch))
        raise psycopg.OperationalError("connection refused")


async def test_asked_to_stop_while_the_database_is_down_it_leaves_within_the_grace() -> None:
    log = Journal()
    w = Worker(Settings(stop_timeout=0.3, batch_max_wait=0.01), shard=1)
    w.store = cast(Store, UnreachableStore(log))
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    await deliver(w, Delivery(outgoing(2), 9, object(), log))
    await log.wait_for("attempt", 2)  # retrying with backoff
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(running, 5)
    # Within the grace, not after the next backoff (seconds): ten times the grace is the bound.
    assert time.monotonic() - started < 0.3 * 10
    assert {entry[0] for entry in log.entries} == {"attempt"}, "nothing acked nor rejected"
