"""A tenant's own retention (``consumer/tenant_expiry.py``), against the real PostgreSQL: it
expires only that tenant's events past its horizon, counts them out exactly, lets a re-sent
copy be stored again, and runs next to another tenant's load.

Time is simulated with backdated receive times, as in ``tests/test_retention.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from consumer.retention import Sweeper
from consumer.store import Row, Store, copy_rows
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from pubsub.tenants import TenantsError
from readapi import queries
from tests.fix_services import private_settings
from tests.support import assert_volume_counts_the_events

TENANTS = """
[tenants.short]
retention = "7d"
[tenants.long]
[[tokens]]
token = "retention-test-token-0123"
scope = "both"
tenants = ["short", "long"]
"""


def rows(tenant: str, topic: str, ids: list[str], *, days_ago: float) -> list[Row]:
    at = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    body = orjson.dumps(
        [
            {"topic": topic, "event_id": i, "timestamp": at, "source": "tests",
             "payload": {"tenant": tenant}}
            for i in ids
        ]
    )  # fmt: skip
    return copy_rows(orjson.loads(body), at, tenant)


@pytest.fixture
def tenanted(amqp_url: str, database_url: str, tmp_path: Path) -> Iterator[Settings]:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    with private_settings(
        amqp_url, database_url, prefix="tret", retention="30d", retention_batch=50,
        tenants_file=str(path),
    ) as s:  # fmt: skip
        yield s


async def _counts(settings: Settings, tenant: int) -> queries.Counts:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, **connect_kwargs(settings)
    ) as c:
        return await queries.counts(c, max_topics=10, tenant=tenant)


def _left(settings: Settings) -> dict[tuple[str, str], int]:
    with psycopg.connect(settings.database_url, **connect_kwargs(settings)) as c:
        found = c.execute(
            "SELECT t.name, e.topic, count(*) FROM events e JOIN tenants t ON t.id = e.tenant"
            " GROUP BY 1, 2"
        ).fetchall()
        assert_volume_counts_the_events(c)
    return {(str(t), str(topic)): int(n) for t, topic, n in found}


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


async def test_a_tenants_retention_expires_its_old_events_only_next_to_load(
    tenanted: Settings,
) -> None:
    store, sweeper = Store(tenanted, shard=1), Sweeper(tenanted)
    try:
        await store.store(
            [
                ("s-old", rows("short", "t", ids("old", 230), days_ago=10)),
                ("s-new", rows("short", "t", ids("new", 20), days_ago=1)),
                ("s-gone", rows("short", "only-old", ids("x", 5), days_ago=9)),
                ("l-old", rows("long", "t", ids("old", 40), days_ago=10)),
            ]
        )

        async def load() -> int:
            # Another tenant stores while the sweep runs: batches into today's partition.
            stored = 0
            for n in range(20):
                unit = (f"l-live-{n}", rows("long", "live", ids(f"live{n}", 25), days_ago=0))
                stored += (await store.store([unit])).inserted
            return stored

        live, swept = await asyncio.gather(load(), sweeper.sweep())
    finally:
        await store.close()
        await sweeper.close()
    assert swept is not None and swept.events == 235  # in batches of about 50 events
    assert swept.topics == 1  # short's "only-old" is left without events
    assert live == 500
    assert _left(tenanted) == {("short", "t"): 20, ("long", "t"): 40, ("long", "live"): 500}
    with psycopg.connect(tenanted.database_url, **connect_kwargs(tenanted)) as c:
        short, long = (
            int(c.execute("SELECT id FROM tenants WHERE name = %s", (n,)).fetchone()[0])  # type: ignore[index]
            for n in ("short", "long")
        )
    s, lo = await _counts(tenanted, short), await _counts(tenanted, long)
    assert (s.unique_processed, s.expired, s.stored, s.topics) == (255, 235, 20, ["t"])
    assert (lo.unique_processed, lo.expired, lo.stored) == (540, 0, 540)
    # Its keys went with its events: the same event sent again is stored again.
    store = Store(tenanted, shard=2)
    try:
        again = await store.store([("s-again", rows("short", "t", ["old-0"], days_ago=1))])
    finally:
        await store.close()
    assert again.inserted == 1


def test_a_tenants_retention_may_not_pass_the_deployments(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.a]\nretention = "40d"\n')
    settings = Settings.from_env({}, tenants_file=str(path), retention="30d")
    with pytest.raises(TenantsError, match=r"tenants\.a\.retention: longer than PUBSUB_RETENTION"):
        Sweeper(settings)
    # Without a deployment-wide retention, a tenant's own is all there is.
    assert Sweeper(settings.replace(retention=None)).tenancy is not None
