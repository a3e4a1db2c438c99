"""Bad input gets a clear 4xx and queues nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from stack.supervisor import Supervisor
from tests.support import event, post_json, settled, stats

GOOD = event("errors", "good")

CASES: list[tuple[str, bytes, str, int]] = [
    ("malformed JSON", b'{"topic": "t", ', "application/json", 400),
    ("not JSON at all", b"hello", "application/json", 400),
    ("invalid UTF-8", b'{"topic": "\xff\xfe"}', "application/json", 400),
    ("empty body", b"", "application/json", 400),
    ("form content type", orjson.dumps(GOOD), "application/x-www-form-urlencoded", 415),
    ("text content type", orjson.dumps(GOOD), "text/plain", 415),
    ("latin-1 charset", orjson.dumps(GOOD), "application/json; charset=latin-1", 415),
    ("missing field", orjson.dumps({"topic": "t", "event_id": "e"}), "application/json", 422),
    ("wrong type", orjson.dumps(event("t", "e", payload="text")), "application/json", 422),
    ("empty array", b"[]", "application/json", 422),
    ("array of numbers", b"[1, 2, 3]", "application/json", 422),
    (
        "batch over the event limit",
        orjson.dumps([event("t", str(i), payload={}) for i in range(20_001)]),
        "application/json",
        413,
    ),
]


async def test_bad_inputs_are_refused_whole_and_nothing_is_queued(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    before = await stats(http, stack.read_url)
    for name, body, ctype, want in CASES:
        status, reply, _ = await post_json(
            http, stack.ingest_url, None, raw=body, content_type=ctype
        )
        assert status == want, f"{name}: {status} {reply}"
        assert isinstance(reply, dict) and reply["error"], name
    # A batch with one bad item among good ones is refused as a whole, naming the item.
    topic = f"whole-{uuid.uuid4().hex[:6]}"
    batch: list[dict[str, Any]] = [event(topic, str(i)) for i in range(10)]
    batch[7]["timestamp"] = "not a time"
    status, reply, _ = await post_json(http, stack.ingest_url, batch)
    assert status == 422
    assert reply["problems"] == [
        {"index": 7, "field": "timestamp", "problem": reply["problems"][0]["problem"]}
    ]
    # Nothing above reached the broker: one good event afterwards is the only one counted.
    status, _, _ = await post_json(http, stack.ingest_url, event(topic, "sentinel"))
    assert status == 202
    after = await settled(http, stack.read_url, before["received"] + 1)
    assert after["received"] == before["received"] + 1
    assert after["dead_letter_messages"] == before["dead_letter_messages"]


async def test_huge_bad_batch_gets_a_small_reply(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    body = orjson.dumps([{"topic": 5, "event_id": None}] * 15_000)
    status, reply, headers = await post_json(http, stack.ingest_url, None, raw=body)
    assert status == 422
    assert len(reply["problems"]) == stack.settings.max_errors_reported
    assert reply["problem_count"] >= 15_000
    assert int(headers["Content-Length"]) < 4096


async def test_body_over_the_byte_limit_is_413(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    big = b"[" + b" " * (stack.settings.max_body_bytes + 10) + b"]"
    status, reply, _ = await post_json(http, stack.ingest_url, None, raw=big)
    assert status == 413
    assert "limit" in reply["error"]

    async def chunks() -> AsyncIterator[bytes]:
        # Without Content-Length the limit must hold as well.
        for _ in range(stack.settings.max_body_bytes // (1 << 20) + 2):
            yield b" " * (1 << 20)

    async with http.post(
        f"{stack.ingest_url}/publish", data=chunks(), headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413


async def test_wrong_method_and_path_answer_json(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.ingest_url}/publish") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]
    async with http.get(f"{stack.ingest_url}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]


async def test_five_thousand_event_batch_of_seed_size(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"big-{uuid.uuid4().hex[:6]}"
    batch = [event(topic, f"evt{i}", payload={"msg": f"Event {i}" * 20}) for i in range(5000)]
    raw = orjson.dumps(batch)
    assert len(raw) > 1_000_000
    before = await stats(http, stack.read_url)
    status, reply, _ = await post_json(http, stack.ingest_url, None, raw=raw)
    assert (status, reply["accepted"]) == (202, 5000)
    after = await settled(http, stack.read_url, before["received"] + 5000)
    assert after["unique_processed"] - before["unique_processed"] == 5000
