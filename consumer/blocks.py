"""A batch's events cut into blocks by the consumer (the layout: :mod:`pubsub.layout`).

An event arrives as a :class:`Row`, made once per event as its message is decoded. Storing a
batch then takes two steps around one statement of PostgreSQL's:

1. :func:`cut`: the batch's events, one per key, grouped by tenant, topic, partition (of receive
   time) and hour of timestamp, sorted by ``(ts, event_id)`` and cut at ``BLOCK_EVENTS`` events
   or about ``BLOCK_BYTES``. Each piece is a :class:`Chunk`; the database numbers them and
   inserts the keys, each pointing to its chunk's block, and answers which keys were new.
2. :func:`blocks`: the chunks' new events as block rows, each line carrying the storing
   transaction, and the counts by minute that ``/stats`` and the histogram read.

Sorting, grouping and joining lines happen here rather than in SQL because PostgreSQL's CPU is
what the whole system runs short of first, and it is one process for every consumer: the same
work costs the consumer's Python less (see docs/performance.md, "Storage").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from pubsub import layout

_MINUTE = timedelta(minutes=1)
# What a line costs a block besides its payload (as the merge counts it: see consumer.merge).
_LINE_BYTES = 64


class Row(NamedTuple):
    """One event as the consumer stores it. The fields begin with the block's order, so that a
    chunk sorts its rows as they are (no key function, no tuple made per row)."""

    at: datetime  # its timestamp, in UTC without a time zone (see utc)
    event_id: str
    tenant: str
    topic: str
    key: bytes  # pubsub.layout.event_key(event_id)
    received: str  # when ingest received it, ISO 8601 (the same for a whole message)
    head: str  # its line up to the storing transaction: event_id, ts, source, received_at
    payload: str  # JSON text
    place: tuple[str, str, str]  # (tenant, topic, event_id): which event it is


@dataclass(slots=True)
class Chunk:
    """Events of one tenant, topic, partition and hour, in ``(ts, event_id)`` order: a block
    once the keys say which of them are new."""

    tenant: str
    topic: str
    received: datetime  # the latest receive time of its events (see utc)
    rows: list[Row] = field(default_factory=list)


def cut(rows: Iterable[Row], received: Mapping[str, tuple[datetime, datetime]]) -> list[Chunk]:
    """``rows`` (one per key) in chunks; ``received`` maps each row's receive time to that time
    (see :func:`utc`) and the start of the partition it falls in."""
    groups: dict[tuple[str, str, datetime, int], list[Row]] = {}
    for row in rows:
        where = (row.tenant, row.topic, received[row.received][1], hour(row.at))
        group = groups.get(where)
        if group is None:
            groups[where] = [row]
        else:
            group.append(row)
    chunks: list[Chunk] = []
    for (tenant, topic, _, _), group in groups.items():
        # By (at, event_id), the rows' first fields, never equal in a group (one row per key).
        # Python orders str by code point, as COLLATE "C" orders UTF-8: the lines' order.
        group.sort()
        chunk = Chunk(tenant, topic, received[group[0].received][0])
        size = 0
        for row in group:
            at = received[row.received][0]
            grown = size + len(row.payload) + _LINE_BYTES
            full = len(chunk.rows) >= layout.BLOCK_EVENTS or grown > layout.BLOCK_BYTES
            if chunk.rows and full:
                chunks.append(chunk)
                chunk, grown = Chunk(tenant, topic, at), len(row.payload) + _LINE_BYTES
            chunk.rows.append(row)
            chunk.received = max(chunk.received, at)
            size = grown
        chunks.append(chunk)
    return chunks


def key_order(chunks: Sequence[Chunk]) -> tuple[list[int], list[bytes]]:
    """Every row's chunk (its index in ``chunks``, from 1) and key, in the one order every
    consumer inserts keys in (tenant, topic, key): concurrent batches with keys in common then
    wait for each other instead of deadlocking."""
    order = sorted(
        (chunk.tenant, chunk.topic, row.key, n)
        for n, chunk in enumerate(chunks, 1)
        for row in chunk.rows
    )
    return [n for *_, n in order], [key for _, _, key, _ in order]


@dataclass(slots=True)
class Blocks:
    """The block rows of a batch's new events, as columns, and what they add to the counts."""

    tenant: list[int] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)
    id: list[int] = field(default_factory=list)
    received: list[datetime] = field(default_factory=list)
    min_ts: list[datetime] = field(default_factory=list)
    max_ts: list[datetime] = field(default_factory=list)
    # The event ids at min_ts and at max_ts, one per line: which comes first is the
    # database's collation's to say.
    firsts: list[str] = field(default_factory=list)
    lasts: list[str] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    # New events by (tenant id, topic, minute of timestamp), and by tenant name.
    volume: dict[tuple[int, str, datetime], int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)

    def pieces(self, size: int) -> Iterator[dict[str, Sequence[object]]]:
        """The block columns by name, in groups of about ``size`` characters of lines (one
        block at least): one statement each, so that no parameter grows with the batch."""
        columns: dict[str, Sequence[object]] = {
            "tenant": self.tenant, "topic": self.topic, "id": self.id,
            "received": self.received, "min_ts": self.min_ts, "max_ts": self.max_ts,
            "firsts": self.firsts, "lasts": self.lasts, "n": self.n, "events": self.events,
        }  # fmt: skip
        start = length = 0
        for end, text in enumerate(self.events, 1):
            length += len(text)
            if length >= size or end == len(self.events):
                yield {name: column[start:end] for name, column in columns.items()}
                start, length = end, 0


def blocks(
    chunks: Sequence[Chunk],
    *,
    ids: Sequence[int],
    tenant_ids: Sequence[int],
    new: Iterable[tuple[int, bytes]],
    txid: str,
) -> Blocks:
    """The blocks of ``chunks`` (numbered ``ids``, of tenants ``tenant_ids``) holding only
    their ``new`` events, as ``(block id, key)``, stored by transaction ``txid``."""
    fresh: dict[int, set[bytes]] = {}
    for block, key in new:
        fresh.setdefault(block, set()).add(key)
    out = Blocks()
    middle = txid + "\t"
    for chunk, block, tenant in zip(chunks, ids, tenant_ids, strict=True):
        keys = fresh.get(block)
        if not keys:
            continue
        rows = [row for row in chunk.rows if row.key in keys]
        first, last = rows[0].at, rows[-1].at
        out.tenant.append(tenant)
        out.topic.append(chunk.topic)
        out.id.append(block)
        out.received.append(chunk.received)
        out.min_ts.append(first)
        out.max_ts.append(last)
        out.firsts.append("\n".join(_ids_at(rows, first)))
        out.lasts.append("\n".join(_ids_at(reversed(rows), last)))
        out.n.append(len(rows))
        out.events.append("\n".join([f"{r.head}{middle}{r.payload}" for r in rows]))
        # In time order, a minute's events are a run: counted once per run.
        volume = out.volume
        lo = minute(first)
        hi, n = lo + _MINUTE, 0
        for row in rows:
            if row.at >= hi:
                where = (tenant, chunk.topic, lo)
                volume[where] = volume.get(where, 0) + n
                lo = minute(row.at)
                hi, n = lo + _MINUTE, 0
            n += 1
        where = (tenant, chunk.topic, lo)
        volume[where] = volume.get(where, 0) + n
        out.stored[chunk.tenant] = out.stored.get(chunk.tenant, 0) + len(rows)
    return out


def _ids_at(rows: Iterable[Row], at: datetime) -> Iterator[str]:
    """The event ids of the leading ``rows`` whose timestamp is ``at``."""
    for row in rows:
        if row.at != at:
            return
        yield row.event_id


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with an offset as :func:`utc` makes it; ValueError if it is not one.
    Times in UTC (what ingest sends, mostly) are read without the offset, three times faster
    than converting them."""
    if text.endswith("+00:00"):
        at = _parse(text[:-6])
    elif text.endswith("Z"):
        at = _parse(text[:-1])
    else:
        at = _parse(text)
        if at.tzinfo is None:
            raise ValueError(f"{text[:60]!r} has no offset")
        return utc(at)
    if at.tzinfo is not None:
        raise ValueError(f"{text[:60]!r} has two offsets")
    return at


_parse = datetime.fromisoformat


def utc(at: datetime) -> datetime:
    """An aware time as its UTC time without a time zone: how rows hold their times. Aware
    times compare and subtract through their offsets, ten to twenty times slower; a batch
    compares each timestamp a dozen times as it sorts."""
    return at.astimezone(UTC).replace(tzinfo=None)


# Of times as utc() makes them. The bins of PostgreSQL's date_bin in layout.BLOCK_BIN and
# dbschema.MINUTE (origin 2000-01-01 UTC): blocks and counts fall in the hours and minutes that
# the SQL of reads, merges and retention computes.
def hour(at: datetime) -> int:
    """The hour ``at`` falls in, counted from 0001-01-01 (a number: this runs per event, and
    ``replace`` takes ten times as long)."""
    return at.toordinal() * 24 + at.hour


def minute(at: datetime) -> datetime:
    """The minute ``at`` falls in."""
    return at.replace(second=0, microsecond=0)
