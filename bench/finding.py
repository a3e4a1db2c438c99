"""Page, lookup, search and histogram latency on the big table of ``bench.storage``, and what
each stored event costs in bytes.

After the fill, :data:`NEEDLES` events carrying one rare word are planted at random times, and
the per-minute rollup is counted from the table as the upgrade to schema 5 counts it (its
duration per million rows is the upgrade's). Each request below is then sent ``requests``
times in a row on one connection, first without a search index (``PUBSUB_SEARCH=scan``), then
again after the trigram index was built (``PUBSUB_SEARCH=trigram``): its build time and bytes
per event are printed too. Before them, the same for the newest page in ``order=desc``, a page
half-way through the range by its cursor, and one event by topic and id.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import psycopg
import yarl

from pubsub import database, dbschema, search
from pubsub.settings import Settings

NEEDLES = 20
# p99 goals, ms (issue 22): a rare word within an hour and over everything, a common word's
# first page, the histogram over a day and, with a search, over an hour.
GOALS_MS = {
    "rare word, 1 hour": 200.0,
    "rare word, all events": 1000.0,
    "common word, first page": 100.0,
    "histogram, 24 h": 100.0,
    "histogram, 24 h, one topic": 100.0,
    "histogram with q, 1 hour": 1000.0,
    # Issue 31: pages and a lookup by id, on blocks.
    "newest page, order=desc": 15.0,
    "a page deep in the range, by cursor": 15.0,
    "one event by topic and id": 5.0,
}

_PLANT = """
INSERT INTO events (topic, event_id, ts, source, payload, received_at)
SELECT %(prefix)s || (g %% %(topics)s), 'needle-' || g, (%(ts)s::timestamptz[])[g], 'bench',
       json_build_object('n', g, 'msg', 'found ' || %(word)s || ' here', 'pad', repeat('x', 100)),
       now()
FROM generate_series(1, %(n)s) AS g
"""
# What every stored event costs: the table with its indexes and TOAST, and every table that
# grows with the events.
_BYTES = """
SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind = 'r'
          AND (c.relname IN ('keys', 'ledger', 'topics', 'volume', 'volume_total')
               OR c.relname IN (SELECT name FROM partitions))),
       (SELECT sum(n) FROM blocks)
"""


@dataclass
class Timing:
    name: str
    mechanism: str
    path: str
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int

    @property
    def goal_met(self) -> bool:
        return self.failures == 0 and self.p99_ms < GOALS_MS[self.name]


@dataclass
class Finding:
    timings: list[Timing]
    volume_seconds: float
    rows: int
    index_seconds: float
    bytes_per_event: float
    index_bytes_per_event: float


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    return psycopg.connect(
        settings.database_url, autocommit=True, **database.connect_kwargs(settings)
    )


def plant(settings: Settings, *, topics: int, prefix: str, word: str) -> list[datetime]:
    """:data:`NEEDLES` events with ``word``, at random times of the last 30 days."""
    now = datetime.now(UTC)
    times = sorted(now - timedelta(seconds=random.uniform(0, 30 * 86400)) for _ in range(NEEDLES))
    with _connect(settings) as conn:
        conn.execute(
            _PLANT, {"prefix": prefix, "topics": topics, "ts": times, "word": word, "n": NEEDLES}
        )
    return times


def count_volume(settings: Settings) -> tuple[float, int]:
    """The rollup counted from the events table, as the upgrade to version 5 does: seconds,
    and the rows counted."""
    with _connect(settings) as conn:
        conn.execute("TRUNCATE volume, volume_total")
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(dbschema.FILL_VOLUME)
        seconds = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE volume, volume_total")
        row = conn.execute("SELECT sum(n) FROM blocks").fetchone()
    return seconds, int(row[0]) if row else 0


def stored_bytes(settings: Settings) -> tuple[int, int]:
    with _connect(settings) as conn:
        row = conn.execute(_BYTES).fetchone()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


async def build_index(settings: Settings) -> tuple[float, int]:
    """The trigram index: seconds to build it, and its bytes."""
    started = time.perf_counter()
    async with await database.connect(settings, autocommit=True) as conn:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await search.build(conn, settings.db_schema)
        seconds = time.perf_counter() - started
        # A partitioned index has no bytes of its own: its partitions' indexes hold them.
        cur = await conn.execute(
            "SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(%s::regclass)",
            (search.INDEX,),
        )
        row = await cur.fetchone()
        await conn.execute("ANALYZE blocks")
    return seconds, int(str(row[0] or 0)) if row else 0


async def timed(
    http: aiohttp.ClientSession, url: str, *, requests: int, budget: float
) -> tuple[float, float, int, int]:
    """p50 and p99 in ms of ``requests`` GETs in a row (fewer if ``budget`` seconds run out),
    how many were sent, and how many were not answered 200."""
    times: list[float] = []
    failures = 0
    deadline = time.monotonic() + budget
    while len(times) < requests and (len(times) < 3 or time.monotonic() < deadline):
        started = time.perf_counter()
        async with http.get(url) as resp:
            await resp.read()
            failures += resp.status != 200
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return times[len(times) // 2], p99, len(times), failures


async def measure(
    http: aiohttp.ClientSession,
    settings: Settings,
    read_url: str,
    *,
    topics: int,
    prefix: str,
    requests: int,
    budget: float,
) -> Finding:
    word = f"needle{uuid.uuid4().hex[:8]}"
    times = plant(settings, topics=topics, prefix=prefix, word=word)
    volume_seconds, rows = count_volume(settings)
    total, events = stored_bytes(settings)
    now = datetime.now(UTC)
    mid = times[len(times) // 2]
    hour = {"since": (mid - timedelta(minutes=30)).isoformat(),
            "until": (mid + timedelta(minutes=30)).isoformat()}  # fmt: skip
    day = {"since": (now - timedelta(days=1)).isoformat(), "until": now.isoformat()}
    searches: dict[str, tuple[str, dict[str, Any]]] = {
        "rare word, 1 hour": ("/events", {"q": word, **hour, "limit": 100}),
        "rare word, all events": ("/events", {"q": word, "limit": 100}),
        "common word, first page": ("/events", {"q": "event", "limit": 100}),
        "histogram with q, 1 hour": ("/events/histogram", {"q": word, **hour}),
    }
    rollup: dict[str, tuple[str, dict[str, Any]]] = {
        "histogram, 24 h": ("/events/histogram", day),
        "histogram, 24 h, one topic": ("/events/histogram", {"topic": f"{prefix}7", **day}),
    }
    timings: list[Timing] = []

    async def run(mechanism: str, requests_: dict[str, tuple[str, dict[str, Any]]]) -> None:
        for name, (path, params) in requests_.items():
            url = f"{read_url}{path}?{urlencode(params)}"
            p50, p99, n, failures = await timed(http, url, requests=requests, budget=budget)
            shown = f"{path}?" + ", ".join(f"{k}" for k in params)
            timings.append(Timing(name, mechanism, shown, p50, p99, n, failures))

    # The bench's fill names event g of topic ``prefix + g % topics`` md5(g).
    g = 4_242_424
    lookup = {
        "topic": f"{prefix}{g % topics}",
        "event_id": hashlib.md5(str(g).encode()).hexdigest(),
    }
    since = (now - timedelta(days=15)).isoformat()
    async with http.get(f"{read_url}/events", params={"limit": 100, "since": since}) as resp:
        link = resp.links.get("next")
        deep = link.get("url") if link is not None else None
    pages: dict[str, tuple[str, dict[str, Any]]] = {
        "newest page, order=desc": ("/events", {"limit": 100, "order": "desc"}),
        "one event by topic and id": ("/events", lookup),
    }
    if deep is not None:
        pages["a page deep in the range, by cursor"] = (
            "/events", dict(yarl.URL(str(deep)).query)
        )  # fmt: skip
    await run("blocks", pages)
    await run("rollup", rollup)
    await run("scan", searches)
    index_seconds, index_bytes = await build_index(settings)
    await run("trigram", searches)
    return Finding(
        timings,
        volume_seconds,
        rows,
        index_seconds,
        total / events if events else 0.0,
        index_bytes / events if events else 0.0,
    )


def report(finding: Finding, out: Callable[..., None]) -> list[str]:
    """Print the figures; return the goals not met."""
    problems: list[str] = []
    out("| request | search | p50 ms | p99 ms | requests | goal (p99) |")
    out("| --- | --- | --- | --- | --- | --- |")
    for t in finding.timings:
        goal = GOALS_MS[t.name]
        verdict = "met" if t.goal_met else "NOT MET"
        failed = f" ({t.failures} not 200)" if t.failures else ""
        out(
            f"| {t.name}: `{t.path}` | {t.mechanism} | {t.p50_ms:.1f} | {t.p99_ms:.1f} | "
            f"{t.requests}{failed} | < {goal:g} ms: {verdict} |"
        )
        if not t.goal_met and t.mechanism != "scan":
            problems.append(f"{t.name} ({t.mechanism}): p99 {t.p99_ms:.1f} ms")
    per_million = finding.volume_seconds / max(finding.rows / 1e6, 1e-9)
    out()
    out(
        f"the per-minute rollup counted from {finding.rows:,} events (the upgrade to schema 5): "
        f"{finding.volume_seconds:.1f} s, {per_million:.2f} s per million events"
    )
    out(
        f"bytes per stored event (events with its indexes and TOAST, topics, volume): "
        f"{finding.bytes_per_event:.0f} without the search index; the trigram index adds "
        f"{finding.index_bytes_per_event:.0f} and took {finding.index_seconds:.0f} s to build"
    )
    return problems
