"""Queue depths for ``GET /stats`` and the dashboards: how much waits to be stored, and how
much was dead-lettered, sampled from RabbitMQ."""

from __future__ import annotations

import asyncio
import logging
import math

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
        self._asking: asyncio.Future[dict[str, int | None]] | None = None
        # Exported from the start, as unknown until the first sample: a scrape (or an alert)
        # that comes before it sees the series, not its absence.
        for label in ("events", "dead"):
            QUEUE_MESSAGES.labels(label).set(math.nan)

    async def start(self, stop: asyncio.Event) -> None:
        self.connection = await service.connect_broker(self.settings, name="read API", stop=stop)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    @property
    def connected(self) -> bool:
        return topology.is_connected(self.connection)

    async def depths(self, *, share: bool = False) -> dict[str, int | None]:
        """Messages ready in the events queue and in the dead-letter queue (None if unknown).
        With ``share``, a request that arrives while the broker is being asked waits for that
        answer instead of asking again: under load ``/stats`` costs no broker round trips of
        its own, and no answer is older than one round trip."""
        asking = self._asking
        if share and asking is not None:
            return dict(await asyncio.shield(asking))
        asking = self._asking = asyncio.ensure_future(self._ask())
        try:
            return dict(await asyncio.shield(asking))
        finally:
            if self._asking is asking:
                self._asking = None

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
