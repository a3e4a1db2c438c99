"""Ingest's request coalescing, in process: an exchange that confirms when the test says so.

The broker itself is exercised by the integration tests; here the point is the order in which
requests become messages, and which requests each confirm (or failure) answers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import pytest
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from ingest import intake
from ingest.broker import BrokerClient, BrokerUnavailable
from pubsub import message
from pubsub.event import Event
from pubsub.settings import Settings

NOW = datetime(2026, 1, 2, tzinfo=UTC)


class Connection:
    """Just what ``topology.is_connected`` reads."""

    def __init__(self) -> None:
        self.is_closed = False
        self.connected = asyncio.Event()
        self.connected.set()


class Exchange:
    """Holds each published message until the test confirms or fails it."""

    def __init__(self) -> None:
        self.published: list[aio_pika.Message] = []
        self.confirms: list[asyncio.Future[None]] = []
        self.arrived = asyncio.Event()
        self.auto = False

    async def publish(self, outgoing: aio_pika.Message, *_: Any, **__: Any) -> None:
        confirm = asyncio.get_running_loop().create_future()
        self.published.append(outgoing)
        self.confirms.append(confirm)
        self.arrived.set()
        if self.auto:
            confirm.set_result(None)
        await confirm

    async def confirm_all(self, tasks: list[asyncio.Task[None]]) -> None:
        """Confirm everything from now on, and wait for ``tasks`` to be answered."""
        self.auto = True
        for confirm in self.confirms:
            if not confirm.done():
                confirm.set_result(None)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.published) < count:
                self.arrived.clear()
                await self.arrived.wait()


def client(exchange: Exchange, **settings: Any) -> BrokerClient:
    broker = BrokerClient(Settings(**settings))
    broker.attach(cast(AbstractRobustConnection, Connection()), cast(AbstractExchange, exchange))
    return broker


def pieces(count: int, *, key: str = "", per_piece: int = 1000) -> list[message.Piece]:
    events: list[Event] = [
        {"topic": "t", "event_id": f"{key}{i}", "source": "s", "timestamp": NOW, "payload": {}}
        for i in range(count)
    ]
    return message.encode_events(events, per_piece=per_piece, key=key)


def send(broker: BrokerClient, count: int, *, key: str = "") -> asyncio.Task[None]:
    return asyncio.create_task(
        broker.publish(pieces(count, key=key), received_at=NOW, request_id=key or "r")
    )


def units(outgoing: aio_pika.Message) -> list[tuple[str, int]]:
    return [
        (key, len(events))
        for key, events in message.decode(outgoing, max_bytes=Settings().message_max_bytes).units
    ]


async def test_requests_arriving_during_a_confirm_share_the_next_message() -> None:
    exchange = Exchange()
    broker = client(exchange, publish_in_flight=1)
    first = send(broker, 2, key="a")
    await exchange.wait_for(1)
    waiting = [send(broker, n, key=k) for n, k in ((1, "b"), (3, "c"), (2, "d"))]
    await asyncio.sleep(0)  # one turn of the loop: each request runs until it awaits its confirm
    assert len(exchange.published) == 1, "a slot is busy: the later requests must wait"

    exchange.confirms[0].set_result(None)
    await first
    await exchange.wait_for(2)
    assert units(exchange.published[1]) == [("k:b", 1), ("k:c", 3), ("k:d", 2)]
    assert not any(task.done() for task in waiting), "answered before their confirm"

    exchange.confirms[1].set_result(None)
    await asyncio.gather(*waiting)
    assert len(exchange.published) == 2


async def test_a_full_message_leaves_without_waiting_for_a_free_slot() -> None:
    exchange = Exchange()
    broker = client(exchange, publish_in_flight=1, message_max_events=10)
    tasks = [send(broker, 5, key="a")]
    await exchange.wait_for(1)
    tasks.append(send(broker, 8, key="b"))  # waits in the open group: the slot is busy
    tasks.append(send(broker, 5, key="c"))  # does not fit next to b: b leaves at once
    await exchange.wait_for(2)
    assert units(exchange.published[1]) == [("k:b", 8)]
    assert len(exchange.published) == 2, "c waits for a free slot"
    await exchange.confirm_all(tasks)
    assert units(exchange.published[2]) == [("k:c", 5)]


async def test_a_failed_message_fails_every_request_in_it_and_no_other() -> None:
    exchange = Exchange()
    broker = client(exchange, publish_in_flight=1)
    first = send(broker, 1, key="a")
    await exchange.wait_for(1)
    shared = [send(broker, 1, key="b"), send(broker, 1, key="c")]
    exchange.confirms[0].set_result(None)
    await first
    await exchange.wait_for(2)
    exchange.confirms[1].set_exception(ConnectionError("connection reset"))
    for task in shared:
        with pytest.raises(BrokerUnavailable):
            await task


async def test_no_confirm_within_the_timeout_answers_broker_unavailable() -> None:
    exchange = Exchange()
    broker = client(exchange, publish_timeout=0.2)
    with pytest.raises(BrokerUnavailable, match=r"no confirm from the broker within 0\.2s") as e:
        await broker.publish(pieces(1), received_at=NOW, request_id="r")
    # The message was written: whether the broker took it is not known (the answer says so).
    assert e.value.unknown


async def test_the_503_after_a_lost_confirm_says_the_outcome_is_unknown() -> None:
    lost = BrokerUnavailable("no confirm from the broker within 5.0s", unknown=True)
    refusal = intake.broker_refusal(lost, retry_after=2)
    assert refusal.status == 503 and dict(refusal.headers)["Retry-After"] == "2"
    assert "outcome unknown" in refusal.message and "nothing was accepted" not in refusal.message
    assert "Idempotency-Key" in refusal.message
    refused = intake.broker_refusal(BrokerUnavailable("the queue is full"), retry_after=2)
    assert "nothing was accepted" in refused.message


async def test_past_the_in_flight_cap_requests_are_refused_at_once() -> None:
    exchange = Exchange()
    broker = client(exchange, publish_in_flight=1, message_max_events=1)
    # Each request fills a message and sends the one before: 17 requests, 16 unconfirmed.
    held = [send(broker, 1, key=str(i)) for i in range(17)]
    await exchange.wait_for(16)
    with pytest.raises(BrokerUnavailable, match="too many unconfirmed messages"):
        await broker.publish(pieces(1), received_at=NOW, request_id="late")
    await exchange.confirm_all(held)


async def test_a_publish_that_ends_without_an_answer_still_answers_its_requests() -> None:
    # A publish interrupted by cancellation (not an Exception) must not leave its requests,
    # and their share of ingest's memory budget, waiting forever.
    exchange = Exchange()
    broker = client(exchange)
    request = asyncio.create_task(broker.publish(pieces(3), received_at=NOW, request_id="r"))
    await exchange.wait_for(1)
    exchange.confirms[0].cancel()
    with pytest.raises(BrokerUnavailable, match="interrupted"):
        await asyncio.wait_for(request, 5)


async def test_a_message_is_bounded_by_bytes_as_well_as_by_count() -> None:
    exchange = Exchange()
    size = len(pieces(5, key="x")[0].data)  # bytes of five events
    broker = client(
        exchange,
        publish_in_flight=1,
        message_max_bytes=2 * size + 3,
        max_event_bytes=size,
        message_compression="none",  # the bound is on the events' bytes, before any compression
    )
    tasks = [send(broker, 5, key="a")]
    await exchange.wait_for(1)
    tasks.append(send(broker, 5, key="b"))  # waits in the open group: the slot is busy
    tasks.append(send(broker, 5, key="c"))  # fits by count, and by bytes only just: joins b
    tasks.append(send(broker, 5, key="d"))  # would pass the bytes: b and c leave at once
    await exchange.wait_for(2)
    assert units(exchange.published[1]) == [("k:b", 5), ("k:c", 5)]
    await exchange.confirm_all(tasks)
    assert [len(m.body) <= 2 * size + 3 for m in exchange.published] == [True] * 3
