"""Queue depths for ``GET /stats`` and the dashboards: how much waits to be stored, and how
much was dead-lettered, sampled from RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import time

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from prometheus_client import Gauge

from pubsub import service, topology
from pubsub.settings import Settings
from pubsub.topology import Names

log = logging.getLogger("pubsub.readapi.queues")

QUEUE_MESSAGES = Gauge(
    "pubsub_queue_messages",
    "Messages ready in the events queue and the dead-letter queue (sampled by the read API).",
    ["queue"],
)


class QueueMonitor:
    """The read API's broker connection, used for nothing but queue depths."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._last: dict[str, int | None] = {"queued_messages": None, "dead_letter_messages": None}
        self._sampled_at = float("-inf")
        self._sampling = asyncio.Lock()

    async def start(self, stop: asyncio.Event) -> None:
        self.connection = await service.connect_broker(self.settings, name="read API", stop=stop)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    @property
    def connected(self) -> bool:
        return topology.is_connected(self.connection)

    async def depths(self, *, max_age: float = 0.0) -> dict[str, int | None]:
        """Messages ready in the events queue and in the dead-letter queue (None if unknown),
        asked of the broker unless a sample younger than ``max_age`` seconds exists. Requests
        arriving together share one sample: under load, ``/stats`` costs no broker round
        trips of its own."""
        async with self._sampling:
            if time.monotonic() - self._sampled_at < max_age:
                return dict(self._last)
            self._last = await self._ask()
            self._sampled_at = time.monotonic()
            return dict(self._last)

    async def _ask(self) -> dict[str, int | None]:
        names = Names.of(self.settings)
        out: dict[str, int | None] = {"queued_messages": None, "dead_letter_messages": None}
        if self.connection is None or not self.connected:
            return out
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.connection.channel()
            for key, name, label in (
                ("queued_messages", names.queue, "events"),
                ("dead_letter_messages", names.dead_queue, "dead"),
            ):
                # robust=False: a robust channel answers passive declares from a cache.
                queue = await self._channel.declare_queue(
                    name, passive=True, timeout=2, robust=False
                )
                out[key] = queue.declaration_result.message_count
                QUEUE_MESSAGES.labels(label).set(out[key] or 0)
        except Exception as exc:  # noqa: BLE001 - depth is informative, never fatal
            log.info("queue depth unavailable: %r", exc)
            self._channel = None
        return out

    async def sample(self, stop: asyncio.Event, every: float = 5.0) -> None:
        """Keep the queue-depth gauge fresh for dashboards and alerts until ``stop``."""
        while not stop.is_set():
            await self.depths()
            await service.stopped_within(stop, every)
