"""The consume loop: gather deliveries into batches, store each batch, then acknowledge it.

Nothing is acknowledged before its transaction committed, so a crash anywhere leads to a
redelivery, which the message ledger in :mod:`consumer.store` makes harmless. While PostgreSQL
is unreachable the batch in hand is retried with capped exponential backoff; the deliveries
stay unacknowledged (not rejected), so an outage neither loops nor fills the dead-letter queue.

Asked to stop, a consumer stores what it already holds, for at most ``PUBSUB_STOP_TIMEOUT``
seconds; what is still unstored then stays unacknowledged, and the broker redelivers it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import psycopg
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from consumer import metrics
from consumer.store import Row, Store, Stored, copy_rows
from pubsub import database, memory, service, topology
from pubsub.backoff import Backoff
from pubsub.message import Claim, Undecodable, decode, request_ids
from pubsub.settings import Settings

log = logging.getLogger("pubsub.consumer.worker")

_PRUNE_EVERY = 600.0  # seconds between ledger clean-ups (spread over the consumers)
_GIVE_BACK_EVERY = 5.0  # seconds: giving memory back costs milliseconds, not worth more often


class Abandoned(Exception):
    """The grace period after the stop request ran out before the batch was stored."""


@dataclass(frozen=True, slots=True)
class Delivery:
    message: AbstractIncomingMessage
    units: list[tuple[str, list[Row]]]  # (ledger key, rows)
    events: int
    received_at: datetime
    request_ids: list[str]
    claims: list[Claim]  # Idempotency-Keys with their body's fingerprint


class Worker:
    """A competing consumer of the events queue."""

    def __init__(self, settings: Settings, *, shard: int | None = None) -> None:
        self.settings = settings
        self.store = Store(settings, shard=random.randrange(1 << 16) if shard is None else shard)
        self.connection: AbstractRobustConnection | None = None
        self._backoff = Backoff.of(settings)
        self._pending: deque[Delivery] = deque()
        self._pending_events = 0
        self._arrived = asyncio.Event()  # something is pending
        self._full = asyncio.Event()  # a whole batch is pending
        self._backlog = False  # more than a batch was pending since memory was last given back
        self._gave_back_at = -_GIVE_BACK_EVERY
        self._give_up = asyncio.Event()  # the grace period after the stop request is over
        self._consumer_tag: str | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None

    async def start(self, stop: asyncio.Event) -> None:
        self.connection = await service.connect_broker(self.settings, name="consumer", stop=stop)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=self.settings.consumer_prefetch)
        topo = await topology.declare(channel, self.settings)
        self._queue = topo.queue
        self._consumer_tag = await topo.queue.consume(self.on_message)
        await service.retry(self.store.connect, what="PostgreSQL", stop=stop, backoff=self._backoff)

    @property
    def connected(self) -> dict[str, bool]:
        return {"broker": topology.is_connected(self.connection), "database": self.store.connected}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The queue's consume callback: decode a delivery and add it to the pending batch;
        one that can never be stored goes to the dead-letter queue at once."""
        try:
            decoded = decode(message, max_bytes=self.settings.message_max_bytes)
            units = [
                (key, copy_rows(events, decoded.received_at, decoded.tenant))
                for key, events in decoded.units
            ]
        except Undecodable as exc:
            await _dead_letter(message, exc)
            return
        # Its rows hold all the store needs, and the broker keeps its own copy for redelivery
        # and dead-lettering: holding the body too would double what the prefetch costs.
        if isinstance(message, aio_pika.IncomingMessage):
            message.body = b""
        events = decoded.events
        self._pending.append(
            Delivery(
                message,
                units,
                events,
                decoded.received_time(),
                decoded.request_ids,
                decoded.claims,
            )
        )
        self._pending_events += events
        self._arrived.set()
        if self._pending_events >= self.settings.batch_max_events:
            self._full.set()
            self._backlog = True

    async def run(self, stop: asyncio.Event) -> None:
        """Store batches until ``stop`` is set, then what was already delivered (within the
        grace period)."""
        grace = asyncio.create_task(self._grace(stop))
        try:
            await self._consume(stop)
            await self._stop_consuming()
            while self._pending:
                await self._flush()
        except Abandoned:
            log.warning(
                "stopping with messages not stored within %.0fs: they stay unacknowledged, "
                "and the broker redelivers them",
                self.settings.stop_timeout,
            )
        finally:
            grace.cancel()

    async def _grace(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(self.settings.stop_timeout)
        self._give_up.set()

    async def _consume(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        next_prune = time.monotonic() + random.uniform(0, _PRUNE_EVERY)
        try:
            while not stop.is_set():
                if not self._pending:
                    await _first(self._arrived.wait(), stopping)
                    if stop.is_set():
                        break
                if not self._full.is_set():
                    # A short wait lets a batch fill up under load; one timer per batch.
                    await _first(self._full.wait(), stopping, timeout=self.settings.batch_max_wait)
                await self._flush()
                if time.monotonic() > next_prune:
                    next_prune = time.monotonic() + _PRUNE_EVERY
                    await self._prune()
        finally:
            stopping.cancel()

    async def _prune(self) -> None:
        try:
            pruned = await self.store.prune(older_than=self.settings.ledger_retention_seconds)
        except psycopg.Error as exc:
            log.warning("could not prune the ledger: %s", exc)
            await self.store.close()
        else:
            if pruned:
                log.info("forgot %d ledger key(s) past the retention", pruned)

    def _take_batch(self) -> list[Delivery]:
        batch: list[Delivery] = []
        events = 0
        while self._pending and (not batch or events < self.settings.batch_max_events):
            delivery = self._pending.popleft()
            batch.append(delivery)
            events += delivery.events
        self._pending_events -= events
        if not self._pending:
            self._arrived.clear()
        if self._pending_events < self.settings.batch_max_events:
            self._full.clear()
        return batch

    async def _flush(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        stored = await self._store_with_retry(batch)
        await self._ack(batch)
        if stored is not None:
            metrics.record(stored, len(batch))
            now = datetime.now(UTC)
            for delivery in batch:
                metrics.LAG_SECONDS.observe((now - delivery.received_at).total_seconds())
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "stored %d event(s), %d new, from %d message(s)",
                    stored.received,
                    stored.inserted,
                    len(batch),
                    extra={"request_ids": [r for d in batch for r in d.request_ids]},
                )
            if stored.redelivered:
                log.info(
                    "skipped %d piece(s) stored before (redelivery or retry)", stored.redelivered
                )
            if stored.reused_keys:
                log.warning(
                    "%d request(s) reused an Idempotency-Key with another body: stored and "
                    "counted as new requests (a key names one body; see docs/api.md)",
                    stored.reused_keys,
                    extra={"request_ids": [r for d in batch for r in d.request_ids]},
                )
        if self._backlog and not self._pending:
            del batch[:]  # its deliveries' memory must be free before it is given back
            self._give_back()

    def _give_back(self) -> None:
        """A backlog (a stall of PostgreSQL, a burst) filled the prefetch; now that it is
        stored, its memory goes back to the system instead of staying the process's RSS."""
        now = time.monotonic()
        if now - self._gave_back_at < _GIVE_BACK_EVERY:
            return  # a stream of backlogs: the next drained one gives back
        self._backlog = False
        self._gave_back_at = now
        memory.give_back()

    async def _store_with_retry(self, batch: list[Delivery]) -> Stored | None:
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                stored = await self._attempt(
                    [u for d in batch for u in d.units], [c for d in batch for c in d.claims]
                )
            except database.REFUSED as exc:
                log.error("batch of %d message(s) refused: %s", len(batch), exc)
                await self._store_one_by_one(batch)
                return None
            except (*database.UNAVAILABLE, *database.MISCONFIGURED) as exc:
                # The deliveries stay unacknowledged meanwhile: neither lost nor dead-lettered.
                await self._wait_to_retry(exc, failures)
                failures += 1
                continue
            metrics.STORE_SECONDS.observe(time.perf_counter() - started)
            return stored

    async def _wait_to_retry(self, exc: Exception, failures: int) -> None:
        metrics.STORE_ERRORS.inc()
        delay = self._backoff.delay(failures)
        if isinstance(exc, database.MISCONFIGURED) and not isinstance(exc, database.REFUSED):
            sqlstate = getattr(exc, "sqlstate", None) or "?"
            log.error(
                "the database refuses the consumer's statements (SQLSTATE %s: %s): check the "
                "role's privileges and the schema; nothing is dead-lettered meanwhile, "
                "retrying in %.1fs",
                sqlstate,
                str(exc).strip(),
                delay,
            )
        else:
            log.warning("database unavailable (%s); retrying in %.1fs", exc, delay)
        await self.store.close()
        await service.stopped_within(self._give_up, delay)

    async def _attempt(self, units: list[tuple[str, list[Row]]], claims: list[Claim]) -> Stored:
        """One store; :class:`Abandoned` once the grace period after a stop request is over
        (an attempt then in progress is cancelled: uncommitted, nothing is acknowledged)."""
        if self._give_up.is_set():
            raise Abandoned
        attempt = asyncio.ensure_future(self.store.store(units, claims=claims))
        give_up = asyncio.ensure_future(self._give_up.wait())
        try:
            await asyncio.wait({attempt, give_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            give_up.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.wait({attempt})  # cancelled, or finished meanwhile: either way unacked
            await self.store.close()
            raise Abandoned
        return attempt.result()

    async def _store_one_by_one(self, batch: list[Delivery]) -> None:
        """Find the messages whose data the database refuses, and dead-letter only those; an
        outage meanwhile is waited out as for a batch."""
        for delivery in batch:
            failures = 0
            while True:
                try:
                    stored = await self._attempt(delivery.units, delivery.claims)
                except database.REFUSED as exc:
                    await _dead_letter(delivery.message, exc)
                except (*database.UNAVAILABLE, *database.MISCONFIGURED) as exc:
                    await self._wait_to_retry(exc, failures)
                    failures += 1
                    continue
                else:
                    metrics.record(stored, 1)
                break

    async def _ack(self, batch: list[Delivery]) -> None:
        # One multiple-ack per channel: deliveries are taken in arrival order, so every
        # earlier tag on that channel is in this batch or was settled before.
        last: dict[int, AbstractIncomingMessage] = {}
        for delivery in batch:
            if delivery.message.processed:
                continue
            try:
                channel = delivery.message.channel
            except aiormq.exceptions.ChannelInvalidStateError:
                continue  # delivered on a channel lost since: the broker redelivers it
            last[id(channel)] = delivery.message
        for message in last.values():
            await _settle(message.ack(multiple=True))

    async def _stop_consuming(self) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception as exc:  # noqa: BLE001 - the broker may already be gone
                log.info("could not cancel consumer: %s", exc)
            self._consumer_tag = None

    async def close(self) -> None:
        await self.store.close()
        if self.connection is not None:
            await self.connection.close()


async def _dead_letter(message: AbstractIncomingMessage, reason: Exception) -> None:
    """Reject a message that can never be stored: the broker moves it to the dead-letter
    queue, where ``python -m consumer.deadletters`` shows it."""
    log.warning(
        "dead-lettering message %s: %s",
        message.message_id or message.delivery_tag,
        reason,
        extra={
            "message_id": message.message_id,
            "request_ids": request_ids(message.headers),
        },
    )
    metrics.DEAD_LETTERED.inc()
    await _settle(message.reject(requeue=False))


async def _first(
    awaitable: Awaitable[Any], stopping: asyncio.Future[Any], *, timeout: float | None = None
) -> None:
    """Wait for ``awaitable``, for ``stopping`` or for ``timeout``, whichever comes first."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()


async def _settle(settlement: Awaitable[None]) -> None:
    try:
        await settlement
    except Exception as exc:  # noqa: BLE001
        # The channel closed since the delivery: the broker redelivers the message, and the
        # ledger recognises it as stored.
        log.info("could not settle a delivery (%s); it will be redelivered", exc)
