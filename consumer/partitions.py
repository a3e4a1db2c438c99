"""The time partitions a consumer stores into: those it knows exist, and the making of the
ones a batch needs (see :mod:`pubsub.layout`).

Partitions are made ahead of the events that need them, in a short transaction of their own,
through ``add_partition`` (a function that runs as the schema's owner, so the consumer's role
needs no right to create tables). A consumer learns a partition once and then checks a batch's
receive times against what it knows, in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import psycopg

# Partitions remembered; older ones are dropped by retention or rarely written again.
_KNOWN = 64
_AHEAD = timedelta(minutes=1)


class Partitions:
    """One consumer's knowledge of the partitions of ``blocks``."""

    def __init__(self, span: str) -> None:
        self.span = span  # of a new partition, as a PostgreSQL interval
        self._known: list[tuple[datetime, datetime]] = []

    def covers(self, at: datetime) -> bool:
        return any(lo <= at < hi for lo, hi in reversed(self._known))  # the newest first

    def start_of(self, at: datetime) -> datetime:
        """What groups receive times by partition: the start of the known partition holding
        ``at``, or ``at`` itself when none does (a batch of a long backlog can span more
        partitions than are remembered): the events received at one instant lie in one
        partition, whatever its bounds."""
        for lo, hi in reversed(self._known):
            if lo <= at < hi:
                return lo
        return at

    def forget(self) -> None:
        """Forget every partition (one was dropped, or the schema made again)."""
        self._known.clear()

    async def ensure(self, conn: psycopg.AsyncConnection[Any], received: Iterable[str]) -> None:
        """Make sure a partition holds each of the ISO 8601 receive times ``received``."""
        times = {datetime.fromisoformat(text) for text in received}
        if times:
            # The next partition too, a minute ahead of its first event: made early, it is
            # never made while a batch waits for it.
            times.add(max(times) + _AHEAD)
        missing = sorted(at for at in times if not self.covers(at))
        if not missing:
            return
        async with conn.transaction():
            for at in missing:
                if self.covers(at):
                    continue
                cur = await conn.execute(
                    "SELECT lo, hi FROM add_partition(%s, %s::interval)", (at, self.span)
                )
                row = await cur.fetchone()
                if row is None:
                    raise RuntimeError("add_partition returned no partition")
                self._known.append((row[0], row[1]))
        del self._known[:-_KNOWN]
