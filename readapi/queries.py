"""SQL of the read API: pages of events (keyset pagination) and the statistics."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg


class BadCursor(ValueError):
    """A pagination cursor that this service did not produce."""


@dataclass(frozen=True)
class Cursor:
    """Position after the last event of a page: ``(timestamp, topic, event_id)``."""

    ts: datetime
    topic: str
    event_id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.ts.isoformat(), self.topic, self.event_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ts, topic, event_id = orjson.loads(raw)
            if not (isinstance(ts, str) and isinstance(topic, str) and isinstance(event_id, str)):
                raise ValueError
            parsed = datetime.fromisoformat(ts)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise BadCursor("cursor is not one this service produced") from None
        if parsed.tzinfo is None or "\x00" in topic or "\x00" in event_id:
            raise BadCursor("cursor is not one this service produced")
        return cls(parsed, topic, event_id)


@dataclass(frozen=True)
class EventQuery:
    topic: str | None
    since: datetime | None
    until: datetime | None
    after: Cursor | None
    limit: int


_EPOCH_MIN = datetime(1, 1, 1, tzinfo=UTC)


async def events_page(
    conn: psycopg.AsyncConnection[Any], q: EventQuery
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of events ordered by ``(timestamp, topic, event_id)``, and the next cursor."""
    where = ["TRUE"]
    params: list[Any] = []
    if q.topic is not None:
        where.append("topic = %s")
        params.append(q.topic)
    if q.since is not None:
        where.append("ts >= %s")
        params.append(q.since)
    if q.until is not None:
        where.append("ts < %s")
        params.append(q.until)
    if q.after is not None:
        if q.topic is not None:
            # Within one topic the index (topic, ts, event_id) orders the page.
            where.append("(ts, event_id) > (%s, %s)")
            params += [q.after.ts, q.after.event_id]
        else:
            where.append("(ts, topic, event_id) > (%s, %s, %s)")
            params += [q.after.ts, q.after.topic, q.after.event_id]
    order = "ts, event_id" if q.topic is not None else "ts, topic, event_id"
    query = (
        "SELECT topic, event_id, ts, source, payload::text FROM events"
        f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %s"
    )
    params.append(q.limit + 1)
    cur = await conn.execute(query, params)
    rows = await cur.fetchall()
    page = rows[: q.limit]
    events = [
        {
            "topic": topic,
            "event_id": event_id,
            "timestamp": rfc3339(ts),
            "source": source,
            "payload": orjson.Fragment(payload),
        }
        for topic, event_id, ts, source, payload in page
    ]
    after = None
    if len(rows) > q.limit:
        topic, event_id, ts, _, _ = page[-1]
        after = Cursor(ts, topic, event_id)
    return events, after


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# One statement, so one snapshot: the counters and the topics agree with each other. The
# consumers keep ``topics`` in the transactions that store events, so listing them is one short
# index scan however many events and topics there are.
_COUNTS = """
SELECT coalesce(sum(received), 0), coalesce(sum(unique_processed), 0),
       coalesce(sum(duplicate_dropped), 0), coalesce(sum(expired), 0),
       (SELECT count(*) FROM topics),
       ARRAY(SELECT topic FROM topics ORDER BY topic LIMIT %s)
FROM counters
"""


@dataclass(frozen=True)
class Counts:
    received: int
    unique_processed: int
    duplicate_dropped: int
    expired: int
    topic_count: int
    topics: list[str]
    topics_truncated: bool

    @property
    def stored(self) -> int:
        """Events stored now: every unique one, less those the retention removed."""
        return self.unique_processed - self.expired


async def counts(conn: psycopg.AsyncConnection[Any], *, max_topics: int) -> Counts:
    cur = await conn.execute(_COUNTS, (max_topics + 1,))
    row = await cur.fetchone()  # sums always give one row
    if row is None:
        raise RuntimeError("the counters query returned no row")
    received, unique, duplicate, expired, topic_count = (int(v) for v in row[:5])
    topics = list(row[5])
    return Counts(
        received, unique, duplicate, expired, topic_count,
        topics[:max_topics], len(topics) > max_topics,
    )  # fmt: skip
