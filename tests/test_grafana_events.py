"""The "Events" dashboard's SQL, run as Grafana would: through the read-only role that
``deploy/postgres/initdb/grafana-reader.psql`` makes, with Grafana's macros expanded."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from tests.fix_services import private_settings
from tests.support import grafana_sql

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "events.json").read_text())
FROM, TO = "2025-10-21T09:00:00Z", "2025-10-21T11:00:00Z"


def expand(text: str, topic: str) -> str:
    return grafana_sql(text, topic=topic, start=FROM, end=TO)


@pytest.fixture
def reader(amqp_url: str, database_url: str) -> Iterator[tuple[Settings, str]]:
    """A private schema with events in two topics, and the dashboard's role over it."""
    if shutil.which("psql") is None:
        pytest.fail("psql is needed to run deploy/postgres/initdb/grafana-reader.psql")
    role = f"grafana_test_{uuid.uuid4().hex[:8]}"
    with private_settings(amqp_url, database_url, prefix="graf") as s:
        with psycopg.connect(s.database_url, autocommit=True, **connect_kwargs(s)) as c:
            c.execute(
                "INSERT INTO events (topic, event_id, ts, source, payload, received_at)"
                " SELECT 'g' || (n %% 2), 'e' || n, %s::timestamptz + n * interval '1 minute',"
                " 'dash', json_build_object('n', n), %s::timestamptz + n * interval '61 second'"
                " FROM generate_series(1, 20) n",
                ("2025-10-21T09:30:00Z", "2025-10-21T09:30:00Z"),
            )
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"schema={s.db_schema}",
             "-v", f"reader={role}", "-v", "reader_password=test",
             "-f", str(DEPLOY / "postgres" / "initdb" / "grafana-reader.psql"), s.database_url],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        try:
            yield s, role
        finally:
            with psycopg.connect(s.database_url, autocommit=True) as c:
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def run_as(s: Settings, role: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(s.database_url) as c:
        # What logging in as the role gives: its settings (read-only, search_path) and rights.
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(s.db_schema)))
        c.execute("SET default_transaction_read_only = on")
        c.commit()
        return c.execute(query.encode()).fetchall()


def test_the_datasource_reads_through_the_read_only_role() -> None:
    (source,) = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "postgres.yml").read_text()
    )["datasources"]
    assert source["uid"] == "pubsub-events" and source["user"] == "grafana_reader"
    assert source["jsonData"]["database"] == "pubsub"
    psql = (DEPLOY / "postgres" / "initdb" / "grafana-reader.psql").read_text()
    assert r"\set reader grafana_reader" in psql and "default_transaction_read_only" in psql
    uids = {t["datasource"]["uid"] for p in BOARD["panels"] for t in p["targets"]}
    assert uids == {"pubsub-events"}
    assert any(p["type"] == "logs" for p in BOARD["panels"])


def test_the_topic_variable_lists_the_topics(reader: tuple[Settings, str]) -> None:
    s, role = reader
    (var,) = BOARD["templating"]["list"]
    assert var["name"] == "topic" and var["includeAll"] and var["allValue"] == "__all"
    assert [r[0] for r in run_as(s, role, var["query"])] == ["g0", "g1"]


@pytest.mark.parametrize("topic", ["__all", "g1"])
def test_every_panel_query_returns_the_events_in_range(
    reader: tuple[Settings, str], topic: str
) -> None:
    s, role = reader
    panels = {p["type"]: p for p in BOARD["panels"]}
    (logs,) = [expand(t["rawSql"], topic) for t in panels["logs"]["targets"]]
    rows = run_as(s, role, logs)
    # 09:31 .. 09:50 are in range; "g1" holds the odd ones.
    assert len(rows) == (20 if topic == "__all" else 10)
    first = rows[0]
    assert first[1].startswith("[g") and '{"n"' in first[1]  # the log line shows the payload
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    for panel in BOARD["panels"]:
        for target in panel["targets"]:
            assert run_as(s, role, expand(target["rawSql"], topic)), panel["title"]


def test_the_role_cannot_write(reader: tuple[Settings, str]) -> None:
    s, role = reader
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        run_as(s, role, "DELETE FROM blocks")
    with psycopg.connect(s.database_url) as c:
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(s.db_schema)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO topics VALUES ('nope')")
