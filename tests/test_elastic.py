"""``POST /_bulk`` and ``POST /{index}/_bulk``: the Elasticsearch bulk API, from the real
``opensearch-py`` client and its bulk helpers, stored as events."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from opensearchpy import OpenSearch, helpers

from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import eventually, settled, stats, stored_count
from tests.tcpproxy import TCPProxy

DEADLINE = 60.0
NDJSON = {"Content-Type": "application/x-ndjson"}


def client(url: str) -> OpenSearch:
    return OpenSearch(hosts=[url], http_compress=True, timeout=30)


def documents(index: str, unique: int, *, twice_every: int = 0) -> Iterator[dict[str, Any]]:
    """``unique`` documents with ids, every ``twice_every``-th sent again; the actions
    alternate between ``index`` and ``create``."""
    for i in range(unique):
        for copy in range(2 if twice_every and i % twice_every == 0 else 1):
            yield {
                "_op_type": "create" if (i + copy) % 2 else "index",
                "_index": index,
                "_id": f"d{i}",
                "_source": {
                    "@timestamp": f"2026-03-01T10:{i // 3600 % 60:02d}:{i // 60 % 60:02d}."
                    f"{i % 60:02d}0Z",
                    "message": f"checkout {i} done",
                    "host": {"name": "shop-3"},
                    "n": i,
                },
            }


async def test_opensearch_py_bulk_helpers_store_each_document_once(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    index = f"bulk-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    es = client(stack.ingest_url)
    assert es.info()["version"]["number"].startswith("8.")
    ok, errors = await asyncio.to_thread(
        helpers.bulk, es, documents(index, 8000, twice_every=4), chunk_size=500
    )
    assert (ok, errors) == (10_000, [])  # 8,000 documents, 2,000 of them twice
    after = await settled(http, stack.read_url, counted + 10_000, timeout=DEADLINE)
    assert after["received"] == counted + 10_000
    assert stored_count(db, index) == 8000
    async with http.get(
        f"{stack.read_url}/events", params={"topic": index, "event_id": "d61"}
    ) as resp:
        (event,) = await resp.json()
    assert event["source"] == "shop-3"
    assert event["timestamp"] == "2026-03-01T10:00:01.010000Z"
    assert event["payload"] == {
        "@timestamp": "2026-03-01T10:00:01.010Z",
        "message": "checkout 61 done",
        "host": {"name": "shop-3"},
        "n": 61,
    }


async def test_documents_without_an_id_are_deduplicated_on_a_retry(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    index = f"bulk-noid-{uuid.uuid4().hex[:8]}"
    body = b"".join(
        b'{"index": {}}\n' + orjson.dumps({"message": f"line {i}", "host": "h"}) + b"\n"
        for i in range(50)
    )
    counted = (await stats(http, stack.read_url))["received"]
    replies = []
    for _ in range(2):  # a shipper's retry after a lost answer
        async with http.post(f"{stack.ingest_url}/{index}/_bulk", data=body, headers=NDJSON) as r:
            assert r.status == 200, await r.text()
            replies.append(await r.json())
    ids = [[item["index"]["_id"] for item in reply["items"]] for reply in replies]
    assert ids[0] == ids[1] and len(set(ids[0])) == 50
    assert all(item["index"]["status"] == 201 for item in replies[0]["items"])
    await settled(http, stack.read_url, counted + 100, timeout=DEADLINE)
    assert stored_count(db, index) == 50
    async with http.get(f"{stack.read_url}/events", params={"topic": index, "limit": "1"}) as r:
        (event,) = await r.json()
    assert event["source"] == "h"


async def test_each_action_gets_its_own_status_in_order(
    stack: Supervisor, http: aiohttp.ClientSession, db: psycopg.Connection[Any]
) -> None:
    index = f"bulk-items-{uuid.uuid4().hex[:8]}"
    lines = [
        {"create": {"_index": index, "_id": "a"}}, {"message": "kept"},
        {"update": {"_index": index, "_id": "a"}}, {"doc": {"message": "changed"}},
        {"delete": {"_index": index, "_id": "a"}},
        {"create": {"_id": "no-index"}}, {"message": "where to?"},
        {"index": {"_index": index, "_id": "b"}}, {"@timestamp": "yesterday"},
        {"index": {"_index": index, "_id": "c"}}, {"message": "nul \x00 in text"},
        {"index": {"_index": index, "_id": "x" * 300}}, {"message": "id too long"},
        {"create": {"_index": index}}, ["not", "an", "object"],
        {"index": {"_index": index, "_id": 7}}, {"@timestamp": 1767225600000},
    ]  # fmt: skip
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    counted = (await stats(http, stack.read_url))["received"]
    async with http.post(f"{stack.ingest_url}/_bulk", data=body, headers=NDJSON) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    assert reply["errors"] is True
    got = [(action, item["status"], item.get("error", {}).get("type"))
           for entry in reply["items"] for action, item in entry.items()]  # fmt: skip
    assert got == [
        ("create", 201, None),
        ("update", 400, "illegal_argument_exception"),
        ("delete", 400, "illegal_argument_exception"),
        ("create", 400, "action_request_validation_exception"),
        ("index", 400, "mapper_parsing_exception"),
        ("index", 400, "mapper_parsing_exception"),
        ("index", 400, "mapper_parsing_exception"),
        ("create", 400, "mapper_parsing_exception"),
        ("index", 201, None),
    ]
    assert "@timestamp" in reply["items"][4]["index"]["error"]["reason"]
    await settled(http, stack.read_url, counted + 2, timeout=DEADLINE)
    assert stored_count(db, index) == 2
    async with http.get(f"{stack.read_url}/events", params={"topic": index, "event_id": "7"}) as r:
        (event,) = await r.json()
    assert event["timestamp"] == "2026-01-01T00:00:00Z"
    assert event["source"] == "bulk"


async def test_bodies_that_are_not_bulk_requests_are_refused_whole(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    url = f"{stack.ingest_url}/_bulk"
    doc = b'{"message": "m"}\n'
    for data, kind, status, says in (
        (b'{"create": {"_index": "t"}}\n' + doc, "text/plain", 415, "content type"),
        (b"{not json\n" + doc, "application/x-ndjson", 400, "line 1"),
        (b'{"upsert": {"_index": "t"}}\n' + doc, "application/x-ndjson", 400, "unknown action"),
        (b'{"create": {}, "index": {}}\n' + doc, "application/x-ndjson", 400, "one key"),
        (b'{"create": {"_index": "t"}}\n', "application/x-ndjson", 400, "no document line"),
        (b'{"create": "t"}\n' + doc, "application/x-ndjson", 400, "must be an object"),
    ):
        async with http.post(url, data=data, headers={"Content-Type": kind}) as resp:
            assert resp.status == status, (data, await resp.text())
            assert says in (await resp.json())["error"]


async def test_more_actions_than_a_batch_may_hold_are_refused(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    """100,000 records in one request: over PUBSUB_MAX_BATCH_EVENTS, refused whole."""
    body = b'{"create": {"_index": "t"}}\n{}\n' * 100_000
    async with http.post(f"{stack.ingest_url}/_bulk", data=body, headers=NDJSON) as resp:
        assert resp.status == 413, await resp.text()
        assert "PUBSUB_MAX_BATCH_EVENTS" in (await resp.json())["error"]


async def test_a_bulk_through_a_broker_outage_is_retried_and_loses_nothing(
    proxied_ingest: tuple[Supervisor, TCPProxy],
    stack: Supervisor,
    http: aiohttp.ClientSession,
    db: psycopg.Connection[Any],
) -> None:
    """While ingest's broker link is cut, bulk requests get 429 with Retry-After, which the
    bulk helpers retry; every document is stored once the link is back."""
    own, link = proxied_ingest
    index = f"bulk-outage-{uuid.uuid4().hex[:8]}"
    counted = (await stats(http, stack.read_url))["received"]
    es = client(own.ingest_url)

    def send() -> int:
        def paced() -> Iterator[dict[str, Any]]:
            for doc in documents(index, 4000):
                time.sleep(0.001)  # a shipper's pace, spreading the requests over the outage
                yield doc

        return sum(ok for ok, _ in helpers.streaming_bulk(
            es, paced(), chunk_size=100, max_retries=60, initial_backoff=1, max_backoff=1
        ))  # fmt: skip

    sending = asyncio.create_task(asyncio.to_thread(send))
    await eventually(lambda: asyncio.to_thread(stored_count, db, index), lambda n: n >= 300,
                     timeout=DEADLINE, interval=0.05, what="the first stored")  # fmt: skip
    link.cut()
    await eventually(lambda: refusals(http, own), lambda n: n > 0, timeout=DEADLINE,
                     interval=0.05, what="a bulk request answered 429")  # fmt: skip
    link.restore()
    assert await sending == 4000
    await settled(http, stack.read_url, counted + 4000, timeout=DEADLINE)
    assert stored_count(db, index) == 4000


async def refusals(http: aiohttp.ClientSession, own: Supervisor) -> float:
    async with http.get(f"{own.ingest_url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r'^pubsub_ingest_requests_total\{status="429"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


@pytest.mark.parametrize("path", ["/_bulk", "/app-logs/_bulk"])
async def test_the_publish_token_guards_both_bulk_paths(
    path: str, own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    own = own_stack(publish_token="s3cret-publish")
    own.start("ingest")
    try:
        body = b'{"create": {"_index": "t"}}\n{}\n'
        async with http.post(f"{own.ingest_url}{path}", data=body, headers=NDJSON) as resp:
            assert resp.status == 401
    finally:
        own.stop("ingest")
