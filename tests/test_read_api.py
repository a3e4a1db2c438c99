"""GET /events: filters, order, keyset pagination, and refusal of bad parameters."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from stack.supervisor import Supervisor
from tests.support import event, post_json, settled, stats


@pytest.fixture
async def topic(stack: Supervisor, http: aiohttp.ClientSession) -> str:
    """A topic with 25 events: timestamps 10:00:00..10:00:12, two events per second."""
    name = f"page-{uuid.uuid4().hex[:8]}"
    batch = [
        event(name, f"e{i:02d}", timestamp=f"2025-10-21T10:00:{i // 2:02d}Z") for i in range(25)
    ]
    batch.reverse()
    before = await stats(http, stack.read_url)
    status, _, _ = await post_json(http, stack.ingest_url, batch)
    assert status == 202
    await settled(http, stack.read_url, before["received"] + 25)
    return name


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, str | None]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(), resp.headers.get("Link")


async def test_pages_follow_link_headers_in_timestamp_order(
    stack: Supervisor, http: aiohttp.ClientSession, topic: str
) -> None:
    url: str | None = f"{stack.read_url}/events?topic={topic}&limit=10"
    seen: list[str] = []
    pages = 0
    while url:
        status, page, link = await fetch(http, url)
        assert status == 200
        assert len(page) <= 10
        seen += [e["event_id"] for e in page]
        pages += 1
        url = None
        if link:
            match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert match, link
            url = stack.read_url + match.group(1)
    assert pages == 3
    # Timestamps tie in pairs; event_id breaks the ties, so the order is total and stable.
    assert seen == [f"e{i:02d}" for i in range(25)]


async def pages(http: aiohttp.ClientSession, base: str, url: str) -> list[list[dict[str, Any]]]:
    """Every page from ``url`` on, following the ``Link: next`` headers."""
    out: list[list[dict[str, Any]]] = []
    next_url: str | None = url
    while next_url:
        status, page, link = await fetch(http, next_url)
        assert status == 200, page
        out.append(page)
        match = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        next_url = base + match.group(1) if match else None
    return out


@pytest.mark.parametrize("by_topic", [True, False])
async def test_newest_first_pages_are_the_oldest_first_order_reversed(
    stack: Supervisor, http: aiohttp.ClientSession, topic: str, by_topic: bool
) -> None:
    # Across topics: a time range that holds this topic's events and other tests' alike.
    where = f"topic={topic}" if by_topic else (
        "since=2025-10-21T10:00:00Z&until=2025-10-21T10:00:13Z"
    )  # fmt: skip
    base = stack.read_url
    newest = await pages(http, base, f"{base}/events?{where}&limit=4&order=desc")
    oldest = await pages(http, base, f"{base}/events?{where}&limit=4")

    def key(e: dict[str, Any]) -> tuple[datetime, str, str]:
        return datetime.fromisoformat(e["timestamp"]), e["topic"], e["event_id"]

    keys = [key(e) for p in newest for e in p]
    assert keys == sorted(keys, reverse=True)
    assert keys == [key(e) for p in oldest for e in p][::-1]
    if by_topic:
        assert [len(p) for p in newest] == [4, 4, 4, 4, 4, 4, 1]
        assert keys[0][2] == "e24" and keys[-1][2] == "e00"


async def test_a_cursor_pages_on_only_in_its_own_order(
    stack: Supervisor, http: aiohttp.ClientSession, topic: str
) -> None:
    _, _, link = await fetch(http, f"{stack.read_url}/events?topic={topic}&limit=2&order=desc")
    assert link is not None and "order=desc" in link
    cursor = re.search(r"cursor=([^&>]+)", link)
    assert cursor
    status, body, _ = await fetch(
        http, f"{stack.read_url}/events?topic={topic}&limit=2&cursor={cursor[1]}"
    )
    assert status == 400 and "order=desc" in body["error"]


async def test_time_range_filter(
    stack: Supervisor, http: aiohttp.ClientSession, topic: str
) -> None:
    status, page, link = await fetch(
        http,
        f"{stack.read_url}/events?topic={topic}"
        "&since=2025-10-21T10:00:03Z&until=2025-10-21T10:00:05%2B00:00",
    )
    assert status == 200 and link is None
    assert [e["event_id"] for e in page] == ["e06", "e07", "e08", "e09"]
    assert page[0]["timestamp"] == "2025-10-21T10:00:03Z"


async def test_unfiltered_listing_pages_across_topics(
    stack: Supervisor, http: aiohttp.ClientSession, topic: str
) -> None:
    status, page, link = await fetch(http, f"{stack.read_url}/events?limit=3")
    assert status == 200 and len(page) == 3 and link is not None
    # By time, not by text: "00:00:00Z" is earlier than "00:00:00.001000Z".
    keys = [(datetime.fromisoformat(e["timestamp"]), e["topic"], e["event_id"]) for e in page]
    assert keys == sorted(keys)


async def test_an_event_id_is_found_without_its_topic_and_source_narrows(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    """The search of the events page: an id in whatever topic holds it; a source."""
    run = uuid.uuid4().hex[:8]
    wanted = f"needle-{run}"
    batch = [
        event(f"hay-{run}-a", wanted, source=f"src-{run}"),
        event(f"hay-{run}-b", wanted, source=f"other-{run}"),
        event(f"hay-{run}-b", f"straw-{run}", source=f"src-{run}"),
    ]
    before = await stats(http, stack.read_url)
    status, _, _ = await post_json(http, stack.ingest_url, batch)
    assert status == 202
    await settled(http, stack.read_url, before["received"] + 3)
    status, page, _ = await fetch(http, f"{stack.read_url}/events?event_id={wanted}")
    assert status == 200
    assert sorted(e["topic"] for e in page) == [f"hay-{run}-a", f"hay-{run}-b"]
    status, page, _ = await fetch(
        http, f"{stack.read_url}/events?event_id={wanted}&source=src-{run}"
    )
    assert [e["topic"] for e in page] == [f"hay-{run}-a"]
    status, page, _ = await fetch(
        http, f"{stack.read_url}/events?topic=hay-{run}-b&source=src-{run}"
    )
    assert [e["event_id"] for e in page] == [f"straw-{run}"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=100000",
        "limit=abc",
        "since=yesterday",
        "since=2025-10-21T10:00:00",
        "cursor=%%%",
        "cursor=bm90IGpzb24",
        "cursor=WzEsMiwzXQ",
        "cursor=" + "A" * 5000,
        "bogus=1",
        "order=newest",
        "topic=" + "x" * 300,
        "source=" + "x" * 300,
        "event_id=%00",
    ],
)
async def test_bad_parameters_are_400(
    stack: Supervisor, http: aiohttp.ClientSession, query: str
) -> None:
    status, body, _ = await fetch(http, f"{stack.read_url}/events?{query}")
    assert status == 400, body
    assert body["error"]
