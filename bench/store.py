"""``python -m bench.store``: the consumer's batch store with the schema as shipped, and as it
was or could be, measured in one run.

The variants, each a fresh schema altered before the clock starts:

- ``as shipped``: payloads as ``json``, and ``events.txid`` with its index (the live stream's
  cursor);
- ``schema 2``: what came before, payloads as ``jsonb`` and no ``txid``;
- ``payload jsonb``: only the payload type of before;
- ``no txid index``: the stream's index left out;
- ``NOTIFY per batch``: as shipped, plus a ``pg_notify`` in every storing transaction (a
  statement trigger), what waking live streams by ``LISTEN`` would cost the write path.

The variants run in turn, ``--rounds`` times, each round starting one variant later, so that
drift on a shared machine and the order spread over all of them; a checkpoint before each run
starts every run with the same clean buffers (where the role may checkpoint). Each prints its
median events/s and its ratio to ``as shipped``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import uuid

import psycopg

from bench import record
from bench.ceilings import database_ceiling
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
}


async def main(args: argparse.Namespace) -> None:
    settings = Settings.from_env(db_schema=f"store_{uuid.uuid4().hex[:8]}", log_level="WARNING")
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            await _checkpoint(settings)
            rates[name].append(
                await database_ceiling(
                    settings, events=args.events, alter=VARIANTS[name], name=f"v{names.index(name)}"
                )
            )
    base = statistics.median(rates["as shipped"])
    out = record.Output()
    out(f"batch store, {args.events:,} events a run (20% duplicates), {args.rounds} rounds")
    out("| schema | events/s (median) | runs | vs as shipped |")
    out("| --- | --- | --- | --- |")
    for name, runs in rates.items():
        median = statistics.median(runs)
        each = ", ".join(f"{r:,.0f}" for r in runs)
        out(f"| {name} | {median:,.0f} | {each} | {median / base:.2f} |")
    out.write("store", title="The consumer's batch store, schema variants")


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
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
