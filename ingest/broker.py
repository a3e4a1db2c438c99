"""Publishing to RabbitMQ with confirms, coalescing small requests into shared messages.

A message costs the broker the same whether it holds one event or a thousand, so events of
concurrent requests travel together: while ``publish_in_flight`` messages await their confirms,
newly arriving events gather in an open group that leaves as one message as soon as a slot
frees up (or it is full). Each request is answered only after every message holding its events
was confirmed. Idle traffic thus pays no added latency, and load raises the events per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime

from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import DeliveryError, PublishError

from ingest import metrics
from pubsub import message, service, tenants, topology
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.broker")


class BrokerUnavailable(Exception):
    """The broker did not confirm in time, refused, or is not connected.

    ``unknown``: the message was written and no answer came (a timeout, a lost connection, a
    shutdown mid-publish), so the broker may have taken it; otherwise nothing was taken."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        super().__init__(reason)
        self.unknown = unknown


class _Waiter:
    """One request's wait for the confirms of every message that holds its events."""

    __slots__ = ("future", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = 0

    def confirmed(self) -> None:
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(None)

    def failed(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # retrieved: the request may have timed out already


class _Group:
    """Events that will travel in one broker message."""

    __slots__ = (
        "count", "deadline", "keys", "pieces", "received_at", "request_ids", "size", "tenant",
        "waiters",
    )  # fmt: skip

    def __init__(self, received_at: str, deadline: float, tenant: str) -> None:
        # Set when the first request joins: whatever waits on this group is answered by then.
        self.deadline = deadline
        self.pieces: list[bytes] = []
        self.keys: list[list[str | int]] = []  # the x-pieces entries (see pubsub.message)
        self.count = 0
        self.size = 1  # bytes of the message's body: the pieces, a comma or bracket each, "]"
        self.waiters: list[_Waiter] = []
        self.request_ids: list[str] = []
        self.received_at = received_at
        self.tenant = tenant  # a message holds the events of one tenant

    def join(self, waiter: _Waiter, request_id: str) -> None:
        waiter.remaining += 1
        self.waiters.append(waiter)
        if len(self.request_ids) < 16:
            self.request_ids.append(request_id)


class BrokerClient:
    """Owns the broker connection of one ingest process and publishes through it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._open: _Group | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()  # construct inside the running loop
        # Past this many unconfirmed messages, answer 503 instead of holding more in memory.
        self._max_in_flight = settings.publish_in_flight * 16

    async def start(self, stop: asyncio.Event) -> None:
        connection = await service.connect_broker(self.settings, name="ingest", stop=stop)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self.attach(connection, (await topology.declare(channel, self.settings)).exchange)

    def attach(self, connection: AbstractRobustConnection, exchange: AbstractExchange) -> None:
        """Publish to ``exchange``, on a channel of ``connection`` with publisher confirms."""
        self.connection, self._exchange = connection, exchange

    @property
    def connected(self) -> bool:
        return topology.is_connected(self.connection)

    async def publish(
        self,
        pieces: Sequence[message.Piece],
        *,
        received_at: datetime,
        request_id: str,
        tenant: str = tenants.DEFAULT,
    ) -> None:
        """Send encoded events of ``tenant``; return once all are confirmed or raise
        BrokerUnavailable."""
        if not self.connected:
            raise BrokerUnavailable("not connected to the broker")
        if self._in_flight >= self._max_in_flight:
            raise BrokerUnavailable("the broker is not keeping up; too many unconfirmed messages")
        limit = self.settings.message_max_events
        waiter = _Waiter(self._loop)
        received = received_at.isoformat()
        for piece in pieces:
            group = self._open
            if group is not None and (
                group.tenant != tenant
                or group.count + piece.count > limit
                or group.size + len(piece.data) + 1 > self.settings.message_max_bytes
            ):
                self._flush_open()  # a full message leaves whatever is in flight
                group = None
            if group is None:
                deadline = self._loop.time() + self.settings.publish_timeout
                group = self._open = _Group(received, deadline, tenant)
            group.pieces.append(piece.data)
            group.size += len(piece.data) + 1
            if not piece.key and group.keys and not group.keys[-1][0]:
                # Pieces without a key are one unit for the consumer anyway: one entry.
                group.keys[-1][1] = int(group.keys[-1][1]) + piece.count
            else:
                group.keys.append(piece.entry() if piece.key else ["", piece.count])
            group.count += piece.count
            group.join(waiter, request_id)
        if self._in_flight < self.settings.publish_in_flight:
            self._flush_open()
        # No timer per request: every group is settled by its deadline (see _publish_group).
        await waiter.future

    def _flush_open(self) -> None:
        group, self._open = self._open, None
        if group is not None and group.pieces:
            self._send(group)

    def _send(self, group: _Group) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._publish_group(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_group(self, group: _Group) -> None:
        started = time.perf_counter()
        settled = sent = False
        try:
            if self._exchange is None:
                raise BrokerUnavailable("publisher not started")
            outgoing = message.encode(
                group.pieces,
                keys=group.keys,
                received_at=group.received_at,
                request_ids=group.request_ids,
                compress=self.settings.message_compression == "deflate",
                tenant=group.tenant,
            )
            # publish() bounds the write, not a blocked connection: add our own deadline.
            remaining = group.deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError("waited too long for a free publishing slot")
            sent = True
            await asyncio.wait_for(
                self._exchange.publish(outgoing, topology.ROUTING_KEY, mandatory=True), remaining
            )
        except Exception as exc:  # noqa: BLE001 - every failure means "not confirmed"
            metrics.PUBLISH_FAILURES.inc()
            nacked = isinstance(exc, DeliveryError) and not isinstance(exc, PublishError)
            failure = BrokerUnavailable(self._reason(exc), unknown=sent and not nacked)
            log.warning(
                "publish of %d event(s) failed: %s",
                group.count,
                failure,
                extra={"request_ids": group.request_ids},
            )
            for waiter in group.waiters:
                waiter.failed(failure)
            settled = True
        else:
            metrics.CONFIRM_SECONDS.observe(time.perf_counter() - started)
            metrics.MESSAGE_EVENTS.observe(group.count)
            for waiter in group.waiters:
                waiter.confirmed()
            settled = True
        finally:
            if not settled:
                # Cancelled (shutdown), or a BaseException: no request may wait forever, nor
                # keep its share of the memory budget.
                interrupted = BrokerUnavailable(
                    "publishing was interrupted before the broker confirmed", unknown=sent
                )
                for waiter in group.waiters:
                    waiter.failed(interrupted)
            self._in_flight -= 1
            if self._open is not None and self._open.pieces:
                self._flush_open()

    def _reason(self, exc: Exception) -> str:
        """What the client is told about a message that was not confirmed."""
        if isinstance(exc, TimeoutError):
            return f"no confirm from the broker within {self.settings.publish_timeout}s"
        if isinstance(exc, DeliveryError) and not isinstance(exc, PublishError):
            # A nack: with reject-publish overflow, the queue is at its length limit.
            return "the queue is full (PUBSUB_MAX_QUEUE_BYTES) while the consumers catch up"
        try:
            return str(exc) or type(exc).__name__
        except Exception:  # noqa: BLE001 - a reason must never keep the requests waiting
            return type(exc).__name__

    async def close(self) -> None:
        """Let messages in flight finish (bounded by their deadline), then disconnect."""
        self._flush_open()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.publish_timeout + 1)
        if self.connection is not None:
            await self.connection.close()
