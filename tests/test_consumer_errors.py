"""What the consumer does when PostgreSQL refuses it: only a message whose data is refused is
dead-lettered; a revoked privilege is waited out, and nothing is lost meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from psycopg import sql

from publisher import watch
from pubsub.topology import Names
from stack.supervisor import Supervisor
from tests.fix_services import private_settings
from tests.support import event, eventually, post_json, queue_depth, settled, stats


def run(database_url: str, statement: str, **names: str) -> None:
    """A statement as the superuser of the tests, with ``{names}`` quoted as identifiers."""
    identifiers = {k: sql.Identifier(*v.split(".")) for k, v in names.items()}
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL(statement).format(**identifiers))


@pytest.fixture
def restricted(
    amqp_url: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[Supervisor, str]]:
    """A system of its own whose consumer connects as a role that holds only the grants
    storing needs (and that the test can take away)."""
    role = f"consumer_{uuid.uuid4().hex[:8]}"
    with private_settings(amqp_url, database_url, prefix="grants") as own:
        dbname = str(psycopg.conninfo.conninfo_to_dict(database_url).get("dbname", ""))
        run(database_url, "CREATE ROLE {role} LOGIN PASSWORD 'consumer-pw'", role=role)
        run(
            database_url,
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            schema=own.db_schema,
            role=role,
        )
        run(
            database_url,
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            schema=own.db_schema,
            role=role,
        )
        for grant in (
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
        ):
            run(database_url, grant, schema=own.db_schema, role=role)
        run(database_url, "GRANT TEMP ON DATABASE {db} TO {role}", db=dbname, role=role)
        as_role = psycopg.conninfo.make_conninfo(database_url, user=role, password="consumer-pw")
        system = Supervisor(own, logdir=tmp_path, consumers=1)
        system.overrides["consumer-1"] = {"database_url": as_role}
        try:
            system.start_all()
            yield system, role
        finally:
            system.stop_all()
            run(database_url, "DROP OWNED BY {role}", role=role)
            run(database_url, "DROP ROLE {role}", role=role)  # fmt: skip


async def test_a_revoked_privilege_is_waited_out_without_dead_letters(
    restricted: tuple[Supervisor, str], http: aiohttp.ClientSession
) -> None:
    system, role = restricted
    settings = system.settings
    blocks = f"{settings.db_schema}.blocks"
    topic = f"grants-{uuid.uuid4().hex[:6]}"
    before = await stats(http, system.read_url)
    first = [event(topic, f"a{i}") for i in range(100)]
    assert (await post_json(http, system.ingest_url, first))[0] == 202
    await settled(http, system.read_url, before["received"] + 100)

    run(settings.database_url, "REVOKE INSERT ON {blocks} FROM {role}", blocks=blocks, role=role)
    second = [event(topic, f"b{i}") for i in range(200)]
    assert (await post_json(http, system.ingest_url, second))[0] == 202
    consumer_metrics = [system.url("consumer-1")]
    await eventually(
        lambda: watch.metric(http, consumer_metrics, "pubsub_consumer_store_errors_total"),
        lambda errors: errors >= 2,
        timeout=30,
        what="the consumer retrying the refused inserts",
    )
    run(settings.database_url, "GRANT INSERT ON {blocks} TO {role}", blocks=blocks, role=role)

    after = await settled(http, system.read_url, before["received"] + 300, timeout=60)
    assert after["unique_processed"] - before["unique_processed"] == 300
    assert await queue_depth(settings, Names.of(settings).dead_queue) == 0
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(settings.db_schema, "events"))
        ).fetchone()
    assert row is not None and row[0] == 300
    assert "check the role's privileges" in system.log("consumer-1", tail=100_000)
