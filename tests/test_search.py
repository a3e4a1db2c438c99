"""``q=`` (search) on ``/events`` and on the stream, and ``GET /events/histogram``, against the
real services."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from readapi import histogram as histogram_module
from stack.supervisor import Supervisor
from tests.support import event, post_json, settled, stats, take
from tests.test_stream import opened


async def publish(
    http: aiohttp.ClientSession, stack: Supervisor, events: list[dict[str, Any]]
) -> None:
    before = await stats(http, stack.read_url)
    status, body, _ = await post_json(http, stack.ingest_url, events)
    assert status == 202, body
    await settled(http, stack.read_url, before["received"] + len(events))


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, str | None]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(), resp.headers.get("Link")


async def found(http: aiohttp.ClientSession, stack: Supervisor, query: str) -> list[str]:
    """The event ids of every page of ``/events?<query>``."""
    ids: list[str] = []
    url: str | None = f"{stack.read_url}/events?{query}"
    while url is not None:
        status, page, link = await get(http, url)
        assert status == 200, page
        ids += [e["event_id"] for e in page]
        match = re.search(r"<([^>]+)>", link or "")
        url = f"{stack.read_url}{match[1]}" if match else None
    return ids


@pytest.fixture
async def logs(stack: Supervisor, http: aiohttp.ClientSession) -> str:
    """A topic of log-like events, one per second from 10:00:00."""
    topic = f"search-{uuid.uuid4().hex[:8]}"
    messages = [
        ("a", "web-1", {"msg": "GET /api/orders 200", "ms": 12}),
        ("b", "web-1", {"msg": "upstream Timeout after 30s", "order": "ORD-7731"}),
        ("c", "web-2", {"msg": "connection reset by peer", "ip": "10.0.0.7"}),
        ("d", "db-1", {"msg": "TIMEOUT waiting for lock", "detail": {"table": "orders"}}),
        ("e", "web-2", {"msg": "disk 95% full", "path": "/var/log_x"}),
        ("f", "web-1", {"msg": 'said "hello"', "n": 1}),
        ("g", "web-1", {"msg": "connection refused; reset later"}),
    ]
    await publish(
        http,
        stack,
        [
            event(topic, i, source=src, payload=p, timestamp=f"2025-10-21T10:00:0{n}Z")
            for n, (i, src, p) in enumerate(messages)
        ],
    )
    return topic


@pytest.mark.parametrize(
    ("q", "ids"),
    [
        ("timeout", ["b", "d"]),  # any case
        ("TimeOut orders", ["d"]),  # every word, anywhere in the payload (keys and values)
        ('"connection reset"', ["c"]),  # a phrase
        ("connection reset", ["c", "g"]),  # two words
        ("ORD-7731", ["b"]),
        ("10.0.0.7", ["c"]),
        ("db-1", ["d"]),  # the source
        ("95%", ["e"]),  # LIKE's wildcards are literal
        ("log_x", ["e"]),
        ("9_%", []),
        ('"said \\"hello\\""', []),  # a quote inside a phrase is not one
        ('"hello"', ["f"]),
        ("nothing-like-this", []),
    ],
)
async def test_q_finds_words_in_the_topic_source_and_payload(
    stack: Supervisor, http: aiohttp.ClientSession, logs: str, q: str, ids: list[str]
) -> None:
    assert await found(http, stack, f"topic={logs}&q={quote(q)}") == ids


async def test_the_topic_is_searched_and_q_pages_with_the_other_filters(
    stack: Supervisor, http: aiohttp.ClientSession, logs: str
) -> None:
    assert await found(http, stack, f"q={logs}&limit=2") == list("abcdefg")
    assert await found(http, stack, f"q={logs}+web&limit=1&order=desc") == list("gfecba")
    window = "since=2025-10-21T10:00:02Z&until=2025-10-21T10:00:06Z"
    assert await found(http, stack, f"topic={logs}&q=connection&{window}") == ["c"]
    assert await found(http, stack, f"topic={logs}&q=web-1&source=web-1&limit=1") == list("abfg")
    assert await found(http, stack, f"topic={logs}&q=+++") == list("abcdefg")  # no words: all


async def test_a_stream_applies_q_to_what_it_reads_and_to_what_arrives_live(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"search-live-{uuid.uuid4().hex[:8]}"
    started = datetime.now(UTC).isoformat()
    await publish(
        http,
        stack,
        [
            event(topic, "a-old-miss", payload={"m": "fine"}),
            event(topic, "old-hit", payload={"m": "a NEEDLE here"}),
        ],
    )
    # From the past: the stream's own reads filter in SQL; then the shared feed, in Python.
    async with opened(http, stack.read_url, topic=topic, q="needle", since=started) as stream:
        first = await take(stream, 1)
        assert [orjson.loads(m.data)["event_id"] for m in first] == ["old-hit"]
        await publish(
            http,
            stack,
            [
                event(topic, "a-new-miss", payload={"m": "hay"}),
                event(topic, "new-hit", payload={"m": "needle again"}),
                event(topic, "new-hit-2", source="needle-host", payload={"m": "x"}),
            ],
        )
        live = await take(stream, 2)
        assert sorted(orjson.loads(m.data)["event_id"] for m in live) == ["new-hit", "new-hit-2"]


# --- the histogram ----------------------------------------------------------------------------


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def volume(stack: Supervisor, http: aiohttp.ClientSession) -> tuple[str, datetime]:
    """A topic with events at known times in a day of its own: 3 in minute 0, none in minute
    1, 5 in minute 2 (one of them with the word "boom"), 1 in minute 61."""
    topic = f"hist-{uuid.uuid4().hex[:8]}"
    day = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
    offsets = [0, 10, 59, 120, 121, 130, 150, 179, 61 * 60 + 5]
    events = [
        event(
            topic,
            f"v{i}",
            timestamp=_iso(day + timedelta(seconds=s)),
            payload={"m": "boom" if i == 5 else "ok"},
        )
        for i, s in enumerate(offsets)
    ]
    await publish(http, stack, events)
    return topic, day


async def histogram(http: aiohttp.ClientSession, stack: Supervisor, query: str) -> dict[str, Any]:
    status, body, _ = await get(http, f"{stack.read_url}/events/histogram?{query}")
    assert status == 200, body
    return dict(body)


async def test_the_histogram_counts_per_bucket_from_the_rollup_and_from_the_events(
    stack: Supervisor, http: aiohttp.ClientSession, volume: tuple[str, datetime]
) -> None:
    topic, day = volume
    window = f"since={_iso(day)}&until={_iso(day + timedelta(minutes=5))}"
    by_minute = await histogram(http, stack, f"topic={topic}&{window}&interval=1m")
    assert by_minute["interval"] == 60 and by_minute["total"] == 8
    assert [b["count"] for b in by_minute["buckets"]] == [3, 0, 5, 0, 0]
    assert by_minute["buckets"][2]["start"] == _iso(day + timedelta(minutes=2))
    # The same range counted from the events (30-second buckets, a source, a search).
    halves = await histogram(http, stack, f"topic={topic}&{window}&interval=30")
    assert [b["count"] for b in halves["buckets"]] == [2, 1, 0, 0, 3, 2, 0, 0, 0, 0]
    sourced = await histogram(http, stack, f"topic={topic}&source=tests&{window}&interval=1m")
    assert [b["count"] for b in sourced["buckets"]] == [3, 0, 5, 0, 0]
    searched = await histogram(http, stack, f"topic={topic}&q=boom&{window}&interval=1m")
    assert [b["count"] for b in searched["buckets"]] == [0, 0, 1, 0, 0]
    # Every topic: the day is this test's own.
    in_all = await histogram(http, stack, f"{window}&interval=1m")
    assert [b["count"] for b in in_all["buckets"]] == [3, 0, 5, 0, 0]


async def test_the_histogram_picks_round_buckets_for_the_range(
    stack: Supervisor, http: aiohttp.ClientSession, volume: tuple[str, datetime]
) -> None:
    topic, day = volume
    # No range: the topic's first minute to the end of its last one (62 minutes): by minute.
    whole = await histogram(http, stack, f"topic={topic}")
    assert whole["interval"] == 60 and whole["since"] == _iso(day)
    assert whole["until"] == _iso(day + timedelta(minutes=62))
    assert len(whole["buckets"]) == 62 and whole["total"] == 9
    assert whole["buckets"][-1]["count"] == 1
    # A day: 15-minute buckets (96), aligned; a range not on a boundary is widened.
    since = day + timedelta(seconds=7)
    a_day = await histogram(
        http, stack, f"topic={topic}&since={_iso(since)}&until={_iso(day + timedelta(days=1))}"
    )
    assert a_day["interval"] == 900 and len(a_day["buckets"]) == 96
    assert a_day["since"] == _iso(day)
    assert [b["count"] for b in a_day["buckets"][:5]] == [8, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", "until must be after since"),
        ("since=2025-01-01T00:00:00Z&until=2025-01-02T00:00:00Z&interval=1", "at most 1000"),
        ("interval=soon", "interval must be a number of seconds or a duration"),
        ("interval=0", "interval must be between 1 second and 3660 days"),
        ("interval=999999999d", "interval must be between 1 second and 3660 days"),
        ("since=0001-01-01T00:10:00Z&interval=3600d", "beyond the years 1 to 9999"),
        ("until=0001-01-01T00:10:00Z", "beyond the years 1 to 9999"),
        ("q=" + "x" * 300, "q must be at most 256 characters"),
        ("bucket=1", "unknown query parameter(s): bucket"),
    ],
)
async def test_a_histogram_that_cannot_be_cut_is_400_with_the_reason(
    stack: Supervisor, http: aiohttp.ClientSession, query: str, words: str
) -> None:
    status, body, _ = await get(http, f"{stack.read_url}/events/histogram?{query}")
    assert status == 400 and words in body["error"], body


@pytest.mark.parametrize(
    ("span", "width"),
    [(50, 1), (121, 2), (3600, 30), (3660, 60), (86400, 900), (30 * 86400, 21600)],
)
def test_the_automatic_width_is_round_and_gives_at_most_120_buckets(span: int, width: int) -> None:
    assert histogram_module.width_for(span) == width
    assert span / width <= histogram_module.TARGET


def test_a_range_is_widened_to_whole_buckets() -> None:
    since = datetime(2025, 10, 21, 10, 7, 30, tzinfo=UTC)
    start, width, count = histogram_module.align(since, since + timedelta(hours=2), None)
    assert (start, width, count) == (datetime(2025, 10, 21, 10, 7, tzinfo=UTC), 60, 121)


async def test_a_minute_the_sweep_took_below_zero_counts_as_none(
    stack: Supervisor, http: aiohttp.ClientSession, volume: tuple[str, datetime], db: Any
) -> None:
    """Events stored by consumers older than schema 5 were never counted in the rollup; when
    the sweep removes them it subtracts them all the same. Such a minute shows 0, and does
    not take its neighbours' counts down with it."""
    topic, day = volume
    minute = day + timedelta(minutes=1)
    db.execute(
        "INSERT INTO volume (topic, minute, shard, n) VALUES (%s, %s, -1, -4)", (topic, minute)
    )
    db.execute("INSERT INTO volume_total (minute, shard, n) VALUES (%s, -1, -4)", (minute,))
    window = f"since={_iso(day)}&until={_iso(day + timedelta(minutes=5))}"
    for scope in (f"topic={topic}&", ""):
        by_minute = await histogram(http, stack, f"{scope}{window}&interval=1m")
        assert [b["count"] for b in by_minute["buckets"]] == [3, 0, 5, 0, 0], scope
        by_five = await histogram(http, stack, f"{scope}{window}&interval=5m")
        assert [b["count"] for b in by_five["buckets"]] == [8], scope
