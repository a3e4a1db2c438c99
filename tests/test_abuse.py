"""Hostile input: every case gets a clear 4xx (never a 5xx), the services stay up, and nothing
that was accepted fails later in a consumer."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson

from pubsub.topology import Names
from stack.supervisor import Supervisor
from tests.support import event, post_json, queue_depth, settled, stats

E = b'{"topic":"t","event_id":"e","source":"s","payload":%s}'


def ev(**over: Any) -> bytes:
    body = event("abuse", "x")
    body.update(over)
    return orjson.dumps(body)


def field(name: str, raw: bytes) -> bytes:
    """An event whose ``name`` field holds the raw JSON ``raw``."""
    body = orjson.loads(ev())
    body[name] = "@@"
    return orjson.dumps(body).replace(b'"@@"', raw)


PUBLISH: list[tuple[str, str, bytes, str, int]] = [
    # category, case, body, content type, expected status
    ("encoding", "invalid UTF-8", b'{"topic": "\xff\xfe"}', "application/json", 400),
    ("encoding", "overlong UTF-8", field("topic", b'"\xc0\xaf"'), "application/json", 400),
    ("encoding", "UTF-16 body", ev().decode().encode("utf-16"), "application/json", 400),
    ("encoding", "UTF-8 BOM", b"\xef\xbb\xbf" + ev(), "application/json", 400),
    ("encoding", "lone surrogate", field("event_id", b'"\\ud800"'), "application/json", 400),
    ("encoding", "latin-1 charset", ev(), "application/json; charset=iso-8859-1", 415),
    ("control", "SOH in topic", field("topic", b'"a\\u0001b"'), "application/json", 422),
    ("control", "newline in event_id", field("event_id", b'"a\\nb"'), "application/json", 422),
    ("control", "DEL in source", field("source", b'"a\\u007fb"'), "application/json", 422),
    ("database", "NUL in payload", E % b'{"s":"a\\u0000b"}', "application/json", 422),
    ("database", "NUL in payload key", E % b'{"a\\u0000":1}', "application/json", 422),
    ("database", "NUL in topic", field("topic", b'"a\\u0000"'), "application/json", 422),
    ("nesting", "300 levels", E % (b'{"a":' * 300 + b"1" + b"}" * 300), "application/json", 400),
    ("nesting", "arrays 100k deep", E % (b"[" * 100_000), "application/json", 400),
    ("numbers", "2**70", E % b'{"n":1180591620717411303424}', "application/json", 422),
    ("numbers", "1e400", E % b'{"n":1e400}', "application/json", 422),
    ("numbers", "-1e400 nested", E % b'{"n":[{"m":-1e400}]}', "application/json", 422),
    ("numbers", "NaN literal", E % b'{"n":NaN}', "application/json", 422),
    ("strings", "topic of 10,000 chars", ev(topic="t" * 10_000), "application/json", 422),
    ("types", "topic a number", field("topic", b"5"), "application/json", 422),
    ("types", "payload an array", E % b"[1,2]", "application/json", 422),
    ("types", "payload null", E % b"null", "application/json", 422),
    ("types", "timestamp a number", field("timestamp", b"1700000000"), "application/json", 422),
    ("types", "timestamp no offset", ev(timestamp="2025-10-21T10:00:00"), "application/json", 422),
    ("types", "timestamp year 0", ev(timestamp="0000-01-01T00:00:00Z"), "application/json", 422),
    ("types", "body a string", b'"hello"', "application/json", 400),
    ("types", "body a number", b"42", "application/json", 400),
    ("types", "body null", b"null", "application/json", 400),
    ("types", "null in a batch", b"[" + ev() + b",null]", "application/json", 422),
    ("types", "unknown field", ev(topik="typo"), "application/json", 422),
    ("duplicates", "topic twice", b'{"topic":"a","topic":"b","event_id":"e","source":"s"}',
     "application/json", 422),
    ("duplicates", "payload key twice", E % b'{"k":1,"k":2}', "application/json", 422),
    ("size", "empty array", b"[]", "application/json", 422),
    ("size", "20,001 events", orjson.dumps([event("t", str(i), payload={}) for i in range(20_001)]),
     "application/json", 413),
    ("type", "text/plain", ev(), "text/plain", 415),
    ("type", "multipart", ev(), "multipart/form-data; boundary=x", 415),
    ("type", "no content type", ev(), "", 415),
]  # fmt: skip

EVENTS: list[tuple[str, str]] = [
    ("limit=10000000000000000000000", "huge limit"),
    ("limit=-5", "negative limit"),
    ("limit=1.5", "fractional limit"),
    ("since=not-a-date", "bad since"),
    ("until=2025-13-45T99:00:00Z", "impossible until"),
    ("topic=a%00b", "NUL in topic"),
    ("topic=" + "x" * 300, "topic too long"),
    ("cursor=%25%25%25", "cursor not base64"),
    ("cursor=bm90IGpzb24", "cursor not JSON"),
    ("cursor=WzEsMiwzXQ", "cursor of wrong types"),
    ("cursor=" + "Q3Vyc29y" * 500, "cursor garbage, long"),
    ("cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiYVx1MDAwMCIsImIiXQ", "cursor with NUL"),
    ("cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwIiwiYSIsImIiXQ", "cursor with naive time"),
    ("sort=desc", "unknown parameter"),
]


async def test_hostile_publish_bodies_get_clear_4xx(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    assert len(PUBLISH) + len(EVENTS) >= 30
    before = await stats(http, stack.read_url)
    dead_before = await queue_depth(stack.settings, Names.of(stack.settings).dead_queue)
    wrong = []
    for category, case, body, ctype, want in PUBLISH:
        status, reply, _ = await post_json(
            http, stack.ingest_url, None, raw=body, content_type=ctype
        )
        if status != want or not (isinstance(reply, dict) and reply.get("error")):
            wrong.append((category, case, status, str(reply)[:200]))
    assert not wrong, wrong
    # None of it reached the broker; one good event afterwards is all that is counted.
    topic = f"abuse-{uuid.uuid4().hex[:6]}"
    assert (await post_json(http, stack.ingest_url, event(topic, "ok")))[0] == 202
    after = await settled(http, stack.read_url, before["received"] + 1)
    assert after["received"] == before["received"] + 1
    assert await queue_depth(stack.settings, Names.of(stack.settings).dead_queue) == dead_before
    async with http.get(stack.ingest_url + "/healthz") as resp:
        assert resp.status == 200


async def test_hostile_event_queries_get_clear_400(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    wrong = []
    for query, case in EVENTS:
        async with http.get(f"{stack.read_url}/events?{query}") as resp:
            body = await resp.json(content_type=None)
            if resp.status != 400 or not body.get("error"):
                wrong.append((case, resp.status, body))
    assert not wrong, wrong
    async with http.get(stack.read_url + "/events?" + "topic=" + "y" * 20_000) as resp:
        assert 400 <= resp.status < 500  # the request line itself is refused as too long


async def test_injection_strings_are_stored_verbatim(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"'; DROP TABLE events; -- {uuid.uuid4().hex[:6]}"
    tricky = [
        event(topic, "1' OR '1'='1", source="<script>alert(1)</script>",
              payload={"sql": "'); DELETE FROM counters; --", "path": "../../etc/passwd",
                       "fmt": "%s%s%n", "tab": "a\tb", "back": "\\x00\\\\"}),
    ]  # fmt: skip
    before = await stats(http, stack.read_url)
    assert (await post_json(http, stack.ingest_url, tricky))[0] == 202
    await settled(http, stack.read_url, before["received"] + 1)
    async with http.get(f"{stack.read_url}/events", params={"topic": topic}) as resp:
        assert resp.status == 200
        assert await resp.json() == tricky
    async with http.get(f"{stack.read_url}/events", params={"topic": "' OR 1=1 --"}) as resp:
        assert (resp.status, await resp.json()) == (200, [])
