"""Broker topology: one durable quorum queue, its exchange, and a dead-letter queue.

Every service declares the same topology through :func:`declare`, so whichever starts first
creates it and the others find it as expected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelPreconditionFailed
from pamqp.common import FieldTable

from pubsub import failover
from pubsub.settings import Settings

log = logging.getLogger("pubsub.topology")

ROUTING_KEY = "events"
RECONNECT_INTERVAL = 1.0  # seconds; aio-pika's default of 5 s stretches every broker outage


async def connect(settings: Settings, *, name: str, first: int = 0) -> AbstractRobustConnection:
    """A connection that reconnects by itself, to the next node of the list when there are
    several, and restores its channels and consumers; the first attempt goes to node
    ``first``."""
    return await failover.connect_robust(
        settings.amqp_urls,
        first=first,
        reconnect_interval=RECONNECT_INTERVAL,
        client_properties={"connection_name": f"pubsub {name}"},
    )


def is_connected(conn: AbstractRobustConnection | None) -> bool:
    """Whether a connection made by :func:`connect` is up now (not reconnecting)."""
    return conn is not None and not conn.is_closed and conn.connected.is_set()


@dataclass(frozen=True)
class Names:
    exchange: str
    queue: str
    dead_exchange: str
    dead_queue: str

    @classmethod
    def of(cls, settings: Settings) -> Names:
        base = settings.queue
        return cls(base, base, f"{base}.dlx", f"{base}.dead")


def queue_arguments(settings: Settings) -> FieldTable:
    names = Names.of(settings)
    # Quorum queues on RabbitMQ 3.10 have no default delivery limit: without one a poison
    # message would loop forever. at-least-once dead-lettering needs reject-publish overflow,
    # which also makes a full queue (x-max-length-bytes) refuse new messages with a nack:
    # ingest answers 503 instead of the broker's disk filling up.
    return {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": settings.quorum_size,
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": names.dead_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-max-length-bytes": settings.max_queue_bytes,
    }


# Deliveries after which the dead-letter queue itself would drop a message. RabbitMQ 4 gives
# quorum queues a limit of 20 by default, and before 4.3 counts every return: listing the
# dead letters (which takes and returns them) twenty times would lose them. 3.10 has no
# default; a number this high is accepted by both and is never reached.
DEAD_DELIVERY_LIMIT = 1_000_000


def dead_queue_arguments(settings: Settings) -> FieldTable:
    return {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": settings.quorum_size,
        "x-delivery-limit": DEAD_DELIVERY_LIMIT,
    }


@dataclass(frozen=True)
class Topology:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_queue: AbstractQueue


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare (idempotently) and return the exchange, the queue and the dead-letter queue."""
    names = Names.of(settings)
    dead_exchange = await channel.declare_exchange(
        names.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await _queue(channel, names.dead_queue, dead_queue_arguments(settings))
    await dead_queue.bind(dead_exchange)
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await _queue(channel, names.queue, queue_arguments(settings))
    await queue.bind(exchange, ROUTING_KEY)
    return Topology(exchange, queue, dead_queue)


async def _queue(channel: AbstractChannel, name: str, arguments: FieldTable) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as exc:
        # Made by an earlier version or with other settings: arguments of an existing queue
        # cannot change. Use it as it is rather than refuse to start.
        log.warning(
            "queue %r exists with other arguments (%s); using it as it is, so its length limit, "
            "delivery limit and replicas may not be those of PUBSUB_MAX_QUEUE_BYTES, "
            "PUBSUB_DELIVERY_LIMIT and PUBSUB_QUORUM_SIZE. To apply them: stop ingest, let the "
            "consumers drain the queue, delete it (rabbitmqctl delete_queue %s) and restart "
            "the services",
            name,
            exc,
            name,
        )
        await channel.reopen()
        return await channel.declare_queue(name, passive=True)


async def delete(channel: AbstractChannel, settings: Settings) -> None:
    """Remove the queues and exchanges (tests and benchmarks clean up with this)."""
    names = Names.of(settings)
    for queue in (names.queue, names.dead_queue):
        await channel.queue_delete(queue)
    for exchange in (names.exchange, names.dead_exchange):
        await channel.exchange_delete(exchange)
