"""A queue at its byte limit: publishers get 503s with a reason, nothing accepted is lost, and
the system takes events again by itself once the consumers caught up."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import aio_pika
import aiohttp
import pytest

from pubsub import topology
from pubsub.settings import Settings
from tests.fix_services import private_settings
from tests.fix_stack import StackFactory
from tests.support import event, post_json, settled

LIMIT = 200_000  # bytes in the queue: a dozen batches of 100 events


@pytest.fixture
def private(settings: Settings) -> Iterator[Settings]:
    with private_settings(
        settings.amqp_url, settings.database_url, prefix="full", max_queue_bytes=LIMIT
    ) as s:
        yield s


async def test_a_full_queue_answers_503_and_loses_nothing(
    private: Settings, own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    own = own_stack(
        consumers=1, db_schema=private.db_schema, queue=private.queue, max_queue_bytes=LIMIT
    )
    own.start_all(["readapi", "ingest"])  # no consumer: the queue fills up
    topic = f"full-{uuid.uuid4().hex[:6]}"
    accepted, refusal = 0, None
    for i in range(100):
        # Random padding: ingest compresses its messages, and repeated bytes would take a
        # thousand requests to fill the queue.
        body = [
            event(topic, f"{i}-{j}", payload={"pad": secrets.token_hex(50)}) for j in range(100)
        ]
        started = time.monotonic()
        status, reply, headers = await post_json(http, own.ingest_url, body)
        if status == 503:
            refusal = (reply, headers, time.monotonic() - started)
            break
        assert status == 202, reply
        accepted += 100
    assert refusal is not None, "the queue never filled up"
    reply, headers, seconds = refusal
    assert "the queue is full" in reply["error"] and int(headers["Retry-After"]) >= 1
    assert seconds < own.settings.publish_timeout, "a nack, not a timeout"
    assert accepted >= 500, "the limit is in bytes of the queue, not a handful of messages"

    own.start("consumer-1")
    after = await settled(http, own.read_url, accepted, timeout=60)
    assert (after["received"], after["unique_processed"]) == (accepted, accepted)
    status, _, _ = await post_json(http, own.ingest_url, [event(topic, "after")])
    assert status == 202
    own.stop_all()


async def test_a_queue_made_with_other_arguments_is_used_as_it_is(
    private: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier version's queue (no byte limit) must not keep the services from starting."""
    async with await aio_pika.connect(private.amqp_url) as conn:
        channel = await conn.channel()
        await channel.declare_queue(
            private.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        topo = await topology.declare(channel, private)
        assert topo.queue.name == private.queue
    assert "exists with other arguments" in caplog.text
    assert f"rabbitmqctl delete_queue {private.queue}" in caplog.text
