"""``python -m bench.store``: the consumer's batch store with the schema as shipped, and as it
was or could be, measured in one run.

The variants, each a fresh schema altered before the clock starts:

- ``as shipped``: payloads as ``json``, and ``events.txid`` with its index (the live stream's
  cursor);
- ``schema 2``: what came before, payloads as ``jsonb`` and no ``txid``;
- ``payload jsonb``: only the payload type of before;
- ``no txid index``: the stream's index left out;
- ``NOTIFY per batch``: as shipped, plus a ``pg_notify`` in every storing transaction (a
  statement trigger), what waking live streams by ``LISTEN`` would cost the write path;
- the candidates for searching payloads, each an index more on the payload's text:
  ``search: trigram GIN`` (``pg_trgm``, substrings; also without GIN's pending list),
  ``search: full text GIN`` (a ``tsvector`` of words, the ``simple`` configuration; also of
  the payload's string values only, without its keys and numbers) and ``search: RUM`` (the
  words in the ``rum`` extension's index, which Debian packages as ``postgresql-15-rum``; left
  out when it is not installed);
- candidate cuts of the bytes per event (``cut: ...``): the two time indexes without the event
  id, the retention's ``received_at`` index left out or as a BRIN index;
- ``blocks: trigram search index``: ``PUBSUB_SEARCH=trigram``'s index on the blocks' text.

Since schema 6 events lie in blocks and ``events`` is a view: the variants that alter schema
5's table are left out (their last measurement is ``docs/measurements/store.md`` at ac19d57).

The payloads read like logs (a request line, a user, an address, a status, a duration), as
search would see them. Each variant's bytes on disk per stored event (every table and index of
its schema, after a VACUUM) are measured too.

The variants run in turn, ``--rounds`` times, each round starting one variant later, so that
drift on a shared machine and the order spread over all of them; a checkpoint before each run
starts every run with the same clean buffers (where the role may checkpoint). Each prints its
median events/s and its ratio to ``as shipped``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import uuid

import psycopg

from bench import record
from bench.ceilings import database_ceiling
from pubsub import search
from pubsub.settings import Settings

VARIANTS = {
    "as shipped": "",
    "schema 2 (jsonb, no txid)": (
        "ALTER TABLE events DROP COLUMN txid;"
        " ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb"
    ),
    "payload jsonb": "ALTER TABLE events ALTER COLUMN payload TYPE jsonb USING payload::jsonb",
    "no txid index": "DROP INDEX events_txid",
    "NOTIFY per batch": """
        CREATE FUNCTION notify_stored() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_notify('pubsub_stored', ''); RETURN NULL; END $$;
        CREATE TRIGGER notify_stored AFTER INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION notify_stored();
    """,
    "search: trigram GIN": (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;"
        " CREATE INDEX events_search ON events"
        " USING gin (lower(payload::text) public.gin_trgm_ops)"
    ),
    "search: trigram GIN, no pending list": (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;"
        " CREATE INDEX events_search ON events"
        " USING gin (lower(payload::text) public.gin_trgm_ops) WITH (fastupdate = off)"
    ),
    "search: full text GIN": (
        "CREATE INDEX events_search ON events"
        " USING gin (to_tsvector('simple'::regconfig, payload::text))"
    ),
    "search: full text GIN, string values only": (
        "CREATE INDEX events_search ON events USING gin"
        " (jsonb_to_tsvector('simple'::regconfig, payload::jsonb, '[\"string\"]'))"
    ),
    "search: RUM": (
        "CREATE EXTENSION IF NOT EXISTS rum SCHEMA public;"
        " CREATE INDEX events_search ON events"
        " USING rum (to_tsvector('simple'::regconfig, payload::text) public.rum_tsvector_ops)"
    ),
    # Since schema 6: PUBSUB_SEARCH=trigram's index, on the blocks' text (pubsub.search).
    "blocks: trigram search index": (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;"
        f" CREATE INDEX events_search ON blocks USING gin ({search.BLOCK_TEXT} public.gin_trgm_ops)"
    ),
    # Candidate cuts of the bytes per event: which index earns its place (docs/design.md).
    "cut: time indexes without event_id": (
        "DROP INDEX events_topic_ts; DROP INDEX events_ts;"
        " CREATE INDEX events_topic_ts ON events (topic, ts);"
        " CREATE INDEX events_ts ON events (ts)"
    ),
    "cut: no received_at index": "DROP INDEX events_received_at",
    "cut: received_at as BRIN": (
        "DROP INDEX events_received_at;"
        " CREATE INDEX events_received_at ON events USING brin (received_at)"
    ),
}
_METHODS = ["GET", "POST", "PUT", "DELETE"]
_PATHS = ["/api/orders", "/api/carts", "/api/users", "/login", "/api/payments/refund"]
_STATUS = [200, 200, 200, 201, 204, 301, 400, 404, 500, 503]


def log_payload(n: int) -> dict[str, object]:
    """A payload as logs have them: mostly repeated words, some rare ones (ids, addresses)."""
    status = _STATUS[n * 7 % len(_STATUS)]
    return {
        "level": "error" if status >= 500 else "info",
        "msg": f"{_METHODS[n % 4]} {_PATHS[n * 3 % 5]}/{n * 7919 % 100_000} {status}",
        "user": f"u{n * 31 % 50_000}",
        "ip": f"10.{n % 256}.{n * 13 % 256}.{n * 17 % 256}",
        "duration_ms": n * 37 % 2_000,
    }


async def main(args: argparse.Namespace) -> None:
    settings = Settings.from_env(db_schema=f"store_{uuid.uuid4().hex[:8]}", log_level="WARNING")
    names = [n for n in VARIANTS if n != "search: RUM" or await _available(settings, "rum")]
    # Since schema 6, events lie in blocks and ``events`` is a view: the variants of schema
    # 5's table (a row per event) are measured at a commit before it (store.md at ac19d57).
    of_rows = re.compile(r"\bON events\b|\bTABLE events\b|\bDROP INDEX events_")
    rows_only = [n for n in names if of_rows.search(VARIANTS[n])]
    names = [n for n in names if n not in rows_only]
    if args.only:
        names = ["as shipped", *(n for n in names if n != "as shipped" and args.only in n)]
    rates: dict[str, list[float]] = {name: [] for name in names}
    sizes: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            await _checkpoint(settings)
            rates[name].append(
                await database_ceiling(
                    settings,
                    events=args.events,
                    alter=VARIANTS[name],
                    name=f"v{names.index(name)}",
                    payload=log_payload,
                    sizes=sizes[name],
                )
            )
    base = statistics.median(rates["as shipped"])
    base_size = statistics.median(sizes["as shipped"])
    out = record.Output()
    out(
        f"batch store, {args.events:,} events a run (20% duplicates, log-like payloads),"
        f" {args.rounds} rounds"
    )
    out()
    out("| schema | events/s (median) | runs | vs as shipped | bytes/event | vs as shipped |")
    out("| --- | --- | --- | --- | --- | --- |")
    for name, runs in rates.items():
        median = statistics.median(runs)
        each = ", ".join(f"{r:,.0f}" for r in runs)
        size = statistics.median(sizes[name])
        out(
            f"| {name} | {median:,.0f} | {each} | {median / base:.2f} | {size:,.0f}"
            f" | {size / base_size:.2f} |"
        )
    if rows_only and not args.only:
        out()
        out(f"left out, as they alter schema 5's table of a row per event: {', '.join(rows_only)}")
    if "search: RUM" not in names and not args.only:
        out()
        out("search: RUM left out: the rum extension is not installed (postgresql-15-rum).")
    # A subset is a measurement of its own, beside the full one.
    name = (
        "store-" + re.sub(r"[^a-z0-9]+", "-", args.only.lower()).strip("-")
        if args.only
        else "store"
    )
    out.write(name, title="The consumer's batch store, schema variants")


async def _available(settings: Settings, extension: str) -> bool:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = %s", (extension,)
        )
        return await cur.fetchone() is not None


async def _checkpoint(settings: Settings) -> None:
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        async with await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=True
        ) as conn:
            await conn.execute("CHECKPOINT")


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    p.add_argument("--events", type=int, default=200_000, help="events stored per run")
    p.add_argument("--rounds", type=int, default=5, help="runs of every variant")
    p.add_argument(
        "--only", default="", help="only the variants whose name holds this (and as shipped)"
    )
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
