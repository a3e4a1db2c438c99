"""Connections to a RabbitMQ cluster: several node addresses, and a move to the next reachable
node whenever the current one cannot be reached or its connection is lost.

``PUBSUB_AMQP_URL`` holds one URL or several separated by commas, as RabbitMQ's own clients
take a list of addresses (``amqp://u:p@rabbit-1:5672/,amqp://u:p@rabbit-2:5672/``). A client
is connected to one node at a time; the cluster's quorum queue is reachable from any of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

log = logging.getLogger("pubsub.failover")


def shown(url: URL) -> str:
    """The URL without its password, for logs."""
    return str(url.with_password("******") if url.password else url)


class FailoverConnection(RobustConnection):
    """A robust connection over a list of nodes: aio-pika's reconnection and channel and
    consumer restoration, each attempt going to the node after the one that failed.

    aio-pika calls :meth:`_on_connection_close` both when an established connection is lost
    and when an attempt to connect fails, so that is where the next node is chosen.
    """

    def __init__(self, urls: Sequence[URL], *, first: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no RabbitMQ node given")
        self.nodes = list(urls)
        self._at = first % len(self.nodes)
        self._warned: set[int] = set()
        super().__init__(self.nodes[self._at], **kwargs)

    @property
    def node(self) -> URL:
        """The node connected to, or being tried."""
        return self.nodes[self._at]

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not self._close_called and len(self.nodes) > 1:
            failed = self._at
            self._at = (self._at + 1) % len(self.nodes)
            self.url = self.nodes[self._at]
            # One warning per node and outage: a node that stays down is not logged at every
            # round of attempts.
            if failed not in self._warned:
                self._warned.add(failed)
                log.warning(
                    "RabbitMQ node %s lost or unreachable; trying %s next",
                    shown(self.nodes[failed]),
                    shown(self.url),
                )
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._warned.discard(self._at)
        if len(self.nodes) > 1:
            log.info("connected to RabbitMQ node %s", shown(self.node))


async def connect_robust(
    urls: Sequence[str], *, first: int = 0, **kwargs: Any
) -> FailoverConnection:
    """A connected :class:`FailoverConnection`. The first attempt goes to node ``first`` (a
    caller retrying at start-up passes its attempt number, so each attempt tries the next
    node) and raises its error; after that, the connection moves between nodes by itself."""
    conn = FailoverConnection([URL(u) for u in urls], first=first, **kwargs)
    try:
        await conn.connect()
    except BaseException:
        await conn.close()
        raise
    return conn


async def connect_once(urls: Sequence[str]) -> AbstractConnection:
    """A plain connection (no reconnection) to the first node of ``urls`` that answers, for
    short-lived commands; the last node's error when none does."""
    error: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url)
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            log.warning("RabbitMQ node %s unreachable: %s", shown(URL(url)), exc)
            error = exc
    raise error or ValueError("no RabbitMQ node given")
