"""``GET /events/histogram``: how many events per time bucket.

Buckets are aligned to multiples of their width since the Unix epoch, so a range is widened
to whole buckets and two ranges that overlap count their common buckets alike. Counts come
from the per-minute rollup (``volume``, ``volume_total``: see :mod:`pubsub.dbschema`) when the
filters name at most a topic and the width is whole minutes, which reads at most one row per
minute and writer whatever the number of events; otherwise from the events themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from pubsub import api, layout
from readapi import queries

# Round widths, in seconds: the automatic choice is the first that cuts the range into at most
# TARGET buckets (and so at least about TARGET / 2.5).
WIDTHS = (
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 90 * 86400, 365 * 86400,
)  # fmt: skip
TARGET = 120
# Without a range and without events: the last hour.
_DEFAULT_SPAN = timedelta(hours=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadRange(ValueError):
    """A range or width that cannot be cut into buckets."""


@dataclass(frozen=True)
class Buckets:
    start: datetime
    width: int  # seconds
    counts: list[int]

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.width * len(self.counts))

    def reply(self) -> api.Histogram:
        step = timedelta(seconds=self.width)
        return {
            "since": queries.rfc3339(self.start),
            "until": queries.rfc3339(self.end),
            "interval": self.width,
            "total": sum(self.counts),
            "buckets": [
                {"start": queries.rfc3339(self.start + i * step), "count": n}
                for i, n in enumerate(self.counts)
            ],
        }


def width_for(span: float) -> int:
    """The round width that cuts ``span`` seconds into at most :data:`TARGET` buckets."""
    for width in WIDTHS:
        if math.ceil(span / width) <= TARGET:
            return width
    return math.ceil(span / TARGET)


def _seconds(ts: datetime) -> float:
    return (ts - _EPOCH).total_seconds()


def align(since: datetime, until: datetime, width: int | None) -> tuple[datetime, int, int]:
    """The first bucket's start, the width and the number of buckets that cover
    ``[since, until)``."""
    if until <= since:
        raise BadRange("until must be after since")
    span = _seconds(until) - _seconds(since)
    width = width or width_for(span)
    first = math.floor(_seconds(since) / width)
    last = math.ceil(_seconds(until) / width)
    count = max(1, last - first)
    if count > api.HISTOGRAM_MAX_BUCKETS:
        raise BadRange(
            f"{count} buckets of {width} s; at most {api.HISTOGRAM_MAX_BUCKETS}: give a wider "
            "interval or a shorter range"
        )
    return _EPOCH + timedelta(seconds=first * width), width, count


# The stored range, from the rollup: its first minute and the end of its last one.
_RANGE_ALL = """
SELECT min(minute), max(minute) + interval '1 minute' FROM volume_total WHERE tenant = %s
"""
_RANGE_TOPIC = """
SELECT min(minute), max(minute) + interval '1 minute' FROM volume
WHERE tenant = %s AND topic = %s
"""
_BIN = "date_bin(make_interval(secs => %s), {column}, '1970-01-01 00:00:00+00')"


async def histogram(
    conn: psycopg.AsyncConnection[Any],
    filters: queries.Filters,
    *,
    since: datetime | None,
    until: datetime | None,
    width: int | None,
) -> Buckets:
    if since is None or until is None:
        if filters.topic is not None:
            cur = await conn.execute(_RANGE_TOPIC, (filters.tenant, filters.topic))
        else:
            cur = await conn.execute(_RANGE_ALL, (filters.tenant,))
        row = await cur.fetchone()
        first, end = (row[0], row[1]) if row and row[0] is not None else (None, None)
        if until is None:
            until = end if end is not None and (since is None or end > since) else None
            if until is None:
                now = datetime.now(UTC)
                until = now if since is None or now > since else since + _DEFAULT_SPAN
        if since is None:
            since = first if first is not None and first < until else until - _DEFAULT_SPAN
    start, width, count = align(since, until, width)
    end = start + timedelta(seconds=width * count)
    params: list[Any] = [width]
    if filters.exact and width % 60 == 0:
        if filters.topic is not None:
            table, where = "volume", ["tenant = %s", "topic = %s"]
            params += [filters.tenant, filters.topic]
        else:
            table, where = "volume_total", ["tenant = %s"]
            params.append(filters.tenant)
        where += ["minute >= %s", "minute < %s"]
        # A minute sums to less than nothing when the sweep removed events the rollup never
        # counted (stored by consumers older than schema 5 after it was filled): none left.
        query = f"""
            SELECT {_BIN.format(column="minute")}, sum(greatest(n, 0))::bigint FROM (
                SELECT minute, sum(n) AS n FROM {table}
                WHERE {" AND ".join(where)} GROUP BY 1
            ) AS minutes GROUP BY 1
        """
    else:
        blocks: list[str] = []
        filters.blocks_sql(blocks, params)
        span = f"interval '{layout.BLOCK_SPAN}'"
        blocks += ["max_ts >= %s", f"min_ts > %s::timestamptz - {span}", "min_ts < %s"]
        params += [start, start, end]
        where = []
        filters.sql(where, params)
        where += ["ts >= %s", "ts < %s"]
        query = f"""
            SELECT {_BIN.format(column="ts")}, count(*)
            FROM {layout.events_of(" AND ".join(blocks))}
            WHERE {" AND ".join(where)} GROUP BY 1
        """
    cur = await conn.execute(query, [*params, start, end])
    counts = [0] * count
    for bucket, n in await cur.fetchall():
        i = int((_seconds(bucket) - _seconds(start)) // width)
        if 0 <= i < count:
            counts[i] += int(n)
    return Buckets(start, width, counts)
