"""What the soak checks at the end: every event ingest accepted was received, and each
unique one is stored once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import psycopg

from publisher import watch
from pubsub import database
from pubsub.settings import Settings
from stack.supervisor import Supervisor


class Counts:
    def __init__(self, settings: Settings, stack: Supervisor, http: aiohttp.ClientSession) -> None:
        self.settings, self.stack, self.http = settings, stack, http

    async def accepted(self) -> float:
        return await watch.metric(
            self.http, [self.stack.ingest_url], "pubsub_ingest_events_accepted_total"
        )

    def verify(self, before: dict[str, int], after: dict[str, int], *, failed: int) -> list[str]:
        problems = []
        d = {k: after[k] - before[k] for k in after}
        if failed:
            problems.append(f"{failed} events were never accepted")
        if d["accepted"] != d["received"]:
            problems.append(f"accepted {d['accepted']} != received {d['received']}")
        if d["unique"] + d["duplicate"] != d["received"]:
            problems.append(f"unique + duplicate != received: {d}")
        with psycopg.connect(
            self.settings.database_url, **database.connect_kwargs(self.settings)
        ) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        if row is None or row[0] != d["unique"]:
            problems.append(f"{row} rows stored but unique_processed grew {d['unique']}")
        return problems

    def target(self, before: dict[str, int]) -> Callable[[], Awaitable[int]]:
        """``received`` once all that ingest accepted since ``before`` is stored."""

        async def goal() -> int:
            return before["received"] + int(await self.accepted()) - before["accepted"]

        return goal

    async def counts(self) -> dict[str, int]:
        stats = await watch.fetch_stats(self.http, self.stack.read_url)
        return {
            "accepted": int(await self.accepted()),
            "received": int(stats["received"]),
            "unique": int(stats["unique_processed"]),
            "duplicate": int(stats["duplicate_dropped"]),
        }
