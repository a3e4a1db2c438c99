"""``python -m bench.footprint --base REV``: the bytes and the PostgreSQL CPU time per stored
event, of the schema and the batch store of two commits, in one run.

Each run stores the same events through one commit's consumer store (``consumer.store.Store``)
into a fresh schema that commit's ``pubsub.dbschema`` created, as competing consumers would:
transactions of 5,000 events in units of 500 (one ledger key each), over 100 topics, random
event ids, 20% of the events repeated, payloads that read like logs. It reports:

- the bytes on disk per stored event of each table and index (heap with TOAST; after a VACUUM),
  and their sum: what issue-sized comparisons of "bytes per event" mean;
- how much of the indexes of ``events`` a ``REINDEX`` gives back: what page splits left empty;
- the CPU seconds PostgreSQL's processes spent while the events were stored, per stored event;
- the events stored per second.

Base and head alternate, ``--rounds`` times, and the table gives the medians and the ratio of
head to base. The measuring code runs in a child process with the commit's packages first on
the path (a git worktree of it), so the base needs no part of this tool; it uses only what
every commit of the schema has had (``dbschema.ensure`` and ``drop``, ``Store``,
``copy_rows``).

:mod:`bench.storage` prints this comparison too when given ``--base``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

# Relations of the schema that the table names on their own, of a schema with an events table
# (5 and before) or with blocks (6); the rest is summed as "other".
_NAMED = ("events", "events_pkey", "events_topic_ts", "events_ts", "events_received_at",
          "events_txid", "blocks", "blocks' indexes", "keys", "keys_pkey",
          "ledger", "ledger_pkey", "ledger_seen_at")  # fmt: skip
# The partitions of blocks, and their indexes (named by PostgreSQL after the partition).
_PARTITION = re.compile(r"blocks_\d{8}t\d{6}_\d+")


def _group(relation: str) -> str:
    """The row of the table a relation counts in."""
    if _PARTITION.fullmatch(relation):
        return "blocks"
    if _PARTITION.match(relation):
        return "blocks' indexes"
    return relation


_UNIT = 500
_PER_STORE = 10
EVENTS = 200_000
TOPICS = 100


# Like bench.store's log_payload, but seeded and defined here, for the same reason as above.
def _payload(n: int, rng: random.Random) -> dict[str, Any]:
    status = rng.choice((200, 200, 200, 201, 204, 301, 400, 404, 500, 503))
    return {
        "level": "error" if status >= 500 else "info",
        "msg": f"{rng.choice(('GET', 'POST', 'PUT'))} /api/orders/{n * 7919 % 100_000} {status}",
        "user": f"u{rng.randrange(50_000)}",
        "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        "duration_ms": rng.randrange(2_000),
    }


def _events(count: int, topics: int) -> list[dict[str, Any]]:
    """The same events in every run: seeded, 20% of them an earlier one again."""
    rng = random.Random(20261203)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[dict[str, Any]] = []
    for n in range(count):
        if n % 5 == 4:
            out.append(out[rng.randrange(len(out))])
            continue
        out.append({
            "topic": f"topic-{rng.randrange(topics)}",
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": (start + timedelta(milliseconds=n)).isoformat(),
            "source": f"host-{rng.randrange(20)}",
            "payload": _payload(n, rng),
        })  # fmt: skip
    return out


# What bench.cpu measures for PostgreSQL, read here again: this runs in the child, where the
# package ``bench`` is the measured commit's (the base's may lack it or differ).
def _postgres_cpu() -> float:
    total = 0.0
    for p in psutil.process_iter(["name", "username"]):
        if p.info["name"] == "postgres" and p.info["username"] == "postgres":
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


async def _merge_all(settings: Any) -> None:
    """Merge small blocks until none is left to merge (a head with merges only)."""
    from consumer.merge import Merger

    merger = Merger(settings.replace(merge_after=0.001), duty=1.0)
    try:
        while True:
            done = await merger.merge()
            if done is None or done.blocks == 0:
                return
    finally:
        await merger.close()


async def _measure(count: int, topics: int, small: int | None = None) -> dict[str, Any]:
    """One run, in the child: the commit on the path is the one measured. With ``small`` (a
    commit with merges), transactions of that many events, merged and vacuumed every tenth of
    the run, as autovacuum would, so that later blocks reuse what merges freed."""
    from psycopg import AsyncConnection, sql

    from consumer.store import Store, copy_rows
    from pubsub import dbschema
    from pubsub.settings import Settings

    settings = Settings.from_env(db_schema=f"footprint_{uuid.uuid4().hex[:8]}", log_level="WARNING")
    events = _events(count, topics)
    received = datetime.now(UTC).isoformat()
    unit = min(_UNIT, small) if small else _UNIT
    per_store = max(small // unit, 1) if small else _PER_STORE
    units = [
        (f"footprint-{n}", copy_rows(events[n : n + unit], received)) for n in range(0, count, unit)
    ]
    await dbschema.ensure(settings)
    store = Store(settings, shard=0)
    await store.connect()
    try:
        async with await AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db_schema))
            )

            async def vacuum() -> None:
                cur = await conn.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
                for (table,) in await cur.fetchall():
                    await conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(str(table))))

            cpu, started = _postgres_cpu(), time.perf_counter()
            stores = range(0, len(units), per_store)
            for i, n in enumerate(stores):
                await store.store(units[n : n + per_store])
                if small and (i + 1) % max(len(stores) // 10, 1) == 0:
                    await _merge_all(settings)
                    await vacuum()
            elapsed, cpu = time.perf_counter() - started, _postgres_cpu() - cpu
            await vacuum()
            cur = await conn.execute("SELECT count(*) FROM events")
            row = await cur.fetchone()
            stored = int(row[0]) if row else 0
            # A table's own size with its TOAST; each index on its own.
            cur = await conn.execute(
                "SELECT c.relname, CASE WHEN c.relkind = 'r' THEN pg_table_size(c.oid)"
                " ELSE pg_relation_size(c.oid) END"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i', 'm')"
            )
            sizes: dict[str, int] = {}
            for name, size in await cur.fetchall():
                group = _group(str(name))
                sizes[group] = sizes.get(group, 0) + int(size)
            # What rebuilding the indexes of the table with a row per event would give back:
            # pages that split while the events came in are packed again (see docs/design.md).
            cur = await conn.execute(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname IN ('events', 'keys')"
                " AND relnamespace = current_schema()::regnamespace"
            )
            per_event = str((await cur.fetchone() or ("events",))[0])
            await conn.execute(sql.SQL("REINDEX TABLE {}").format(sql.Identifier(per_event)))
            cur = await conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
                (per_event,),
            )
            reindexed = {str(name): int(size) for name, size in await cur.fetchall()}
            per_block = 0.0  # no blocks before schema 6
            cur = await conn.execute("SELECT to_regclass('blocks') IS NOT NULL")
            if (await cur.fetchone() or (False,))[0]:
                cur = await conn.execute("SELECT avg(n)::float FROM blocks")
                per_block = float((await cur.fetchone() or (0.0,))[0] or 0.0)
    finally:
        await store.close()
        await dbschema.drop(settings)
    return {
        "stored": stored,
        "rate": stored / elapsed,
        "cpu_us": cpu / max(stored, 1) * 1e6,
        "bytes": {name: size / max(stored, 1) for name, size in sizes.items()},
        "reindexed": {name: size / max(stored, 1) for name, size in reindexed.items()},
        "per_block": per_block,
    }


def run_one(tree: Path, *, events: int, topics: int, small: int | None = None) -> dict[str, Any]:
    """One run of the commit checked out in ``tree``."""
    # By path, not ``-m``: the base's tree has no bench.footprint. Through runpy, so that the
    # tree (the working directory) and not this file's directory leads the path.
    argv = [__file__, "--child", "--events", str(events), "--topics", str(topics)]
    if small:
        argv += ["--small", str(small)]
    script = (
        f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare(
    base: str,
    head: str,
    *,
    rounds: int,
    events: int = EVENTS,
    topics: int = TOPICS,
    small: int | None = None,
) -> list[str]:
    """The comparison's lines (markdown), base and head alternated ``rounds`` times; with
    ``small``, the head stored in transactions of that many events too."""
    from bench.ab import _short, worktree

    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": [], "small": []}
    with worktree(base) as base_tree, worktree(head) as head_tree:
        for r in range(rounds):
            for which, tree in (("base", base_tree), ("head", head_tree), ("small", head_tree)):
                if which == "small" and not small:
                    continue
                print(f"footprint round {r + 1}: {which} ...", file=sys.stderr)
                runs[which].append(
                    run_one(tree, events=events, topics=topics,
                            small=small if which == "small" else None)
                )  # fmt: skip

    def median(which: str, pick: Callable[[dict[str, Any]], float]) -> float:
        return float(statistics.median(pick(run) for run in runs[which]))

    def size(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda run: float(run["bytes"].get(name, 0.0))

    def rebuilt(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda run: float(run["reindexed"].get(name, 0.0))

    def other(run: dict[str, Any]) -> float:
        return float(sum(v for k, v in run["bytes"].items() if k not in _NAMED))

    def total(run: dict[str, Any]) -> float:
        return float(sum(run["bytes"].values()))

    def indexes(run: dict[str, Any]) -> float:
        return float(sum(v for k, v in run["bytes"].items() if k in run["reindexed"]))

    def indexes_rebuilt(run: dict[str, Any]) -> float:
        return float(sum(run["reindexed"].values()))

    # (label, the figure of a run, the same after REINDEX where it applies)
    Pick = Callable[[dict[str, Any]], float]
    present = {name for run in runs["base"] + runs["head"] for name in run["bytes"]}
    rows: list[tuple[str, Pick, Pick | None]] = [
        (f"`{name}` bytes", size(name), rebuilt(name) if name in ("events_pkey", "keys_pkey")
         or name.startswith("events_") else None)
        for name in _NAMED if name in present
    ]  # fmt: skip
    rows += [
        ("other tables and indexes, bytes", other, None),
        ("**bytes per stored event**", total, None),
        (
            "indexes of the table with a row per event (`events`, `keys`), bytes",
            indexes,
            indexes_rebuilt,
        ),
        ("**PostgreSQL CPU µs per stored event**", lambda run: float(run["cpu_us"]), None),
        ("events stored per second", lambda run: float(run["rate"]), None),
    ]
    rows.append(("events per block", lambda run: float(run.get("per_block", 0.0)), None))
    lines = [
        f"{events:,} events a run ({topics} topics, 20% repeated, random event ids), "
        f"{rounds} rounds; base {_short(base)}, head {_short(head)}; transactions of "
        f"{_UNIT * _PER_STORE:,} events"
        + (
            f", and the head's in transactions of {small} (units of {min(_UNIT, small)}), "
            'merged and vacuumed every tenth of the run ("small")'
            if small
            else ""
        )
        + ":",
        "",
        "| per stored event | base | head | head / base | head after `REINDEX` |"
        + (" small | small / head |" if small else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if small else ""),
    ]
    for label, pick, after in rows:
        b, h = median("base", pick), median("head", pick)
        ratio = f"{h / b:.2f}" if b else "new"
        again = f"{median('head', after):,.1f}" if after else ""
        line = f"| {label} | {b:,.1f} | {h:,.1f} | {ratio} | {again} |"
        if small:
            m = median("small", pick)
            line += f" {m:,.1f} | {m / h:.2f} |" if h else f" {m:,.1f} | |"
        lines.append(line)
    return lines


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__)
    p.add_argument("--base", help="the commit to compare against")
    p.add_argument("--head", default="HEAD", help="the commit to measure (default HEAD)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each, alternated")
    p.add_argument("--events", type=int, default=EVENTS, help="events stored per run")
    p.add_argument("--topics", type=int, default=TOPICS, help="topics of those events")
    p.add_argument(
        "--small",
        type=int,
        help="also store the head's events in transactions of this many, merged (a low rate)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.events, args.topics, args.small))))
        return
    if not args.base:
        p.error("--base is required")
    from bench import record

    out = record.Output()
    for line in compare(
        args.base,
        args.head,
        rounds=args.rounds,
        events=args.events,
        topics=args.topics,
        small=args.small,
    ):
        out(line)
    out.write("footprint", title="Bytes and PostgreSQL CPU per stored event, base and head")


if __name__ == "__main__":
    cli()
