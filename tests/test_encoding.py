"""A database that is not UTF8 is refused, never used to acknowledge events it did not store.

Under ``SQL_ASCII`` (what ``initdb`` gives in an image without locales) psycopg returns text as
``bytes``: before the guard, every batch committed its ledger keys, stored nothing and was
acknowledged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from consumer.store import Store
from pubsub import database, dbschema
from pubsub.errors import Unusable
from pubsub.settings import Settings
from tests.fix_stack import StackFactory
from tests.test_store import rows


@pytest.fixture(scope="module")
def sql_ascii_url(database_url: str) -> Iterator[str]:
    """A fresh database created with ``ENCODING 'SQL_ASCII'`` on the test server."""
    name = f"pubsub_sql_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    try:
        yield psycopg.conninfo.make_conninfo(database_url, dbname=name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def test_schema_setup_refuses_a_sql_ascii_database(
    settings: Settings, sql_ascii_url: str
) -> None:
    with pytest.raises(Unusable, match=r"uses encoding SQL_ASCII.*needs UTF8.*ENCODING 'UTF8'"):
        await dbschema.ensure(settings.replace(database_url=sql_ascii_url))


async def test_services_refuse_to_start_with_one_line_saying_why(
    sql_ascii_url: str, own_stack: StackFactory
) -> None:
    own = own_stack(database_url=sql_ascii_url, consumers=1)
    for name in ("consumer-1", "readapi"):
        own.start(name, wait=False)
    codes = {
        name: await asyncio.to_thread(own.procs[name].wait, 30)
        for name in ("consumer-1", "readapi")
    }
    assert codes == {"consumer-1": 3, "readapi": 3}
    for name in codes:
        refusals = [line for line in own.log(name).splitlines() if "SQL_ASCII" in line]
        assert len(refusals) == 1, own.log(name)
        assert "refusing to run" in refusals[0] and "UTF8" in refusals[0]
        assert "Traceback" not in own.log(name)


async def test_store_never_reads_an_unmatched_ledger_reply_as_stored_before(
    settings: Settings, sql_ascii_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the start-up check (a database converted later, say), the ledger's reply does
    not match the batch: the store raises and nothing is committed."""
    own = settings.replace(database_url=sql_ascii_url)
    monkeypatch.setattr(database, "check_encoding", lambda conn: None)
    await dbschema.ensure(own)
    store = Store(own, shard=1)
    try:
        with pytest.raises(Unusable, match="the ledger answered 1 key"):
            await store.store([("unit-1", rows("ascii", [1, 2, 3]))])
    finally:
        await store.close()
    with psycopg.connect(sql_ascii_url, **database.connect_kwargs(own)) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM ledger), (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM counters)"
        ).fetchone()
    assert counts == (0, 0, 0)
