"""``GET /events/stream``: a live tail of stored events over Server-Sent Events.

Events go out in the order they became visible: by ``(storing transaction, topic, event_id)``
(see :func:`readapi.queries.stream_read`). A stream at the live head gets them from the read
API's one shared look for new events (:mod:`readapi.feed`), taken every
``PUBSUB_STREAM_POLL_INTERVAL`` seconds however many streams are open; a stream behind the head
reads by itself until it reaches it. Polling rather than consumers' ``NOTIFY``: a ``NOTIFY`` in
the storing transaction serialises every commit on the notification queue's lock, a cost on
the write path paid whether or not anybody watches; a look that finds nothing costs one index
probe.

Every SSE event carries its cursor as ``id:``, so a client that reconnects with
``Last-Event-ID`` resumes exactly after the last event it got: no gap, no repeat.

Memory per stream is bounded: it holds at most ``PUBSUB_STREAM_BUFFER`` events and
``PUBSUB_STREAM_BUFFER_BYTES`` bytes (or one event) ahead of its client. An event that waited
longer than ``PUBSUB_STREAM_SLOW_TIMEOUT`` seconds in that buffer means the client reads more
slowly than events arrive; the stream then ends with a final ``event: error`` saying so. A
client that stops reading altogether is aborted once one write has waited three times that, and
at least 30 s (aiohttp-sse's send timeout): nothing more can reach it. Heartbeats are SSE
comments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from psycopg_pool import AsyncConnectionPool

from pubsub import access, service
from pubsub.backoff import Backoff
from pubsub.http import Refusal
from pubsub.settings import Settings
from pubsub.tenants import Access
from readapi import feed, metrics, queries
from readapi.feed import Follower

log = logging.getLogger("pubsub.readapi.stream")

# The kernel's send buffer of a stream's socket. Left to autotuning it grows to megabytes per
# connection: memory outside the stream's own bound, and a slow client would hide behind it
# for minutes before the stream could notice. 256 KiB still carries ~10 MB/s at 25 ms RTT.
_SEND_BUFFER = 256 * 1024
_STALLED_AFTER = 30.0  # seconds a single write may wait before the client counts as gone
# Fewest rows a stream reading by itself looks at in one statement, after statement timeouts
# narrowed its reads (from feed.SCAN, by eight each time); below, the stream ends.
MIN_SCAN = 100
_TIMED_OUT = (
    "reading this stream's events did not finish within {timeout:g} s "
    "(PUBSUB_READ_STATEMENT_TIMEOUT), even over {rows} rows at a time; retry later with "
    "Last-Event-ID to resume, or narrow the stream (topic, source, q)"
)


class Streams:
    """The live streams of one read API: how many run, their shared feeds (one per tenant
    with streams), and when they must all end."""

    def __init__(
        self, settings: Settings, stop: asyncio.Event, pool: AsyncConnectionPool[Any]
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.active = 0
        self._pool = pool
        self._feeds: dict[int, feed.Feed] = {}
        self._by_tenant: dict[str, int] = {}  # open streams, by tenant
        # Streams behind the head read by themselves; at most half the pool's connections at
        # once, so that pages of /events and /stats always find one.
        self.own_reads = asyncio.Semaphore(max(1, settings.db_pool_size // 2))

    def feed(self, tenant: int) -> feed.Feed:
        """The feed of ``tenant``'s streams: one look per tenant, so no read of one tenant's
        feed ever holds another's events."""
        found = self._feeds.get(tenant)
        if found is None:
            found = self._feeds[tenant] = feed.Feed(self.settings, self._pool, self.stop, tenant)
        return found

    async def close(self) -> None:
        for each in self._feeds.values():
            await each.close()

    @contextlib.contextmanager
    def place(self, who: Access) -> Iterator[None]:
        """A place for one stream of ``who``'s tenant for the ``with`` block: a 503 past the
        read API's limit, a 429 past the tenant's. Taken before the stream awaits anything, so
        that concurrent connects cannot all pass the check."""
        limit = self.settings.stream_max_clients
        if self.active >= limit:
            raise Refusal.unavailable(
                f"too many live streams: this read API serves at most {limit} at once "
                "(PUBSUB_STREAM_MAX_CLIENTS); retry later or read pages of /events",
                retry_after=self.settings.retry_after,
            )
        tenant = who.tenant or ""
        own = self._by_tenant.get(tenant, 0)
        if who.limits.streams is not None and own >= who.limits.streams:
            raise Refusal(
                429,
                f"tenant {tenant!r} has {own} live stream(s) open, its limit; close one or "
                "retry later",
                headers=(("Retry-After", str(self.settings.retry_after)),),
            )
        self.active += 1
        self._by_tenant[tenant] = own + 1
        metrics.STREAMS.inc()
        metrics.TENANT_STREAMS.labels(tenant).inc()
        try:
            yield
        finally:
            self.active -= 1
            self._by_tenant[tenant] -= 1
            if not self._by_tenant[tenant]:
                del self._by_tenant[tenant]
            metrics.STREAMS.dec()
            metrics.TENANT_STREAMS.labels(tenant).dec()


STREAMS = web.AppKey("streams", Streams)


def _data(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


async def stream_events(
    request: web.Request,
    *,
    pool: AsyncConnectionPool[Any],
    unavailable: Callable[[Exception], Refusal],
    filters: queries.Filters,
    since: datetime | None,
    last_event_id: str | None,
) -> web.StreamResponse:
    """Serve one stream until the client leaves, is too slow, or the service stops."""
    streams = request.app[STREAMS]
    with streams.place(access.of(request)):
        settings = streams.settings
        try:
            cursor = queries.StreamCursor.decode(last_event_id) if last_event_id else None
        except queries.BadCursor as exc:
            raise Refusal(400, str(exc)) from None
        if cursor is None:
            try:
                async with pool.connection() as conn:
                    cursor = await queries.stream_start(conn, since, tenant=filters.tenant)
            except queries.UNAVAILABLE as exc:
                raise unavailable(exc) from None
        # A slow client is told so (see _Stream.run); one whose writes stall for longer than that
        # cannot be told anything any more, and is aborted. Not sooner than _STALLED_AFTER: the
        # kernel wakes a writer only once a third of the send buffer is free, so even a client that
        # still reads (at 50 KB/s, say) can hold one write for seconds.
        resp = EventSourceResponse(
            ping_interval=settings.stream_heartbeat,
            send_timeout=max(settings.stream_slow_timeout * 3, _STALLED_AFTER),
        )
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        try:
            await resp.prepare(request)
            async with resp:  # on leaving: heartbeats stop
                await _Stream(request, resp, streams, pool, filters).run(cursor)
        except (ConnectionResetError, TimeoutError):
            pass  # the client left, or stopped reading and was aborted
        return resp


def _gone(request: web.Request) -> bool:
    """Whether the client closed its connection (noticed without writing to it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass
class _Stream:
    """One client's stream: send what its buffer holds; when it is empty, wait for the feed,
    or, when behind the head, read by itself."""

    request: web.Request
    resp: EventSourceResponse
    streams: Streams
    pool: AsyncConnectionPool[Any]
    filters: queries.Filters

    async def run(self, position: queries.StreamCursor) -> None:
        follower = Follower(self.filters, position)
        try:
            await self._serve(follower)
        finally:
            self.streams.feed(self.filters.tenant).leave(follower)

    async def _serve(self, follower: Follower) -> None:
        settings, stop, resp = self.streams.settings, self.streams.stop, self.resp
        backoff, failures, refused = Backoff.of(settings), 0, 0
        scan = feed.SCAN
        while resp.is_connected() and not _gone(self.request):
            if stop.is_set():
                await _final(resp, "end", "the read API is shutting down; reconnect with "
                             "Last-Event-ID to resume")  # fmt: skip
                return
            if follower.buffer:
                fetched, event = follower.take()
                waited = time.monotonic() - fetched
                if waited > settings.stream_slow_timeout:
                    await self._cut_off(len(follower.buffer) + 1, waited)
                    return
                await resp.send(event.data, id=event.at.encode())
                continue
            if follower.joined:
                follower.changed.clear()
                # The feed wakes it for events and when it stops; the timeout notices a client
                # that left (aiohttp does not cancel a handler whose client went away), and
                # soon: its place counts against PUBSUB_STREAM_MAX_CLIENTS until then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(follower.changed.wait(), settings.stream_poll_interval)
                continue
            events, room = follower.room(settings)
            try:
                async with self.streams.own_reads, self.pool.connection() as conn:
                    page = await queries.stream_read(
                        conn, follower.position, self.filters,
                        limit=events, max_bytes=room, scan=scan,
                    )  # fmt: skip
                metrics.OWN_READS.inc()
                failures = 0
                scan = min(scan * 2, feed.SCAN)
            except psycopg.errors.QueryCanceled:
                # The statement timeout: the same read would time out again. Read fewer rows
                # at a time; below the floor, end the stream with what to do instead.
                scan //= 8
                log.warning("stream: a read hit the statement timeout; scanning %d rows", scan)
                if scan < MIN_SCAN:
                    await _final(resp, "error", _TIMED_OUT.format(
                        timeout=settings.read_statement_timeout, rows=MIN_SCAN))  # fmt: skip
                    return
                continue
            except queries.UNAVAILABLE as exc:
                # Keep the client: heartbeats go on, and reading resumes where it stopped.
                log.warning("stream: database unavailable: %r", exc)
                await service.stopped_within(stop, backoff.delay(failures))
                failures += 1
                continue
            fetched = time.monotonic()
            for event in page.events:
                follower.add(event, fetched)
            follower.position = page.position
            if page.caught_up:
                if self.streams.feed(self.filters.tenant).join(follower):
                    refused = 0
                else:
                    # The feed read past this position meanwhile: read up to it first.
                    refused += 1
                    if refused > 1 and not follower.buffer:
                        await service.stopped_within(stop, settings.stream_poll_interval)

    async def _cut_off(self, behind: int, waited: float) -> None:
        settings = self.streams.settings
        log.info("stream: cutting off a slow client (%d events waited %.1fs)", behind, waited)
        await _final(
            self.resp,
            "error",
            f"this client reads more slowly than events arrive: {behind} events waited "
            f"more than {settings.stream_slow_timeout:g} s (PUBSUB_STREAM_SLOW_TIMEOUT) "
            f"in a buffer of {settings.stream_buffer} events and "
            f"{settings.stream_buffer_bytes} bytes (PUBSUB_STREAM_BUFFER, "
            "PUBSUB_STREAM_BUFFER_BYTES); reconnect with Last-Event-ID to resume, or narrow the "
            "stream by topic",
        )


async def _final(resp: EventSourceResponse, kind: str, message: str) -> None:
    """The last message of a stream; the stream ends when the caller returns."""
    await resp.send(_data({"error": message}), event=kind)
