"""The read API: ``GET /events`` and ``GET /stats`` over PostgreSQL and the broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from pubsub import database, http, openapi
from pubsub.http import Refusal
from pubsub.settings import Settings
from readapi import openapi as documents
from readapi import page, queries, stream
from readapi.queues import QueueMonitor

log = logging.getLogger("pubsub.readapi.app")


class Sources:
    """What the read API reads from: a PostgreSQL pool, and the broker for queue depths."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.reads_from,
            min_size=1,
            max_size=settings.db_pool_size,
            # Autocommit: each read is one statement, so one snapshot, and needs no BEGIN
            # before it nor ROLLBACK when the pool takes the connection back.
            kwargs={**database.connect_kwargs(settings), "autocommit": True},
            timeout=5.0,
            # A database restart leaves dead connections in the pool: check before lending.
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        self.queues = QueueMonitor(settings)

    async def start(self, stop: asyncio.Event) -> None:
        await self.pool.open(wait=False)
        await self.queues.start(stop)

    async def close(self) -> None:
        await self.pool.close()
        await self.queues.close()

    async def database_ok(self) -> bool:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except queries.UNAVAILABLE:
            return False
        return True

    def unavailable(self, exc: Exception) -> Refusal:
        log.warning("database unavailable: %r", exc)
        return Refusal.unavailable(
            "database unavailable; retry later", retry_after=self.settings.retry_after
        )


SOURCES = web.AppKey("sources", Sources)


def _time_param(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise Refusal(400, f"{name} must be an RFC 3339 time, e.g. 2025-10-21T10:00:00Z") from None
    if value.tzinfo is None:
        raise Refusal(400, f"{name} must include a UTC offset, e.g. 2025-10-21T10:00:00Z")
    return value


def _known(query: Mapping[str, str], allowed: set[str]) -> None:
    unknown = set(query) - allowed
    if unknown:
        raise Refusal(
            400,
            f"unknown query parameter(s): {', '.join(sorted(unknown)[:5])};"
            f" known: {', '.join(sorted(allowed))}",
        )


# Exact matches, on /events and on the stream alike.
_FILTERS = ("topic", "source", "event_id")


def _filters(query: Mapping[str, str]) -> queries.Filters:
    """The filters a query names; empty means any."""
    values: dict[str, str | None] = {}
    for name in _FILTERS:
        value = query.get(name) or None
        if value is not None and (len(value) > 255 or "\x00" in value):
            raise Refusal(400, f"{name} must be at most 255 characters without NUL")
        values[name] = value
    return queries.Filters(**values)


async def get_events(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    settings = sources.settings
    q = request.query
    _known(q, {*_FILTERS, "since", "until", "limit", "cursor"})
    filters = _filters(q)
    try:
        limit = int(q.get("limit", settings.events_default_limit))
    except ValueError:
        raise Refusal(400, "limit must be an integer") from None
    if not 1 <= limit <= settings.events_max_limit:
        raise Refusal(400, f"limit must be between 1 and {settings.events_max_limit}")
    after = None
    if q.get("cursor"):
        try:
            after = queries.Cursor.decode(q["cursor"][:2048])
        except queries.BadCursor as exc:
            raise Refusal(400, str(exc)) from None
    query = queries.EventQuery(
        filters, _time_param(q, "since"), _time_param(q, "until"), after, limit
    )
    try:
        async with sources.pool.connection() as conn:
            events, next_cursor = await queries.events_page(conn, query)
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    headers = {}
    if next_cursor is not None:
        params = {k: v for k, v in q.items() if k != "cursor"}
        params["cursor"] = next_cursor.encode()
        headers["Link"] = f'</events?{urlencode(params)}>; rel="next"'
    return http.json_response(events, headers=headers)


async def get_stream(request: web.Request) -> web.StreamResponse:
    q = request.query
    _known(q, {*_FILTERS, "since", "last_event_id"})
    sources = request.app[SOURCES]
    return await stream.stream_events(
        request,
        pool=sources.pool,
        unavailable=sources.unavailable,
        filters=_filters(q),
        since=_time_param(q, "since"),
    )


async def get_stats(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    try:
        async with sources.pool.connection() as conn:
            counts = await queries.counts(conn, max_topics=sources.settings.stats_max_topics)
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    depths = await sources.queues.depths(share=True)
    return http.json_response(
        {
            "received": counts.received,
            "unique_processed": counts.unique_processed,
            "duplicate_dropped": counts.duplicate_dropped,
            "stored": counts.stored,
            "expired": counts.expired,
            "topics": counts.topics,
            "topics_truncated": counts.topics_truncated,
            "topic_count": counts.topic_count,
            "uptime": round(time.monotonic() - sources.started, 3),
            **depths,
        }
    )


def make_app(sources: Sources, stop: asyncio.Event | None = None) -> web.Application:
    """The read API; ``stop`` ends its live streams (a fresh event when not given)."""
    app = http.new_app(
        token=sources.settings.read_token,
        protected=frozenset({"/events", "/events/stream", "/stats"}),
    )
    app[SOURCES] = sources
    app[stream.STREAMS] = stream.Streams(sources.settings, stop or asyncio.Event())

    async def ready() -> Mapping[str, bool]:
        return {"broker": sources.queues.connected, "database": await sources.database_ok()}

    page.add_page(app, "pubsub read API", ["GET /events", "GET /events/stream", "GET /stats"])
    app.router.add_get("/events", get_events)
    app.router.add_get("/events/stream", get_stream)
    app.router.add_get("/stats", get_stats)
    http.add_health(app, ready)
    max_limit = sources.settings.events_max_limit
    openapi.add_docs(app, documents.document(max_limit=max_limit))
    # The gateway answers /openapi.json with this one, so that its /docs shows both services.
    gateway = documents.gateway_document(max_limit=max_limit)
    openapi.add_document(app, "/openapi/gateway.json", gateway)
    return app
