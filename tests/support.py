"""Helpers shared by the tests: ports, polling with a deadline, broker inspection."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import aiohttp
import psycopg

from publisher.load import EventSource, LoadConfig, Report, send_load
from publisher.tail import Message
from publisher.watch import stats_if_up, wait_stored
from pubsub import dbschema, failover, message, topology
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from readapi import queries

T = TypeVar("T")


async def stream_to_head(
    conn: psycopg.AsyncConnection[Any], at: queries.StreamCursor, *, scan: int, limit: int = 11
) -> list[queries.StreamCursor]:
    """The positions of every event the live stream gives after ``at``, read in pages of
    ``limit`` from scans of ``scan`` rows, until it reaches the head (once every transaction
    that committed before the call is behind it, see :func:`horizon_passed`)."""
    await horizon_passed(conn)
    seen: list[queries.StreamCursor] = []
    for _ in range(10_000):
        page = await queries.stream_read(
            conn, at, queries.Filters(), limit=limit, max_bytes=1 << 20, scan=scan
        )
        seen += [e.at for e in page.events]
        at = page.position
        if page.caught_up:
            return seen
    raise AssertionError("the stream did not catch up")


async def horizon_passed(conn: psycopg.AsyncConnection[Any]) -> None:
    """Wait until the live stream's horizon (the oldest transaction still running, in the
    whole database cluster) is past every transaction committed so far: until then, the
    stream is caught up without the events a transaction after that one stored. Another
    session's long transaction (a bench's fill, an ANALYZE) holds the horizon back."""
    # The first transaction id not yet given out, taken without one: a transaction of the
    # caller's that this gave an id to would hold the horizon back itself.
    cur = await conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
    mark = int((await cur.fetchone() or ("0",))[0])

    async def horizon() -> int:
        cur = await conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        return int((await cur.fetchone() or ("0",))[0])

    await eventually(horizon, lambda xmin: xmin >= mark, what="the stream's horizon")


async def db_connection(settings: Settings) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """An autocommit connection to ``settings``' database, in its schema."""
    return await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, **connect_kwargs(settings)
    )


def run_async(coro: Awaitable[T]) -> T:
    async def _run() -> T:
        return await coro

    return asyncio.run(_run())


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` holds for its result; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


async def queue_depth(settings: Settings, name: str) -> int:
    async with await failover.connect_once(settings.amqp_urls) as conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)


async def delete_topology(settings: Settings) -> None:
    async with await failover.connect_once(settings.amqp_urls) as conn:
        await topology.delete(await conn.channel(), settings)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status} {await resp.text()}"
        return await resp.json()


async def take(
    stream: AsyncIterator[Message],
    n: int | None = None,
    *,
    until: Callable[[Message], bool] | None = None,
    deadline: float = 30.0,
) -> list[Message]:
    """The next ``n`` events of a live stream, or those up to the one ``until`` holds for;
    every message must be an event, and they must come within ``deadline`` seconds."""
    out: list[Message] = []
    async with asyncio.timeout(deadline):
        async for msg in stream:
            assert msg.event == "message", msg
            out.append(msg)
            if len(out) == n or (until is not None and until(msg)):
                break
    return out


def event(topic: str, event_id: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2025-10-21T10:00:00Z",
        "source": "tests",
        "payload": {"msg": f"event {event_id}"},
    }
    body.update(over)
    return body


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    data: Any,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any, dict[str, str]]:
    import orjson

    body = raw if raw is not None else orjson.dumps(data)
    async with session.post(
        f"{url}/publish", data=body, headers={"Content-Type": content_type}
    ) as resp:
        text = await resp.read()
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = text.decode(errors="replace")
        return resp.status, parsed, dict(resp.headers)


async def stats(session: aiohttp.ClientSession, read_url: str) -> dict[str, Any]:
    result: dict[str, Any] = await get_json(session, f"{read_url}/stats")
    return result


async def stats_when_up(
    session: aiohttp.ClientSession, read_url: str, *, timeout: float = 60.0
) -> dict[str, Any]:
    """``/stats``, waiting out the moments the read API cannot answer."""
    result = await eventually(
        lambda: stats_if_up(session, read_url),
        lambda s: s is not None,
        timeout=timeout,
        interval=0.1,
        what="/stats answering",
    )
    assert result is not None
    return result


async def settled(
    session: aiohttp.ClientSession, read_url: str, received: int, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until ``received`` reaches the given total and the queue is empty."""
    return await wait_stored(session, read_url, received, timeout=timeout)


async def stream_through(
    session: aiohttp.ClientSession,
    cfg: LoadConfig,
    fault: Callable[[], Awaitable[None]],
    *,
    start_after: int,
    runs_on: float = 0.5,
) -> tuple[EventSource, Report]:
    """Stream ``cfg.events`` events or more; once ``start_after`` are accepted, run ``fault()``.
    The stream goes on for ``runs_on`` seconds after the fault ended, so that recovery is
    exercised by live traffic."""
    source, report = EventSource(cfg), Report()
    ended = 0.0

    def done() -> bool:
        return source.made >= cfg.events and 0 < ended < time.monotonic() - runs_on

    sending = asyncio.create_task(send_load(session, cfg, source, report, until=done))

    async def sent() -> int:
        return report.sent

    await eventually(sent, lambda n: n >= start_after, timeout=120, interval=0.01, what="stream")
    await fault()
    ended = time.monotonic()
    await sending
    return source, report


async def publish_raw(
    settings: Settings, exchange: str, bodies: list[bytes], *, content_encoding: str | None = None
) -> None:
    """Put messages on the broker the way ingest would, bypassing ingest's validation."""
    async with await failover.connect_once(settings.amqp_urls) as conn:
        target = await (await conn.channel()).get_exchange(exchange)
        for body in bodies:
            await target.publish(
                aio_pika.Message(
                    body,
                    content_encoding=content_encoding,
                    message_id=uuid.uuid4().hex,
                    headers={message.RECEIVED_AT: "2025-01-01T00:00:00+00:00"},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                topology.ROUTING_KEY,
            )


def grafana_sql(text: str, *, topic: str, start: str, end: str) -> str:
    """A dashboard's SQL with Grafana's PostgreSQL macros and ``$topic`` expanded as Grafana
    expands them, for a time range from ``start`` to ``end`` (RFC 3339)."""
    text = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", text)
    text = re.sub(
        r"\$__timeGroupAlias\((\w+), '1m'\)",
        r'floor(extract(epoch from \1)/60)*60 AS "time"',
        text,
    )
    quoted = "'" + topic.replace("'", "''") + "'"
    text = text.replace("${topic:sqlstring}", quoted).replace("$topic", topic)
    if "$" in text:
        raise ValueError(f"a Grafana macro left unexpanded: {text}")
    return text


def fuzzing(examples: int) -> Callable[[T], T]:
    """Hypothesis settings for the fuzz tests against running services: ``examples`` inputs,
    the same ones every run (CI must not fail by chance), no deadline per example."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def stored_count(db: psycopg.Connection[Any], topic: str) -> int:
    """Rows stored under ``topic``."""
    row = db.execute("SELECT count(*) FROM events WHERE topic = %s", (topic,)).fetchone()
    return int(row[0]) if row else 0


def assert_volume_counts_the_events(c: psycopg.Connection[tuple[object, ...]]) -> None:
    """The per-minute rollup holds exactly what the events table holds."""
    minute = dbschema.MINUTE.format(column="ts")
    by_topic = f"SELECT topic, {minute}, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2"
    rolled = (
        "SELECT topic, minute, sum(n)::bigint FROM volume GROUP BY 1, 2 HAVING sum(n) <> 0"
        " ORDER BY 1, 2"
    )
    assert c.execute(rolled).fetchall() == c.execute(by_topic).fetchall()
    in_all = f"SELECT {minute}, count(*) FROM events GROUP BY 1 ORDER BY 1"
    total = (
        "SELECT minute, sum(n)::bigint FROM volume_total GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1"
    )
    assert c.execute(total).fetchall() == c.execute(in_all).fetchall()
    assert c.execute("SELECT count(*) FROM volume_total").fetchone() != (0,)
