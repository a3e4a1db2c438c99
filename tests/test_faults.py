"""Broker trouble at ingest (503 with Retry-After, never a hang), poison messages, restarts."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import psycopg
import pytest
import yarl

from pubsub import deadletters, topology
from pubsub.settings import Settings
from pubsub.topology import ROUTING_KEY, Names
from stack.supervisor import ChildFailed, Supervisor
from tests.fix_stack import StackFactory
from tests.support import (
    event,
    eventually,
    post_json,
    publish_raw,
    queue_depth,
    settled,
    stats,
)
from tests.tcpproxy import TCPProxy, proxy


async def test_ingest_answers_503_while_the_broker_is_unreachable_then_recovers(
    proxied_ingest: tuple[Supervisor, TCPProxy], stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    own, p = proxied_ingest
    topic = f"outage-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    assert (await post_json(http, own.ingest_url, event(topic, "before")))[0] == 202

    p.stall()  # connected but silent: confirms never come
    started = time.monotonic()
    status, body, headers = await post_json(http, own.ingest_url, event(topic, "stalled"))
    assert status == 503 and "Retry-After" in headers and body["error"]
    assert time.monotonic() - started < own.settings.publish_timeout + 2

    p.cut()  # connection dropped, reconnects refused
    for _ in range(3):
        started = time.monotonic()
        status, _, headers = await post_json(http, own.ingest_url, event(topic, "down"))
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert time.monotonic() - started < own.settings.publish_timeout + 2
    async with http.get(f"{own.ingest_url}/readyz") as resp:
        assert resp.status == 503

    p.restore()

    async def retry_until_accepted() -> int:
        return (await post_json(http, own.ingest_url, event(topic, "after")))[0]

    await eventually(
        retry_until_accepted,
        lambda s: s == 202,
        timeout=30,
        interval=0.5,
        what="ingest accepting again after the broker came back",
    )
    # "stalled" may have been confirmed late; every 202 is stored, no 503'd event is required.
    after = await settled(http, stack.read_url, before["received"] + 2)
    got = await eventually(
        lambda: _event_ids(stack.settings, topic),
        lambda ids: {"before", "after"} <= ids,
        what="accepted events stored",
    )
    assert "down" not in got
    assert after["received"] >= before["received"] + 2


async def test_the_read_api_answers_at_once_after_its_database_connections_died(
    proxied_read_api: tuple[Supervisor, TCPProxy], http: aiohttp.ClientSession
) -> None:
    """A database restart kills every pooled connection. The first request after it must not
    walk through them one by one with the pool's backoff (1 + 2 + 4 s, past its 5 s timeout,
    answered 503) while the database is up again."""
    own, p = proxied_read_api

    async def overlapping_reads() -> int:
        # A few at once, so that the pool grows while no request waits near its timeout (a
        # burst of 32 pages did, on a busy machine, and was answered 503).
        await asyncio.gather(*(stats(http, own.read_url) for _ in range(8)))
        return p.connections

    opened = await eventually(
        overlapping_reads, lambda n: n >= 3, what="the pool to hold 3 connections or more"
    )
    p.cut()  # every connection dropped by the far end, as a restart does
    p.restore()
    async with http.get(f"{own.read_url}/stats") as resp:
        status, body = resp.status, await resp.text()
    assert status == 200, (status, body)
    assert p.connections > opened


async def _event_ids(settings: Settings, topic: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, options=f"-c search_path={settings.db_schema}"
    ) as conn:
        cur = await conn.execute("SELECT event_id FROM events WHERE topic = %s", (topic,))
        return {r[0] for r in await cur.fetchall()}


async def test_poison_messages_go_to_the_dead_letter_queue(
    settings: Settings, stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    names = Names.of(settings)
    dead_before = await queue_depth(settings, names.dead_queue)
    before = await stats(http, stack.read_url)
    await publish_raw(
        settings, names.exchange, [b"not json", b'{"an": "object"}', b'[{"topic": 1}]']
    )
    # Compressed ones: a bomb (inflating far past PUBSUB_MESSAGE_MAX_BYTES), a cut stream, and
    # an encoding no consumer reads.
    bomb = zlib.compress(b"[" + b" " * (3 * settings.message_max_bytes) + b"]", 9)
    cut = zlib.compress(b'[{"topic": "t"}]')[:-6]
    await publish_raw(settings, names.exchange, [bomb, cut], content_encoding="deflate")
    await publish_raw(settings, names.exchange, [b"[]"], content_encoding="br")
    await eventually(
        lambda: queue_depth(settings, names.dead_queue),
        lambda n: n == dead_before + 6,
        what="6 dead letters",
    )
    # The consumers carry on: a good event after the poison is stored.
    topic = f"after-poison-{uuid.uuid4().hex[:6]}"
    assert (await post_json(http, stack.ingest_url, event(topic, "ok")))[0] == 202
    after = await settled(http, stack.read_url, before["received"] + 1)
    assert after["received"] == before["received"] + 1
    assert after["dead_letter_messages"] == dead_before + 6


async def test_restart_of_every_process_keeps_data_counters_and_dedup(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"restart-{uuid.uuid4().hex[:6]}"
    batch = [event(topic, f"e{i}") for i in range(100)]
    before = await stats(http, stack.read_url)
    assert (await post_json(http, stack.ingest_url, batch))[0] == 202
    mid = await settled(http, stack.read_url, before["received"] + 100)

    for name in ("ingest", "consumer-1", "consumer-2", "readapi"):
        stack.stop(name, sig=signal.SIGTERM)
    for name in ("ingest", "consumer-1", "consumer-2", "readapi"):
        stack.start(name, wait=False)
    for name in ("ingest", "consumer-1", "consumer-2", "readapi"):
        stack.wait_ready(name)

    restarted = await stats(http, stack.read_url)
    for key in ("received", "unique_processed", "duplicate_dropped"):
        assert restarted[key] == mid[key], key
    assert (await post_json(http, stack.ingest_url, batch))[0] == 202
    after = await settled(http, stack.read_url, mid["received"] + 100)
    assert after["unique_processed"] == mid["unique_processed"]
    assert after["duplicate_dropped"] == mid["duplicate_dropped"] + 100


async def test_sigkilled_consumer_loses_nothing(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"kill-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    sent = 0
    for i in range(20):
        batch = [event(topic, f"e{i}-{j}") for j in range(500)]
        assert (await post_json(http, stack.ingest_url, batch))[0] == 202
        sent += 500
        if i == 5:
            stack.stop("consumer-1", sig=signal.SIGKILL)
    stack.start("consumer-1")
    after = await settled(http, stack.read_url, before["received"] + sent, timeout=60)
    assert after["received"] - before["received"] == sent
    assert after["unique_processed"] - before["unique_processed"] == sent


async def test_health_endpoints_and_metrics_of_every_service(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    expected: dict[str, str] = {
        "ingest": "pubsub_ingest_requests_total",
        "readapi": "python_info",
        "consumer-1": "pubsub_consumer_events_received_total",
        "consumer-2": "pubsub_consumer_batch_events_bucket",
    }
    for name, metric in expected.items():
        for path in ("/healthz", "/readyz"):
            async with http.get(stack.url(name) + path) as resp:
                body: Any = await resp.json()
                assert resp.status == 200, (name, path, body)
        async with http.get(stack.url(name) + "/metrics") as resp:
            assert resp.status == 200
            assert metric in await resp.text(), (name, metric)
    await asyncio.sleep(0)


async def test_dead_letters_are_listed_and_replayed(
    settings: Settings, stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    names = Names.of(settings)
    topic = f"replay-{uuid.uuid4().hex[:6]}"
    before = await stats(http, stack.read_url)
    dead_before = await queue_depth(settings, names.dead_queue)
    good = orjson.dumps([event(topic, "revived")])
    packed = zlib.compress(orjson.dumps([event(topic, "revived-packed")]))
    # As if PostgreSQL had refused them once: straight into the dead-letter exchange, one as
    # ingest compresses its messages.
    await publish_raw(settings, names.dead_exchange, [good])
    await publish_raw(settings, names.dead_exchange, [packed], content_encoding="deflate")
    await eventually(
        lambda: queue_depth(settings, names.dead_queue),
        lambda n: n == dead_before + 2,
        what="dead letters",
    )
    letters = await deadletters.list_dead(settings, limit=1000)
    previews = [d["preview"] for d in letters]
    shown = [p for p in previews if p.startswith('[{"topic"') and topic in p]
    assert len(shown) == 2, shown  # the compressed one shown inflated
    # Listing takes and returns them: more often than RabbitMQ 4's default delivery limit (20)
    # of quorum queues, and they are all still there.
    for _ in range(25):
        await deadletters.list_dead(settings, limit=1000)
    assert await queue_depth(settings, names.dead_queue) == dead_before + 2  # list keeps them
    moved = await deadletters.replay(settings, limit=1000)
    assert moved == dead_before + 2
    # The poison ones from other tests come back to the dead-letter queue; the good ones are
    # stored, the compressed one too (replayed with its encoding).
    after = await settled(http, stack.read_url, before["received"] + 2)
    assert after["unique_processed"] == before["unique_processed"] + 2
    await eventually(
        lambda: queue_depth(settings, names.dead_queue),
        lambda n: n == dead_before,
        what="poison back in the dead-letter queue",
    )


def test_the_dead_letter_queue_has_a_delivery_limit_listing_never_reaches(
    settings: Settings,
) -> None:
    # Without one, RabbitMQ 4 sets 20, and before 4.3 counts each listing as a delivery.
    limit = topology.dead_queue_arguments(settings)["x-delivery-limit"]
    assert isinstance(limit, int) and limit >= 1_000_000


async def test_delivery_limit_dead_letters_a_message_that_keeps_failing(
    settings: Settings,
) -> None:
    own = Settings.from_env(
        {}, **{**settings.__dict__, "queue": f"{settings.queue}.limit", "delivery_limit": 2}
    )
    async with await aio_pika.connect(settings.amqp_url) as conn:
        channel = await conn.channel()
        topo = await topology.declare(channel, own)
        try:
            await topo.exchange.publish(
                aio_pika.Message(b"[]", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                ROUTING_KEY,
            )
            for _ in range(3):  # as a consumer crashing on it would: delivered, never settled
                message = await eventually(
                    lambda: topo.queue.get(fail=False), lambda m: m is not None, what="delivery"
                )
                assert message is not None
                await message.nack(requeue=True)
            await eventually(
                lambda: queue_depth(own, topo.dead_queue.name),
                lambda n: n == 1,
                what="dead-lettered after the limit",
            )
            assert await queue_depth(own, topo.queue.name) == 0
        finally:
            await topology.delete(channel, own)


async def test_bearer_tokens_guard_publishing_and_reading(
    http: aiohttp.ClientSession, tmp_path: Path, own_stack: StackFactory
) -> None:
    token_file = tmp_path / "read-token"
    token_file.write_text("r-" + uuid.uuid4().hex + "\n")
    publish_token = "p-" + uuid.uuid4().hex
    own = own_stack(publish_token=publish_token)
    own.overrides["readapi"] = {"read_token_file": str(token_file)}
    read_token = token_file.read_text().strip()
    own.start("ingest")
    own.start("readapi")
    body = event(f"auth-{uuid.uuid4().hex[:6]}", "e")
    for headers, want in [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {read_token}"}, 401),
        ({"Authorization": f"Bearer {publish_token}"}, 202),
    ]:
        async with http.post(f"{own.ingest_url}/publish", json=body, headers=headers) as r:
            assert r.status == want, headers
            if want == 401:
                assert r.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/stats", "/events"):
        async with http.get(own.read_url + path) as r:
            assert r.status == 401
        async with http.get(
            own.read_url + path, headers={"Authorization": f"Bearer {read_token}"}
        ) as r:
            assert r.status == 200
    for url in (own.ingest_url, own.read_url):
        async with http.get(url + "/healthz") as r:
            assert r.status == 200  # probes need no token
    own.stop_all()
    for name in ("ingest", "readapi"):
        assert publish_token not in own.log(name, tail=100_000)
        assert read_token not in own.log(name, tail=100_000)


async def test_services_start_before_the_broker_and_database_do(
    settings: Settings, own_stack: StackFactory
) -> None:
    """Started while RabbitMQ and PostgreSQL refuse connections, every service waits (not
    ready, not crashed) and becomes ready once they answer."""
    url = yarl.URL(settings.amqp_url)
    db = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    with (
        proxy(url.host or "127.0.0.1", url.port or 5672) as broker,
        proxy(str(db.get("host", "127.0.0.1")), int(str(db.get("port", 5432)))) as database,
    ):
        broker.cut()
        database.cut()
        own = own_stack(
            amqp_url=str(url.with_host("127.0.0.1").with_port(broker.port)),
            database_url=psycopg.conninfo.make_conninfo(
                settings.database_url, host="127.0.0.1", port=database.port
            ),
            consumers=1,
        )
        for name in own.names:
            own.start(name, wait=False)

        async def tried() -> list[str]:
            return [name for name in own.names if "unreachable" not in own.log(name)]

        # Each service has met the refusal (however long it took to start) before the servers
        # come back: restoring them after a fixed time could come before a slow start.
        await eventually(tried, lambda waiting: not waiting, what="every service refused")
        with pytest.raises(ChildFailed, match="not ready"):
            await asyncio.to_thread(own.wait_ready, "ingest", 0.5)
        assert all(p.poll() is None for p in own.procs.values()), "a service gave up"
        broker.restore()
        database.restore()
        for name in own.names:
            await asyncio.to_thread(own.wait_ready, name, 30.0)
        own.stop_all()
