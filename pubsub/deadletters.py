"""The dead-letter queue, listed and replayed: by the ``dead-letters`` command
(:mod:`consumer.deadletters`) and by ingest's admin routes (``/dead-letters``).

A message lands there when it could never be stored (not decodable, refused by PostgreSQL) or
was delivered ``PUBSUB_DELIVERY_LIMIT`` times. Listing leaves them in place; a replay moves
them back to the events queue (after the cause was fixed), each published with confirms
before it is removed from the dead-letter queue, so none is lost on the way.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from pubsub import failover, topology
from pubsub.api import DeadLetterEntry
from pubsub.message import TENANT, preview
from pubsub.settings import Settings
from pubsub.tenants import DEFAULT


def describe(message: AbstractIncomingMessage) -> DeadLetterEntry:
    headers: dict[str, Any] = dict(message.headers or {})
    deaths = headers.get("x-death") or []
    reason = "unknown"
    if deaths and isinstance(deaths[0], dict):
        reason = str(deaths[0].get("reason", reason))
    delivery_count = headers.get("x-delivery-count", 0)
    return DeadLetterEntry(
        message_id=message.message_id or "-",
        reason=reason,
        deliveries=int(delivery_count) if isinstance(delivery_count, int) else 0,
        size=len(message.body),
        preview=preview(message),
        tenant=str(headers.get(TENANT, DEFAULT)),
    )


async def list_dead(settings: Settings, *, limit: int) -> list[DeadLetterEntry]:
    """Up to ``limit`` dead letters; they stay in the queue."""
    async with await failover.connect_once(settings.amqp_urls) as conn:
        channel = await conn.channel()
        topo = await topology.declare(channel, settings)
        held: list[AbstractIncomingMessage] = []
        try:
            while len(held) < limit:
                message = await topo.dead_queue.get(fail=False, no_ack=False)
                if message is None:
                    break
                held.append(message)
            return [describe(m) for m in held]
        finally:
            for message in held:
                await message.nack(requeue=True)


async def replay(settings: Settings, *, limit: int) -> int:
    """Move up to ``limit`` dead letters back to the events queue; return how many moved.

    Only those present at the start: a message that fails again comes back to the dead-letter
    queue while this runs, and must not be picked up a second time.
    """
    moved = 0
    async with await failover.connect_once(settings.amqp_urls) as conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        topo = await topology.declare(channel, settings)
        present = topo.dead_queue.declaration_result.message_count or 0
        while moved < min(limit, present):
            message = await topo.dead_queue.get(fail=False, no_ack=False)
            if message is None:
                break
            headers = {
                k: v for k, v in (message.headers or {}).items() if not k.startswith("x-death")
            }
            await topo.exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    message_id=message.message_id,
                    type=message.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                topology.ROUTING_KEY,
            )
            await message.ack()  # only now: the copy above was confirmed
            moved += 1
    return moved
