"""A real three-node RabbitMQ cluster: nothing lost or doubled while nodes fail.

Three nodes of our own on this host (see :mod:`tests.cluster`), every service given all three
addresses in ``PUBSUB_AMQP_URL`` (in different orders, so that clients spread over the nodes),
and consumer-1's link to its first node running through a TCP proxy. One stream of at least
200,000 events (20 % duplicates, idempotency keys and retries as the publisher sends them) goes
through ingest to two consumers while three faults strike in turn:

1. SIGKILL of the node that leads the quorum queue (then it is booted again, and the queue must
   have its three members back);
2. a clean stop of the node ingest is connected to (booted again afterwards);
3. consumer-1's link to its node cut at the proxy for 2 s.

At the end every accepted event must be stored exactly once, the counters must match, and no
queue may hold a message: the count of lost, doubled and unexpected events is zero, as in
RabbitMQ's own Jepsen runs for quorum queues. The recovery time of each fault is the time until
events accepted after it are stored again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
import pytest

from publisher.load import EventSource, LoadConfig, Report, send_load
from pubsub import database
from pubsub.settings import Settings
from pubsub.topology import Names
from stack.supervisor import Supervisor
from tests.cluster import Cluster, Node, running_cluster
from tests.fix_faults import REPORTS
from tests.fix_services import private_settings
from tests.support import eventually, settled, stats_when_up
from tests.tcpproxy import TCPProxy

EVENTS = 200_000
CUT = 2.0  # seconds the proxied link stays cut


@dataclass
class Fault:
    name: str
    at: float = 0.0
    recovery: float = 0.0
    note: str = ""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def clustered(cluster: Cluster, database_url: str) -> Iterator[Settings]:
    urls = ",".join(n.url for n in cluster.nodes)
    with private_settings(urls, database_url, prefix="cluster", publish_timeout=2.0) as s:
        yield s


def _order(nodes: list[Node], first: int) -> list[str]:
    return [nodes[(first + i) % len(nodes)].url for i in range(len(nodes))]


async def _members_online(cluster: Cluster, queue: str, n: int) -> None:
    async def online() -> int:
        info = await asyncio.to_thread(cluster.queue, queue)
        online = info.get("online")
        return len(online) if isinstance(online, list) else 0

    await eventually(online, lambda k: k == n, timeout=120, interval=0.5, what=f"{n} members")


async def test_nothing_lost_or_doubled_while_cluster_nodes_fail(
    cluster: Cluster,
    clustered: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    nodes = cluster.nodes
    queue = Names.of(clustered).queue
    link = TCPProxy("127.0.0.1", nodes[1].port).start()
    stack = Supervisor(clustered, logdir=tmp_path)
    stack.overrides["ingest"] = {"amqp_url": ",".join(_order(nodes, 0))}
    via_proxy = f"amqp://guest:guest@127.0.0.1:{link.port}/"
    stack.overrides["consumer-1"] = {"amqp_url": ",".join([via_proxy, *_order(nodes, 2)[:2]])}
    stack.overrides["consumer-2"] = {"amqp_url": ",".join(_order(nodes, 2))}
    faults: list[Fault] = []
    try:
        stack.start_all()
        info = await asyncio.to_thread(cluster.queue, queue)
        assert isinstance(info["members"], list) and len(info["members"]) == 3, info
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            before = await stats_when_up(http, stack.read_url)
            cfg = LoadConfig(
                ingest_url=stack.ingest_url, read_url=stack.read_url, events=EVENTS,
                batch_size=100, concurrency=1, topic=f"cluster-{uuid.uuid4().hex[:8]}",
                retries=500,
            )  # fmt: skip
            source, report = EventSource(cfg), Report()
            injected = False
            sending = asyncio.create_task(
                send_load(
                    http, cfg, source, report,
                    until=lambda: injected and source.made >= EVENTS,
                )
            )  # fmt: skip

            async def flowing_again(fault: Fault) -> None:
                """Recovery: events accepted after the fault are stored."""
                goal = report.sent + 1000

                async def stored() -> int:
                    stats = await stats_when_up(http, stack.read_url)
                    return int(stats["received"]) - int(before["received"])

                await eventually(
                    lambda: _sent(report), lambda n: n >= goal, timeout=120, what="accepting"
                )
                await eventually(stored, lambda n: n >= goal, timeout=120, what="storing")
                fault.recovery = time.monotonic() - fault.at

            async def strike(name: str, at_events: int, act: Callable[[], Awaitable[str]]) -> Fault:
                await eventually(
                    lambda: _sent(report), lambda n: n >= at_events, timeout=300, what=name
                )
                fault = Fault(name, at=time.monotonic())
                fault.note = await act()
                await flowing_again(fault)
                faults.append(fault)
                return fault

            async def kill_leader() -> str:
                leader = cluster.node_named(
                    str((await asyncio.to_thread(cluster.queue, queue))["leader"])
                )
                await asyncio.to_thread(cluster.kill, leader)
                return leader.name

            async def stop_ingest_node() -> str:
                node = await asyncio.to_thread(cluster.node_of_connection, "pubsub ingest")
                await asyncio.to_thread(cluster.stop_node, node)
                return node.name

            async def cut_link() -> str:
                await asyncio.to_thread(link.cut)
                await asyncio.sleep(CUT)
                await asyncio.to_thread(link.restore)
                return f"proxy to {nodes[1].name}"

            fault = await strike("SIGKILL the queue's leader", 30_000, kill_leader)
            await asyncio.to_thread(cluster.restart, cluster.node_named(fault.note))
            await _members_online(cluster, queue, 3)
            fault = await strike("stop the node ingest is connected to", 80_000, stop_ingest_node)
            await asyncio.to_thread(cluster.restart, cluster.node_named(fault.note))
            await _members_online(cluster, queue, 3)
            await strike("cut consumer-1's link to its node", 130_000, cut_link)
            injected = True
            await sending
            assert report.failed_events == 0, "events never accepted"
            after = await settled(
                http, stack.read_url, before["received"] + report.sent, timeout=300
            )
        with psycopg.connect(clustered.database_url, **database.connect_kwargs(clustered)) as c:
            (rows,) = c.execute(
                "SELECT count(*) FROM events WHERE topic = %s", (cfg.topic,)
            ).fetchone() or (0,)
        # Copies of a message published again after an unconfirmed first attempt, and
        # deliveries handed out again after a lost channel, are skipped by the ledger: wait
        # until the consumers have taken them too, then stop the consumers, so that what is
        # still unacknowledged comes back as ready and is counted.
        await eventually(
            lambda: asyncio.to_thread(lambda: cluster.queue(queue).get("messages")),
            lambda n: n == 0,
            timeout=120,
            interval=0.5,
            what="an empty queue",
        )
        for name in stack.consumers:
            stack.stop(name)
        leftover = {
            name: (await asyncio.to_thread(cluster.queue, name)).get("messages")
            for name in (queue, Names.of(clustered).dead_queue)
        }
        members = (await asyncio.to_thread(cluster.queue, queue))["members"]
    finally:
        stack.stop_all()
        link.close()
    received = after["received"] - before["received"]
    unique = after["unique_processed"] - before["unique_processed"]
    lost = source.unique - rows
    doubled = (received - report.sent) + (unique - rows)
    table = _table(faults, report, lost, doubled)
    request.config.stash.setdefault(REPORTS, []).append(table)
    assert report.sent >= EVENTS, table
    assert (lost, doubled) == (0, 0), table
    assert leftover == {queue: 0, Names.of(clustered).dead_queue: 0}, (leftover, table)
    assert isinstance(members, list) and len(members) == 3, table
    assert len(faults) == 3, table


async def _sent(report: Report) -> int:
    return report.sent


def _table(faults: list[Fault], report: Report, lost: int, doubled: int) -> str:
    refused = sum(n for status, n in report.answers.items() if status != 202)
    lines = [
        f"cluster of 3 RabbitMQ nodes: {report.sent:,} events accepted, {refused} refused"
        f" requests retried, {lost} lost, {doubled} doubled",
        "| fault | node | recovery s |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {f.name} | {f.note} | {f.recovery:.1f} |" for f in faults]
    return "\n".join(lines)
