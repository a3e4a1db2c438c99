"""The read API: ``GET /events`` and ``GET /stats`` over PostgreSQL and the broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from pubsub import access, api, database, health, http, layout, openapi, routes, search, tenants
from pubsub.http import Refusal
from pubsub.settings import Settings
from readapi import histogram, page, queries, stream
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
            # A statement timeout: one query that scans too much must not hold a connection
            # of the pool (of four) for longer than that.
            kwargs={
                **database.connect_kwargs(
                    settings, statement_timeout=settings.read_statement_timeout
                ),
                "autocommit": True,
            },
            timeout=5.0,
            # A database restart leaves dead connections in the pool: check before lending.
            check=self._check,
            open=False,
        )
        self.queues = QueueMonitor(settings)
        self._sweep: asyncio.Task[None] | None = None
        # Tenants by name: an id never changes once given (see pubsub.dbschema).
        self._tenant_ids: dict[str, int] = {tenants.DEFAULT: layout.TENANT}

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            # One dead connection means the database restarted or the link dropped: the other
            # idle ones are dead too. The pool would find them one by one, a second apart and
            # then two and four (its backoff), past a request's timeout; swept now, the request
            # that found this one gets a new connection at its next try, a second later.
            if self._sweep is None or self._sweep.done():
                self._sweep = asyncio.create_task(self.pool.check())
            raise

    async def start(self, stop: asyncio.Event) -> None:
        await self.pool.open(wait=False)
        await self.queues.start(stop)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        await self.pool.close()
        await self.queues.close()

    async def tenant_id(self, request: web.Request, conn: psycopg.AsyncConnection[Any]) -> int:
        """The id of ``request``'s tenant in the tables; -1, which holds nothing, for a
        tenant that has stored nothing yet."""
        name = access.of(request).tenant or tenants.DEFAULT
        known = self._tenant_ids.get(name)
        if known is not None:
            return known
        cur = await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))
        row = await cur.fetchone()
        if row is None:
            return -1
        if len(self._tenant_ids) < _TENANT_IDS:
            self._tenant_ids[name] = int(row[0])
        return int(row[0])

    async def database_ok(self) -> bool:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except queries.UNAVAILABLE:
            return False
        return True

    def unavailable(self, exc: Exception) -> Refusal:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            timeout = self.settings.read_statement_timeout
            log.info("query cancelled after %g s: %r", timeout, exc)
            return Refusal.unavailable(
                f"the query took longer than {timeout:g} s (PUBSUB_READ_STATEMENT_TIMEOUT); "
                "narrow it (topic, since and until) or retry later",
                retry_after=self.settings.retry_after,
            )
        log.warning("database unavailable: %r", exc)
        return Refusal.unavailable(
            "database unavailable; retry later", retry_after=self.settings.retry_after
        )


SOURCES = web.AppKey("sources", Sources)
_NO_DEPTHS: dict[str, int | None] = {"queued_messages": None, "dead_letter_messages": None}
# Tenant ids kept in memory at most (a tenants file declares far fewer).
_TENANT_IDS = 100_000
TITLE = "pubsub read API"


async def get_events(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    settings = sources.settings
    q = routes.params(request, api.EventsQuery)
    after = None
    if q.cursor is not None:
        try:
            after = queries.Cursor.decode(q.cursor[:2048])
        except queries.BadCursor as exc:
            raise Refusal(400, str(exc)) from None
        if after.descending != (q.order == "desc"):
            given = "desc" if after.descending else "asc"
            raise Refusal(400, f"the cursor pages on in order={given}, not order={q.order}")
    limit = settings.events_default_limit if q.limit is None else q.limit
    filters = _filters(q)
    try:
        async with sources.pool.connection() as conn:
            query = queries.EventQuery(
                replace(filters, tenant=await sources.tenant_id(request, conn)),
                q.since,
                q.until,
                after,
                limit,
                max_bytes=settings.events_max_bytes,
                descending=q.order == "desc",
            )
            events, next_cursor = await queries.events_page(
                conn, query, timeout=settings.read_statement_timeout
            )
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    headers = {}
    if next_cursor is not None:
        params = {k: v for k, v in request.query.items() if k != "cursor"}
        params["cursor"] = next_cursor.encode()
        headers["Link"] = f'<{api.EVENTS.path}?{urlencode(params)}>; rel="next"'
    return http.json_response(events, headers=headers)


def _filters(q: api.Filters) -> queries.Filters:
    words = tuple(search.words(q.q)) if q.q else ()
    return queries.Filters(topic=q.topic, source=q.source, event_id=q.event_id, words=words)


async def get_stream(request: web.Request) -> web.StreamResponse:
    q = routes.params(request, api.StreamQuery)
    sources = request.app[SOURCES]
    filters = _filters(q)
    try:
        async with sources.pool.connection() as conn:
            tenant = await sources.tenant_id(request, conn)
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    return await stream.stream_events(
        request,
        pool=sources.pool,
        unavailable=sources.unavailable,
        filters=replace(filters, tenant=tenant),
        since=q.since,
        last_event_id=request.headers.get("Last-Event-ID") or q.last_event_id,
    )


async def get_histogram(request: web.Request) -> web.Response:
    q = routes.params(request, api.HistogramQuery)
    sources = request.app[SOURCES]
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise Refusal(400, "until must be after since")
    filters = _filters(q)
    try:
        async with sources.pool.connection() as conn:
            filters = replace(filters, tenant=await sources.tenant_id(request, conn))
            buckets = await histogram.histogram(
                conn, filters, since=q.since, until=q.until, width=q.interval
            )
    except histogram.BadRange as exc:
        raise Refusal(400, str(exc)) from None
    except OverflowError:
        raise Refusal(400, "the range reaches beyond the years 1 to 9999") from None
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    return http.json_response(buckets.reply())


async def get_stats(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    try:
        async with sources.pool.connection() as conn:
            counts = await queries.counts(
                conn,
                max_topics=sources.settings.stats_max_topics,
                tenant=await sources.tenant_id(request, conn),
            )
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    # The queues hold every tenant's messages: their depths are not one tenant's to see.
    shared = not request.app[access.TENANCY].path
    depths = await sources.queues.depths(share=True) if shared else _NO_DEPTHS
    return http.json_response(
        api.Stats(
            received=counts.received,
            unique_processed=counts.unique_processed,
            duplicate_dropped=counts.duplicate_dropped,
            stored=counts.stored,
            expired=counts.expired,
            topics=counts.topics,
            topics_truncated=counts.topics_truncated,
            topic_count=counts.topic_count,
            uptime=round(time.monotonic() - sources.started, 3),
            queued_messages=depths["queued_messages"],
            dead_letter_messages=depths["dead_letter_messages"],
        )
    )


# What each tenant has stored now, by name.
_STORED = """
SELECT t.name, sum(c.unique_processed - c.expired)::bigint
FROM counters c JOIN tenants t ON t.id = c.tenant GROUP BY t.name
"""


async def get_tenants(request: web.Request) -> web.Response:
    sources = request.app[SOURCES]
    registry = request.app[access.TENANCY].registry
    try:
        async with sources.pool.connection() as conn:
            cur = await conn.execute(_STORED)
            stored = {str(name): int(n) for name, n in await cur.fetchall()}
    except queries.UNAVAILABLE as exc:
        raise sources.unavailable(exc) from None
    tokens: dict[str, dict[str, int]] = {name: {} for name in registry.tenants}
    for grant in registry.grants.values():
        for name in grant.tenants:
            if name in tokens:
                tokens[name][grant.scope] = tokens[name].get(grant.scope, 0) + 1
    entries = []
    for name in sorted(registry.tenants):
        limits = registry.tenants[name]
        retention = limits.retention.total_seconds() if limits.retention else None
        entries.append(
            api.TenantEntry(
                id=name,
                limits=api.TenantLimits(
                    events_per_second=limits.events_per_second,
                    bytes_per_second=limits.bytes_per_second,
                    burst_seconds=limits.burst_seconds,
                    streams=limits.streams,
                    retention_seconds=retention,
                ),
                tokens=tokens[name],
                stored=stored.get(name, 0),
            )
        )
    return http.json_response(entries)


def make_app(sources: Sources, stop: asyncio.Event | None = None) -> web.Application:
    """The read API; ``stop`` ends its live streams (a fresh event when not given)."""
    settings = sources.settings
    app = http.new_app()
    access.guard(
        app, api.READ, access.tenancy(settings), reload_interval=settings.tenants_reload_interval
    )
    app[SOURCES] = sources
    streams = stream.Streams(settings, stop or asyncio.Event(), sources.pool)
    app[stream.STREAMS] = streams

    async def close_feed(_: web.Application) -> None:
        await streams.close()

    app.on_cleanup.append(close_feed)

    async def ready() -> Mapping[str, bool]:
        return {"broker": sources.queues.connected, "database": await sources.database_ok()}

    page.add_page(app, TITLE, health.endpoints(api.READ))
    handlers = {
        api.EVENTS: get_events,
        api.HISTOGRAM: get_histogram,
        api.STREAM: get_stream,
        api.STATS: get_stats,
        api.TENANTS: get_tenants,
    }
    routes.mount(app, api.READ, handlers, settings)
    health.add_health(app, ready, settings)
    openapi.add_docs(app, openapi.document(TITLE, [*api.READ, *api.HEALTH], settings))
    # The gateway answers /openapi.json with this one, so that its /docs shows both services.
    gateway = openapi.document("pubsub-aggregator", api.GATEWAY, settings)
    openapi.add_document(app, "/openapi/gateway.json", gateway)
    return app
