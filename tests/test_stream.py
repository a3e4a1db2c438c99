"""``GET /events/stream``: the live tail over Server-Sent Events, against the real services."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from publisher.tail import Message, messages
from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import event, eventually, post_json, settled, stats, take

DEADLINE = 30.0


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def publish(
    http: aiohttp.ClientSession, stack: Supervisor, topic: str, ids: list[str], **over: str
) -> None:
    status, body, _ = await post_json(
        http, stack.ingest_url, [event(topic, i, **over) for i in ids]
    )
    assert status == 202, body


@contextlib.asynccontextmanager
async def opened(
    http: aiohttp.ClientSession, read_url: str, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[AsyncIterator[Message]]:
    async with http.get(
        f"{read_url}/events/stream",
        params=params,
        headers=headers or {},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE),
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        yield messages(resp)


def ids(msgs: list[Message]) -> list[str]:
    return [orjson.loads(m.data)["event_id"] for m in msgs]


async def test_events_arrive_in_the_shape_of_events_and_resume_without_gap_or_repeat(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = _topic("stream")
    first = [f"a{i:03d}" for i in range(30)]
    later = [f"b{i:03d}" for i in range(20)]
    async with opened(http, stack.read_url, topic=topic) as stream:
        await publish(http, stack, topic, first[:15])
        await publish(http, stack, topic, first[15:])
        got = await take(stream, 10)
    shape = orjson.loads(got[0].data)
    assert set(shape) == {"topic", "event_id", "timestamp", "source", "payload"}
    assert shape["topic"] == topic and shape["payload"] == {"msg": f"event {shape['event_id']}"}
    await publish(http, stack, topic, later)
    await publish(http, stack, "other-" + topic, later)  # another topic: filtered out
    last = got[-1].id
    assert last
    async with opened(http, stack.read_url, {"Last-Event-ID": last}, topic=topic) as stream:
        rest = await take(stream, 40)
    seen = ids(got) + ids(rest)
    assert len(seen) == len(set(seen)) == 50, "an event came twice"
    assert set(seen) == set(first + later)
    # Every id is a cursor: each later one sorts after the one before.
    cursors = [m.id for m in got + rest]
    assert len(set(cursors)) == 50


async def test_each_new_event_shows_on_an_open_stream_in_turn(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    # How soon is bench.stream's to measure (a goal there, not a wall-clock assert here).
    topic = _topic("latency")
    async with opened(http, stack.read_url, topic=topic) as stream:
        for i in range(5):
            await publish(http, stack, topic, [f"e{i}"])
            (msg,) = await take(stream, 1)
            assert ids([msg]) == [f"e{i}"]


async def test_since_starts_with_events_stored_before_the_stream_opened(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = _topic("since")
    since = datetime.now(UTC).isoformat()
    before = await stats(http, stack.read_url)
    await publish(http, stack, topic, ["old1", "old2"])
    await settled(http, stack.read_url, before["received"] + 2)
    async with opened(http, stack.read_url, topic=topic, since=since) as stream:
        assert sorted(ids(await take(stream, 2))) == ["old1", "old2"]
        await publish(http, stack, topic, ["new1"])
        assert ids(await take(stream, 1)) == ["new1"]


async def test_filters_by_source(stack: Supervisor, http: aiohttp.ClientSession) -> None:
    topic = _topic("source")
    async with opened(http, stack.read_url, topic=topic, source="wanted") as stream:
        await publish(http, stack, topic, ["x1", "x2"], source="other")
        await publish(http, stack, topic, ["w1"], source="wanted")
        assert ids(await take(stream, 1)) == ["w1"]


@pytest.mark.parametrize(
    ("headers", "params", "message"),
    [
        ({"Last-Event-ID": "bm90IG91cnM"}, {}, "Last-Event-ID is not one this service produced"),
        # A transaction id of a Unicode digit ("²".isdigit() holds), and one past 64 bits.
        ({"Last-Event-ID": "WyLCsiIsICJ0IiwgImUiXQ"}, {}, "Last-Event-ID is not one this"),
        (
            {},
            {"last_event_id": "WyIxODQ0Njc0NDA3MzcwOTU1MTYxNiIsICJ0IiwgImUiXQ"},
            "Last-Event-ID is not one this",
        ),
        ({}, {"limit": "3"}, "unknown query parameter(s): limit"),
        ({}, {"since": "yesterday"}, "since must be an RFC 3339 time"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(
    stack: Supervisor,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    params: dict[str, str],
    message: str,
) -> None:
    async with http.get(f"{stack.read_url}/events/stream", headers=headers, params=params) as resp:
        assert resp.status == 400
        assert message in (await resp.json())["error"]


async def test_streams_past_the_limit_get_503_naming_it_and_the_token_is_required(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(stream_max_clients=2, read_token="s3cret", consumers=1)
    stack.start_all(["readapi"])
    auth = {"Authorization": "Bearer s3cret"}
    async with http.get(f"{stack.read_url}/events/stream") as resp:
        assert resp.status == 401
    async with (
        opened(http, stack.read_url, auth),
        opened(http, stack.read_url, auth),
        http.get(f"{stack.read_url}/events/stream", headers=auth) as third,
    ):
        assert third.status == 503
        assert third.headers["Retry-After"]
        error = (await third.json())["error"]
        assert "at most 2" in error and "PUBSUB_STREAM_MAX_CLIENTS" in error

    # Closed streams free their places, as soon as the read API notices (its next look).
    async def status() -> int:
        async with http.get(f"{stack.read_url}/events/stream", headers=auth) as resp:
            return resp.status

    await eventually(status, lambda s: s == 200, timeout=5.0, interval=0.1, what="a free place")


async def test_concurrent_connects_cannot_pass_the_limit_together(
    own_stack: StackFactory,
) -> None:
    # Twice the limit at once: each place is taken before the stream awaits its start, so
    # exactly the limit is admitted and the rest get 503.
    limit = 8
    stack = own_stack(stream_max_clients=limit, consumers=1)
    stack.start_all(["readapi"])
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=DEADLINE)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as many:
        answers = await asyncio.gather(
            *(many.get(f"{stack.read_url}/events/stream") for _ in range(2 * limit))
        )
        statuses = sorted(resp.status for resp in answers)
        for resp in answers:
            resp.close()
    assert statuses == [200] * limit + [503] * limit


async def test_a_stopping_read_api_ends_its_streams_with_a_message(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(consumers=1)
    stack.start_all(["readapi"])
    async with opened(http, stack.read_url) as stream:
        stopping = asyncio.get_running_loop().run_in_executor(None, stack.stop, "readapi")
        async with asyncio.timeout(DEADLINE):
            last = [m async for m in stream]
        assert await stopping == 0  # exited by itself, in time
    assert last and last[-1].event == "end"
    assert "shutting down" in orjson.loads(last[-1].data)["error"]


@contextlib.asynccontextmanager
async def narrow_stream(stack: Supervisor, topic: str) -> AsyncIterator[socket.socket]:
    """A stream read through a bare socket with a small receive window, so that the read API's
    writes wait for this reader as soon as it reads slowly, or not at all."""
    url = urlsplit(stack.read_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (url.hostname or "127.0.0.1", url.port or 80))
        request = f"GET /events/stream?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        assert b" 200 " in (await loop.sock_recv(sock, 1024)).split(b"\r\n")[0]
        yield sock
    finally:
        sock.close()


async def flood(http: aiohttp.ClientSession, stack: Supervisor, topic: str) -> None:
    """10,000 events: far more than the two sockets' buffers and the stream's buffer hold."""
    for n in range(10):
        await publish(http, stack, topic, [f"e{n}-{i:04d}" for i in range(1000)])


async def test_a_client_too_slow_to_keep_up_is_cut_off_with_a_reason(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(stream_slow_timeout=1.0, stream_buffer=200, consumers=1)
    stack.start_all()
    topic = _topic("slow")
    loop = asyncio.get_running_loop()
    received = b""
    async with narrow_stream(stack, topic) as sock:
        await flood(http, stack, topic)
        async with asyncio.timeout(DEADLINE * 2):
            while b"event: error" not in received or not received.endswith(b"\r\n\r\n"):
                chunk = await loop.sock_recv(sock, 512)
                if not chunk:
                    break
                received = received[-4096:] + chunk
                await asyncio.sleep(0.01)  # about 50 KB/s: far slower than the events come
    tail = received.decode(errors="replace")
    assert "event: error" in tail, tail[-600:]
    assert "reads more slowly than events arrive" in tail
    assert "PUBSUB_STREAM_SLOW_TIMEOUT" in tail and "Last-Event-ID" in tail


async def test_a_client_that_stops_reading_is_disconnected_and_frees_its_place(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(stream_slow_timeout=1.0, stream_max_clients=1, consumers=1)
    stack.start_all()
    topic = _topic("stuck")

    async def status() -> int:
        async with http.get(f"{stack.read_url}/events/stream?topic={topic}") as resp:
            return resp.status

    async with narrow_stream(stack, topic):
        await flood(http, stack, topic)
        # This reader never reads again: the stream's write waits, then the read API gives up
        # on it (30 s) and its one place takes a new stream.
        started = time.monotonic()
        await eventually(status, lambda s: s == 200, timeout=60.0, interval=0.5,
                         what="the stuck stream's place freed")  # fmt: skip
        assert time.monotonic() - started >= 20.0  # not before its writes stalled for long
