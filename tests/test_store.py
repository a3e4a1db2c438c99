"""The consumer's storage against the real PostgreSQL: races, redeliveries, counters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest

from consumer.store import Row, Store, copy_rows
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from tests.fix_services import private_settings

NOW = "2025-10-21T10:00:00+00:00"


def rows(topic: str, ids: list[int]) -> list[Row]:
    body = orjson.dumps(
        [
            {
                "topic": topic,
                "event_id": f"e{i}",
                "timestamp": NOW,
                "source": "tests",
                "payload": {"i": i, "text": "back\\slash"},
            }
            for i in ids
        ]
    )
    return copy_rows(orjson.loads(body), NOW)


def counters(db: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = db.execute(
        "SELECT coalesce(sum(received),0), coalesce(sum(unique_processed),0),"
        " coalesce(sum(duplicate_dropped),0) FROM counters"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_overlapping_batches_in_opposite_orders_never_deadlock(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    topic = f"race-{uuid.uuid4().hex[:6]}"
    stores = [Store(settings, shard=1), Store(settings, shard=2)]
    before = counters(db)
    forward, backward = list(range(2000)), list(range(2000))[::-1]
    try:
        for rnd in range(10):
            results = await asyncio.gather(
                stores[0].store([(f"{topic}-a{rnd}", rows(topic, forward))]),
                stores[1].store([(f"{topic}-b{rnd}", rows(topic, backward))]),
            )
            assert sum(r.received for r in results) == 4000
    finally:
        for s in stores:
            await s.close()
    count = db.execute("SELECT count(*) FROM events WHERE topic = %s", (topic,)).fetchone()
    assert count == (2000,)
    assert volume(db, topic) == 2000
    received, unique, dropped = (a - b for a, b in zip(counters(db), before, strict=True))
    assert (received, unique, dropped) == (40_000, 2000, 38_000)


async def test_a_redelivered_message_is_not_counted_twice(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    topic = f"redeliver-{uuid.uuid4().hex[:6]}"
    store = Store(settings, shard=3)
    before = counters(db)
    try:
        first = await store.store([("m-" + topic, rows(topic, [1, 2, 2]))])
        again = await store.store(
            [
                ("m-" + topic, rows(topic, [1, 2, 2])),
                ("n-" + topic, rows(topic, [2, 3])),
                ("n-" + topic, rows(topic, [2, 3])),  # its redelivery, in the same batch
            ]
        )
    finally:
        await store.close()
    assert (first.received, first.inserted, first.redelivered) == (3, 2, 0)
    assert (again.received, again.inserted, again.redelivered) == (2, 1, 2)
    delta = tuple(a - b for a, b in zip(counters(db), before, strict=True))
    assert delta == (5, 3, 2)
    assert volume(db, topic) == 3  # the rollup counts what was inserted, once


@pytest.fixture
def own(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """A schema of its own: an event whose key is gone while its block stays (as below) is
    a state no other test expects to read."""
    with private_settings(amqp_url, database_url, prefix="expiry") as s:
        yield s


@pytest.fixture
def own_db(own: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(own.database_url, autocommit=True, **connect_kwargs(own)) as conn:
        yield conn


async def stored_with_e2_expired(
    settings: Settings, db: psycopg.Connection[Any], topic: str
) -> Store:
    """A store that stored unit ``m-<topic>`` (events e1 and e2), after which e2's key went,
    as retention takes it."""
    store = Store(settings, shard=3)
    await store.store([("m-" + topic, rows(topic, [1, 2]))])
    db.execute(
        "DELETE FROM keys WHERE topic = (SELECT id FROM topics WHERE topic = %s)"
        " AND key = event_key('e2')",
        (topic,),
    )
    return store


async def test_an_event_of_a_unit_stored_before_is_stored_from_a_new_unit_beside_it(
    own: Settings, own_db: psycopg.Connection[Any]
) -> None:
    """A batch holds a redelivered unit and a new one with an event in common, first in the
    redelivered one; that event's key is gone since (retention dropped it). The new unit's
    copy is stored: the first copy of a unit stored before never stands in for it."""
    topic = f"late-{uuid.uuid4().hex[:6]}"
    store = await stored_with_e2_expired(own, own_db, topic)
    try:
        before = counters(own_db)
        later = [row._replace(payload='{"copy":"later"}') for row in rows(topic, [2, 3])]
        again = await store.store([("m-" + topic, rows(topic, [1, 2])), ("n-" + topic, later)])
    finally:
        await store.close()
    assert (again.received, again.inserted, again.redelivered) == (2, 2, 1)
    delta = tuple(a - b for a, b in zip(counters(own_db), before, strict=True))
    assert delta == (2, 2, 0)
    # e2's first block is still there (its key went); the new one holds the later copy.
    found = own_db.execute(
        "SELECT e.event_id, e.payload::text FROM events e JOIN keys k ON k.block = e.block"
        " AND k.key = event_key(e.event_id) WHERE e.topic = %s ORDER BY 1",
        (topic,),
    ).fetchall()
    assert [(i, orjson.loads(p)) for i, p in found] == [
        ("e1", {"i": 1, "text": "back\\slash"}),
        ("e2", {"copy": "later"}),
        ("e3", {"copy": "later"}),
    ]


async def test_a_unit_stored_before_stores_nothing_again_once_its_events_expired(
    own: Settings, own_db: psycopg.Connection[Any]
) -> None:
    """A unit's ledger key outlives one of its events (retention took it): its redelivery is
    still a unit stored before, and brings nothing back."""
    topic = f"gone-{uuid.uuid4().hex[:6]}"
    store = await stored_with_e2_expired(own, own_db, topic)
    try:
        before = counters(own_db)
        again = await store.store([("m-" + topic, rows(topic, [1, 2]))])
    finally:
        await store.close()
    assert (again.received, again.inserted, again.redelivered) == (0, 0, 1)
    assert counters(own_db) == before
    keys = own_db.execute(
        "SELECT count(*) FROM keys WHERE topic = (SELECT id FROM topics WHERE topic = %s)",
        (topic,),
    ).fetchone()
    assert keys == (1,)  # e2's key is not back either
    assert volume(own_db, topic) == 2


async def test_a_batch_spanning_more_partitions_than_a_consumer_remembers_is_stored(
    own: Settings, own_db: psycopg.Connection[Any]
) -> None:
    """A backlog at a low rate: one batch of messages received over 80 minutes, with a
    retention of an hour (partitions of a minute), more than the 64 a consumer remembers."""
    topic = f"span-{uuid.uuid4().hex[:6]}"
    store = Store(own.replace(retention="1h"), shard=3)
    start = datetime.now(UTC) - timedelta(minutes=80)
    try:
        stored = await store.store(
            [
                (f"{topic}-{n}", copy_rows(orjson.loads(orjson.dumps([
                    {"topic": topic, "event_id": f"e{n}", "timestamp": NOW, "source": "s",
                     "payload": {}}
                ])), (start + timedelta(minutes=n)).isoformat()))
                for n in range(80)
            ]
        )  # fmt: skip
    finally:
        await store.close()
    assert (stored.received, stored.inserted) == (80, 80)
    parts = own_db.execute(
        "SELECT count(DISTINCT tableoid) FROM blocks WHERE topic = %s", (topic,)
    ).fetchone()
    assert parts == (80,)  # one partition a minute, each event in its own


def volume(db: psycopg.Connection[Any], topic: str) -> int:
    """The topic's events by the per-minute rollup."""
    row = db.execute("SELECT coalesce(sum(n), 0) FROM volume WHERE topic = %s", (topic,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_awkward_text_survives_the_copy_exactly(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    topic = f"text-{uuid.uuid4().hex[:6]}"
    payload = {
        "q": 'say "hi"',
        "b": "a\\b\\\\c",
        "u": "日本語 🎉",
        "nl": "line\nbreak\ttab",
        "n": [1.5, -2, None, True],
    }
    body = orjson.dumps(
        [
            {
                "topic": topic,
                "event_id": "x\\y",
                "timestamp": NOW,
                "source": "src\\",
                "payload": payload,
            }
        ]
    )
    store = Store(settings, shard=4)
    try:
        await store.store([("m-" + topic, copy_rows(orjson.loads(body), NOW))])
    finally:
        await store.close()
    row = db.execute(
        "SELECT event_id, source, payload FROM events WHERE topic = %s", (topic,)
    ).fetchone()
    assert row == ("x\\y", "src\\", payload)


async def test_ledger_keys_past_the_retention_are_forgotten(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    topic = f"prune-{uuid.uuid4().hex[:6]}"
    store = Store(settings, shard=5)
    try:
        await store.store([("old-" + topic, rows(topic, [1])), ("new-" + topic, rows(topic, [2]))])
        db.execute(
            "UPDATE ledger SET seen_at = now() - interval '2 hours' WHERE key = %s",
            ("old-" + topic,),
        )
        assert await store.prune(older_than=3600) >= 1
    finally:
        await store.close()
    keys = {k for (k,) in db.execute("SELECT key FROM ledger WHERE key LIKE %s", (f"%{topic}",))}
    assert keys == {"new-" + topic}


async def test_a_batch_of_two_tenants_stores_and_counts_each_under_its_own(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    """The same topic and ids from two tenants in one batch: both stored, each counted as its
    tenant's (the consumers' metrics by tenant read ``by_tenant``)."""
    topic = f"tenants-{uuid.uuid4().hex[:6]}"
    events = [
        {"topic": topic, "event_id": str(i), "timestamp": "2025-10-21T10:00:00Z",
         "source": "s", "payload": {}}
        for i in (1, 2, 2)
    ]  # fmt: skip
    store = Store(settings, shard=5)
    try:
        stored = await store.store(
            [
                (f"a-{topic}", copy_rows(events, NOW, "store-a")),
                (f"b-{topic}", copy_rows(events[:1], NOW, "store-b")),
            ]
        )
    finally:
        await store.close()
    assert (stored.received, stored.inserted) == (4, 3)
    assert stored.by_tenant == {"store-a": (3, 2), "store-b": (1, 1)}
    found = db.execute(
        "SELECT t.name, count(*) FROM events e JOIN tenants t ON t.id = e.tenant"
        " WHERE e.topic = %s GROUP BY 1 ORDER BY 1",
        (topic,),
    ).fetchall()
    assert found == [("store-a", 2), ("store-b", 1)]
