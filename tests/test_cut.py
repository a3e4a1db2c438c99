"""The consumer's cutting of a batch into blocks (``consumer/blocks.py``), on its own: the
layout's rules (``pubsub/layout.py``) hold for any batch, and the bins agree with PostgreSQL's.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from consumer import blocks
from consumer.blocks import Row
from consumer.store import copy_rows
from pubsub import layout
from pubsub.message import Undecodable

RECEIVED = "2026-03-01T12:00:00+00:00"
PARTITION = datetime(2026, 3, 1, tzinfo=UTC)
TIMES = {RECEIVED: (blocks.utc(datetime.fromisoformat(RECEIVED)), PARTITION)}


def utc_hour(at: datetime) -> datetime:
    """The hour of a row's time (UTC, without a time zone)."""
    assert at.tzinfo is None
    return at.replace(minute=0, second=0, microsecond=0)


def batch(rng: random.Random, n: int, *, topics: int = 3, size: int = 100) -> list[Row]:
    start = datetime(2026, 3, 1, 9, 58, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=-3, minutes=-30))]
    events: list[dict[str, Any]] = [
        {
            "topic": f"t{rng.randrange(topics)}",
            "event_id": f"e{i}",
            "timestamp": (start + timedelta(seconds=rng.randrange(3 * 3600)))
            .astimezone(rng.choice(zones))
            .isoformat(),
            "source": "s",
            "payload": {"text": "x" * rng.randrange(size)},
        }
        for i in range(n)
    ]
    return copy_rows(events, RECEIVED)


@pytest.mark.parametrize("seed", range(20))
def test_chunks_keep_the_layouts_rules(seed: int) -> None:
    rng = random.Random(seed)
    rows = batch(rng, rng.randrange(1, 2000), size=rng.choice((10, 2000)))
    chunks = blocks.cut(rows, TIMES)
    assert sorted(r for c in chunks for r in c.rows) == sorted(rows)  # every row, once
    for chunk in chunks:
        assert chunk.rows == sorted(chunk.rows, key=lambda r: (r.at, r.event_id))
        assert {(r.tenant, r.topic) for r in chunk.rows} == {(chunk.tenant, chunk.topic)}
        assert utc_hour(chunk.rows[0].at) == utc_hour(chunk.rows[-1].at)
        assert len(chunk.rows) <= layout.BLOCK_EVENTS
        text = sum(len(r.payload) + 64 for r in chunk.rows)
        assert len(chunk.rows) == 1 or text <= layout.BLOCK_BYTES
    # Cut only where a rule says so: a chunk is full when the next of its group begins.
    for a, b in itertools.pairwise(chunks):
        if a.topic == b.topic and utc_hour(a.rows[-1].at) == utc_hour(b.rows[0].at):
            grown = sum(len(r.payload) + 64 for r in [*a.rows, b.rows[0]])
            assert len(a.rows) == layout.BLOCK_EVENTS or grown > layout.BLOCK_BYTES


def test_blocks_hold_only_new_events_with_their_bounds_and_counts() -> None:
    rng = random.Random(7)
    rows = batch(rng, 600, topics=2)
    chunks = blocks.cut(rows, TIMES)
    ids = list(range(100, 100 + len(chunks)))
    kept = {(i, r.key) for i, c in zip(ids, chunks, strict=True) for r in c.rows[::2]}
    made = blocks.blocks(chunks, ids=ids, tenant_ids=[0] * len(chunks), new=kept, txid="42")
    assert sum(made.n) == len(kept) == made.stored["default"] == sum(made.volume.values())
    for n, text in enumerate(made.events):
        lines = [line.split("\t") for line in text.split("\n")]
        assert len(lines) == made.n[n]
        assert {line[4] for line in lines} == {"42"}
        ats = [blocks.utc(datetime.fromisoformat(line[1])) for line in lines]
        assert (ats[0], ats[-1]) == (made.min_ts[n], made.max_ts[n])
        assert made.firsts[n].split("\n") == [line[0] for line, at in zip(lines, ats, strict=True)
                                              if at == ats[0]]  # fmt: skip
        assert made.lasts[n].split("\n") == [line[0] for line, at in zip(lines, ats, strict=True)
                                             if at == ats[-1]][::-1]  # fmt: skip
    pieces = list(made.pieces(4096))
    assert [i for p in pieces for i in p["id"]] == made.id
    assert all(sum(map(len, p["events"])) < 4096 + 64 * 1024 for p in pieces)  # type: ignore[arg-type]


def test_a_timestamp_without_an_offset_or_not_a_time_is_refused() -> None:
    event = {"topic": "t", "event_id": "e", "source": "s", "payload": {}}
    for ts in ("2026-03-01T12:00:00", "yesterday", 12):
        with pytest.raises(Undecodable):
            copy_rows([{**event, "timestamp": ts}], RECEIVED)


def test_hours_and_minutes_are_postgresqls(database_url: str) -> None:
    """The consumer's bins and ``date_bin`` in SQL (reads, merges, retention) agree, whatever
    the offset, across the years the schema allows."""
    rng = random.Random(3)
    times = [
        datetime(rng.randrange(2, 9999), 1, 1, tzinfo=UTC)
        + timedelta(seconds=rng.randrange(364 * 86400), microseconds=rng.randrange(10**6))
        for _ in range(500)
    ]
    times += [datetime(2026, 3, 1, 10, tzinfo=UTC) - timedelta(microseconds=1)]
    with psycopg.connect(database_url) as conn:
        got = conn.execute(
            f"SELECT extract(epoch FROM {layout.BLOCK_BIN.format(column='t')})::bigint / 3600,"
            " date_bin('1 minute', t, '2000-01-01 00:00:00+00')"
            " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            (times,),
        ).fetchall()
    # The consumer counts hours from year 1, SQL here from 1970: a constant apart.
    offsets = set()
    for at, (sql_hour, sql_minute) in zip(times, got, strict=True):
        assert blocks.minute(blocks.utc(at)).replace(tzinfo=UTC) == sql_minute
        offsets.add(blocks.hour(blocks.utc(at)) - sql_hour)
    assert len(offsets) == 1
