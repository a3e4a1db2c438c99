"""Background work that every consumer offers and one at a time does: retention sweeps and
merges of small blocks.

Each runs in rounds on a connection of its own (never the store's, so that a round never delays
a batch in hand), under a session advisory lock: the consumer that takes it does the round, the
others skip it. A database that does not answer is tried again the next round.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Generic, TypeVar

import psycopg

from pubsub import database, service
from pubsub.settings import Settings

T = TypeVar("T")

# The share of one connection's time a round's paced transactions take at most: between two,
# it pauses nine times as long as the last took, and consumers store in the time left.
DUTY = 0.1


class Rounds(Generic[T]):
    """Subclasses give ``lock_key``, ``what`` and :meth:`round`."""

    lock_key: int  # one per kind of work, shared by every process of the project
    what: str  # for the logs
    log: logging.Logger

    def __init__(self, settings: Settings, *, interval: float, duty: float = DUTY) -> None:
        self.settings = settings
        self.interval = interval
        self.duty = duty
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def round(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> T:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        """A round every ``interval`` seconds until ``stop`` is set."""
        # Consumers started together should not all try at the same moment.
        delay = random.uniform(0, min(self.interval, 5.0))
        try:
            while not await service.stopped_within(stop, delay):
                delay = self.interval
                try:
                    await self.once(stop)
                except (psycopg.Error, OSError) as exc:
                    self.log.warning(
                        "%s interrupted, next in %.0fs: %s", self.what, self.interval, exc
                    )
                    await self.close()
        finally:
            await self.close()

    async def once(self, stop: asyncio.Event | None = None) -> T | None:
        """One round now; ``None`` if another process is doing one."""
        conn = await self.connection()
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,))
        row = await cur.fetchone()
        if not row or not row[0]:
            return None
        try:
            return await self.round(conn, stop or asyncio.Event())
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))

    async def pause(self, stop: asyncio.Event, took: float) -> bool:
        """Wait so that a transaction of ``took`` seconds keeps to the duty; whether ``stop``
        came first."""
        return await service.stopped_within(stop, took * (1 / self.duty - 1))

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await database.connect(self.settings, autocommit=True)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
