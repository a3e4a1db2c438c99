"""Several broker addresses: a node that is down is skipped, a lost node is left for the next,
against the real RabbitMQ reached through TCP proxies that stand for the nodes."""

from __future__ import annotations

import asyncio
import logging

import pytest
import yarl

from pubsub import failover, service, topology
from pubsub.settings import Settings
from tests.support import eventually
from tests.tcpproxy import proxy


def _via(url: str, port: int) -> str:
    return str(yarl.URL(url).with_host("127.0.0.1").with_port(port))


async def test_a_node_that_is_down_is_skipped_and_a_lost_one_left_for_the_next(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = yarl.URL(amqp_url)
    host, port = target.host or "127.0.0.1", target.port or 5672
    with proxy(host, port) as down, proxy(host, port) as second, proxy(host, port) as third:
        down.cut()  # refuses every connection, as a stopped node does
        urls = [_via(amqp_url, p.port) for p in (down, second, third)]
        settings = Settings(amqp_url=",".join(urls))
        assert settings.amqp_urls == urls
        stop = asyncio.Event()
        caplog.set_level(logging.WARNING, logger="pubsub.failover")
        conn = await service.connect_broker(settings, name="test", stop=stop)
        try:
            assert isinstance(conn, failover.FailoverConnection)
            assert conn.node.port == second.port  # the first attempt failed, the next one won
            channel = await conn.channel()
            await channel.declare_queue("", exclusive=True)
            second.cut()  # the node is lost: the connection moves on to the third
            await eventually(lambda: _on(conn, third.port), bool, timeout=30, what="failing over")
            assert topology.is_connected(conn)
            # Channels come back on the new node and work.
            await eventually(lambda: _usable(conn), bool, timeout=30, what="a working channel")
        finally:
            await conn.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "pubsub.failover"]
    assert any(f":{second.port}" in w and "lost or unreachable" in w for w in warnings)


async def _on(conn: failover.FailoverConnection, port: int) -> bool:
    return conn.node.port == port and topology.is_connected(conn)


async def _usable(conn: failover.FailoverConnection) -> bool:
    try:
        channel = await conn.channel()
        await channel.declare_queue("", exclusive=True)
        await channel.close()
    except Exception:  # noqa: BLE001 - not yet restored
        return False
    return True


def test_amqp_urls_must_all_be_amqp() -> None:
    with pytest.raises(ValueError, match="PUBSUB_AMQP_URL"):
        Settings.from_env({"PUBSUB_AMQP_URL": "amqp://a/,http://b/"})
    assert Settings(amqp_url=" amqp://a/ , amqps://b/ ").amqp_urls == ["amqp://a/", "amqps://b/"]
