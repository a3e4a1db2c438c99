"""One look for newly stored events per read API, shared by all its live streams.

A stream that has caught up with the live head joins the feed; the feed reads what was stored
after its own position every ``PUBSUB_STREAM_POLL_INTERVAL`` seconds (at once again after a full
page), and hands each event to the streams whose filters it matches. N idle streams thus cost
PostgreSQL one read per interval, not N; with no stream it reads nothing.

A stream behind the head (started with ``since``, resumed with an old ``Last-Event-ID``, or
dropped by the feed) reads by itself (:func:`readapi.queries.stream_read`) until it reaches the
head, then joins. The hand-over loses nothing and repeats nothing: a stream joins only at a
position at or after the feed's, and the feed hands a stream only events after its position.

A stream whose buffer is full when the feed has an event for it (its client reads more slowly
than events come) is dropped from the feed: it goes on reading by itself from where its buffer
ends, at its client's pace, and joins again once it is back at the head.

The feed reads only the blocks of the topics its streams follow (all of them when one stream
follows every topic): a stream of a quiet topic beside a busy one costs a read of the quiet
topic's blocks, not of every event stored. A stream of another topic that would join while a
read is under way waits for the next: that read will move every follower past what it did not
read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from typing import Any

from psycopg_pool import AsyncConnectionPool

from pubsub import layout, search, service
from pubsub.backoff import Backoff
from pubsub.settings import Settings
from readapi import metrics, queries

log = logging.getLogger("pubsub.readapi.feed")

# Rows the feed reads at once, and the most a stream's own read scans to find its events: a
# filter that matches little then costs this many rows per read, not a scan to the head.
PAGE = 2000
SCAN = 10_000


class Follower:
    """A stream's side of the feed: its filters, its position, and the events read for it
    that its client has not taken yet (bounded by count and by bytes)."""

    def __init__(self, filters: queries.Filters, position: queries.StreamCursor) -> None:
        self.filters = filters
        # Every event up to here is in the buffer or sent; the next read starts after it.
        self.position = position
        self.buffer: deque[tuple[float, queries.StreamEvent]] = deque()
        self.buffered_bytes = 0
        self.joined = False
        self.changed = asyncio.Event()  # an event arrived, or the feed dropped this follower

    def room(self, settings: Settings) -> tuple[int, int]:
        """How many more events, and bytes, the buffer takes."""
        return (
            settings.stream_buffer - len(self.buffer),
            settings.stream_buffer_bytes - self.buffered_bytes,
        )

    def add(self, event: queries.StreamEvent, at: float) -> None:
        self.buffer.append((at, event))
        self.buffered_bytes += event.size
        self.position = event.at

    def take(self) -> tuple[float, queries.StreamEvent]:
        at, event = self.buffer.popleft()
        self.buffered_bytes -= event.size
        return at, event

    def wants(self, event: queries.StreamEvent) -> bool:
        """Whether ``event`` is after this follower's position and passes its filters (the
        feed looks it up by topic already)."""
        f = self.filters
        return (
            event.at > self.position
            and (f.source is None or f.source == event.source)
            and (f.event_id is None or f.event_id == event.at.event_id)
            and (
                not f.words or search.matches(f.words, event.at.topic, event.source, event.payload)
            )
        )


class Feed:
    """The shared look for one tenant's new events of one read API."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        stop: asyncio.Event,
        tenant: int = layout.TENANT,
    ) -> None:
        self.settings = settings
        self.tenant = tenant
        self.pool = pool
        self.stop = stop
        self.position: queries.StreamCursor | None = None  # None: not running
        self._by_topic: defaultdict[str | None, set[Follower]] = defaultdict(set)
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        # The topics of the read under way, when it reads only some (see join).
        self._reading_only: frozenset[str] | None = None

    def join(self, follower: Follower) -> bool:
        """Hand ``follower`` the events stored after its position from now on; False when the
        feed has read past that position already, or is reading without its topic (the
        follower must read on by itself, and join later)."""
        if self.position is None:
            self.position = follower.position
        elif follower.position < self.position:
            return False
        only = self._reading_only
        if only is not None and follower.filters.topic not in only:
            return False
        self._by_topic[follower.filters.topic].add(follower)
        self._count += 1
        follower.joined = True
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stream feed")
        return True

    def leave(self, follower: Follower) -> None:
        if follower.joined:
            follower.joined = False
            topic = follower.filters.topic
            self._by_topic[topic].discard(follower)
            if not self._by_topic[topic]:
                del self._by_topic[topic]
            self._count -= 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        settings = self.settings
        backoff, failures = Backoff.of(settings), 0
        try:
            while self._count and not self.stop.is_set():
                assert self.position is not None
                topics = (
                    None
                    if None in self._by_topic
                    else frozenset(t for t in self._by_topic if t is not None)
                )
                self._reading_only = topics
                try:
                    async with self.pool.connection() as conn:
                        page = await queries.stream_read(
                            conn,
                            self.position,
                            queries.Filters(
                                tenant=self.tenant,
                                topics=None if topics is None else tuple(sorted(topics)),
                            ),
                            limit=PAGE,
                            max_bytes=settings.stream_buffer_bytes,
                            scan=PAGE,
                        )
                    failures = 0
                except queries.UNAVAILABLE as exc:
                    # The followers keep their clients; reading resumes where it stopped.
                    log.warning("stream feed: database unavailable: %r", exc)
                    await service.stopped_within(self.stop, backoff.delay(failures))
                    failures += 1
                    continue
                finally:
                    self._reading_only = None
                metrics.FEED_READS.inc()
                self._hand_out(page)  # no await between the read and the new position
                if page.caught_up:
                    await service.stopped_within(self.stop, settings.stream_poll_interval)
        except Exception:
            log.exception("stream feed failed; its streams read by themselves")
        finally:
            # Nobody follows, or the service stops, or a fault nobody foresaw: whoever still
            # follows reads on by itself, and the next joiner starts the feed afresh.
            for follower in [f for followers in self._by_topic.values() for f in followers]:
                self.leave(follower)
                follower.changed.set()
            self.position = None
            self._task = None

    def _hand_out(self, page: queries.StreamPage) -> None:
        now = time.monotonic()
        for event in page.events:
            interested = (*self._by_topic.get(None, ()), *self._by_topic.get(event.at.topic, ()))
            for follower in interested:
                if not follower.wants(event):
                    continue
                events, room = follower.room(self.settings)
                if events < 1 or (follower.buffer and room < event.size):
                    # Its client is behind: it reads on by itself from its buffer's end.
                    self.leave(follower)
                    metrics.STREAMS_DROPPED.inc()
                else:
                    follower.add(event, now)
                follower.changed.set()
        for followers in self._by_topic.values():
            for follower in followers:
                # Everything up to the feed's new position that it wanted, it has.
                follower.position = max(follower.position, page.position)
        self.position = page.position
