"""Both HTTP apps in process, served by aiohttp's ``TestServer``: ingest in front of a broker
client that records what it is given, the read API over the real PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson

from ingest import jsonsize
from ingest.intake import BUDGET
from pubsub.settings import Settings
from readapi.app import Sources
from readapi.app import make_app as make_read
from tests.inprocess import Client, RecordingBroker, ingest, serve
from tests.support import event


async def test_ingest_answers_202_after_handing_the_events_to_the_broker() -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        body = [event("apps", str(i)) for i in range(3)]
        resp = await client.post("/publish", json=body, headers={"X-Request-Id": "req-1"})
        assert resp.status == 202
        assert await resp.json() == {"accepted": 3, "request_id": "req-1"}
        assert resp.headers["X-Request-Id"] == "req-1"
    assert [p.count for pieces in broker.published for p in pieces] == [3]


async def test_ingest_names_at_most_the_configured_number_of_payload_problems() -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker, max_errors_reported=3)) as client:
        body = [event("apps", str(i), payload={"text": "nul \u0000"}) for i in range(5)]
        resp = await client.post(
            "/publish", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        reply = await resp.json()
    assert resp.status == 422
    assert len(reply["problems"]) == 3 and reply["problem_count"] == 5
    assert resp.headers["X-Request-Id"]
    assert not broker.published


async def test_ingest_answers_503_with_the_configured_retry_after() -> None:
    broker = RecordingBroker(refuse="not connected to the broker")
    async with serve(ingest(broker, retry_after=9)) as client:
        resp = await client.post("/publish", json=event("apps", "e"))
        reply = await resp.json()
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "9" and resp.headers["X-Request-Id"]
    assert "broker unavailable: not connected to the broker" in reply["error"]


async def test_ingest_refuses_past_its_memory_budget_and_accepts_again_after() -> None:
    confirm = asyncio.Event()
    broker = RecordingBroker(confirm=confirm)
    body = orjson.dumps([event("apps", str(i), payload={"pad": "x" * 200}) for i in range(10)])
    # A request holds its body and what parsing it takes; three quarters of the budget are
    # for large requests: room for one, not for two.
    one = len(body) + jsonsize.parsed_size(body)
    app = ingest(broker, max_body_bytes=4000, ingest_memory_budget=2 * one - 1, retry_after=3)
    headers = {"Content-Type": "application/json"}
    async with serve(app) as client:
        held = asyncio.create_task(client.post("/publish", data=body, headers=headers))
        # The first request holds its bytes until it is confirmed.
        await asyncio.wait_for(broker.arrived.wait(), 5)
        resp = await client.post("/publish", data=body, headers=headers)
        assert resp.status == 503 and resp.headers["Retry-After"] == "3"
        assert "ingest is busy" in (await resp.json())["error"]
        confirm.set()
        assert (await held).status == 202
        resp = await client.post("/publish", data=body, headers=headers)
        assert resp.status == 202


def _gzip_bomb(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros in one gzip member (about 1,000 to 1), made in pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([packer.compress(zeros) for _ in range(megabytes)] + [packer.flush()])


async def test_gzip_bombs_are_refused_quickly_and_accept_nothing() -> None:
    broker = RecordingBroker()
    # Connection: close: after a refused body the server drops the connection anyway.
    gzipped = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Connection": "close",
    }
    one_event = gzip.compress(orjson.dumps([event("gz", "1")]))
    async with serve(ingest(broker)) as client:
        for body, status, reason in (
            (_gzip_bomb(200), 413, "body exceeds the limit"),  # one member, 200 MiB inside
            (gzip.compress(b"") * 100_000 + one_event, 400, "more than 1024 members"),
        ):
            started = time.monotonic()
            resp = await client.post("/publish", data=body, headers=gzipped)
            assert resp.status == status and reason in (await resp.json())["error"]
            assert time.monotonic() - started < 2.0
        # Compressed bodies as such are welcome, several members too.
        resp = await client.post(
            "/publish", data=gzip.compress(b"") * 10 + one_event, headers=gzipped
        )
        assert resp.status == 202
    assert [p.count for pieces in broker.published for p in pieces] == [1]


async def test_ingest_refusals_are_json_with_a_reason() -> None:
    async with serve(ingest(RecordingBroker(), publish_token="secret")) as client:
        resp = await client.post("/publish", json=event("apps", "e"))
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"] == "missing or wrong bearer token"
        resp = await client.post(
            "/publish",
            data=b"x",
            headers={"Authorization": "Bearer secret", "Content-Type": "text/plain"},
        )
        assert resp.status == 415 and "unsupported content type" in (await resp.json())["error"]
        resp = await client.get("/nowhere")
        assert resp.status == 404 and (await resp.json())["error"]


async def test_ingest_is_not_ready_without_the_broker_and_documents_publish() -> None:
    async with serve(ingest(RecordingBroker(connected=False))) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["checks"] == {"broker": False} and "broker" in body["message"]
        document = await (await client.get("/openapi.json")).json()
        assert "/publish" in document["paths"]


@asynccontextmanager
async def read_api(settings: Settings) -> AsyncIterator[Client]:
    """The read API over the database, without a broker: queue depths are unknown."""
    sources = Sources(settings)
    await sources.pool.open(wait=False)
    try:
        async with serve(make_read(sources)) as client:
            yield client
    finally:
        await sources.close()


async def test_read_api_serves_stats_and_refuses_bad_parameters(settings: Settings) -> None:
    async with read_api(settings) as client:
        stats = await (await client.get("/stats")).json()
        assert {"received", "unique_processed", "duplicate_dropped", "topics", "uptime"} <= set(
            stats
        )
        assert stats["queued_messages"] is None
        for query, reason in (("limit=0", "limit must be between"), ("color=red", "unknown")):
            resp = await client.get(f"/events?{query}")
            assert resp.status == 400
            assert reason in (await resp.json())["error"]
        gateway = await (await client.get("/openapi/gateway.json")).json()
        assert {"/publish", "/events", "/stats"} <= set(gateway["paths"])


async def test_read_api_answers_503_with_the_configured_retry_after(settings: Settings) -> None:
    unreachable = settings.replace(
        database_url="postgresql://postgres@127.0.0.1:1/test", retry_after=7
    )
    async with read_api(unreachable) as client:
        for path in ("/stats", "/events"):
            resp = await client.get(path)
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "7"
            assert (await resp.json())["error"] == "database unavailable; retry later"


async def test_pages_send_a_content_security_policy_and_every_answer_nosniff(
    settings: Settings,
) -> None:
    html = {"Accept": "text/html"}
    async with read_api(settings) as client:
        for path, headers in (("/", html), ("/docs", {}), ("/stats", {})):
            resp = await client.get(path, headers=headers)
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
            assert resp.headers["Referrer-Policy"] == "no-referrer", path
            if resp.content_type == "text/html":
                csp = resp.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert (await client.get("/", headers=html)).content_type == "text/html"
    async with serve(ingest(RecordingBroker())) as client:
        resp = await client.get("/docs")
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_a_body_that_does_not_arrive_in_time_is_408_and_frees_its_budget() -> None:
    broker = RecordingBroker()
    app = ingest(broker, body_read_timeout=0.5)
    async with serve(app) as client:
        server = client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        head = (
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        writer.write(head.encode() + b'[{"topic": "slow"')  # and then nothing more
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(4096)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"PUBSUB_BODY_READ_TIMEOUT" in answer
        assert not broker.published
        assert app[BUDGET].used == 0
