"""The fault suite's system: ingest's broker link and the consumers' database link run
through TCP proxies that a test can cut. Its table is printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import yarl

from pubsub.settings import Settings
from stack.supervisor import Supervisor
from tests.fix_services import private_settings
from tests.fix_stack import StackFactory
from tests.tcpproxy import TCPProxy, proxy

REPORTS = pytest.StashKey[list[str]]()


@pytest.fixture
def proxied_ingest(
    settings: Settings, own_stack: StackFactory
) -> Iterator[tuple[Supervisor, TCPProxy]]:
    """A second ingest process whose broker connection runs through a TCP proxy."""
    url = yarl.URL(settings.amqp_url)
    with proxy(url.host or "127.0.0.1", url.port or 5672) as p:
        via = str(url.with_host("127.0.0.1").with_port(p.port))
        own = own_stack(amqp_url=via, publish_timeout=1.0)
        own.start("ingest")
        yield own, p
        own.stop("ingest")


@pytest.fixture
def proxied_read_api(
    settings: Settings, own_stack: StackFactory
) -> Iterator[tuple[Supervisor, TCPProxy]]:
    """A second read API whose database connections run through a TCP proxy."""
    db = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    with proxy(str(db.get("host", "127.0.0.1")), int(str(db.get("port", 5432)))) as p:
        via = psycopg.conninfo.make_conninfo(settings.database_url, host="127.0.0.1", port=p.port)
        own = own_stack(database_url=via)
        own.start("readapi")
        yield own, p
        own.stop("readapi")


@dataclass
class FaultStack:
    stack: Supervisor
    broker_link: TCPProxy  # ingest <-> RabbitMQ
    database_link: TCPProxy  # consumers <-> PostgreSQL


@pytest.fixture(scope="module")
def faults(
    amqp_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    with private_settings(amqp_url, database_url, prefix="faults", publish_timeout=2.0) as s:
        yield from _fault_stack(s, tmp_path_factory)


def _fault_stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    amqp_url, database_url = settings.amqp_url, settings.database_url
    broker, db = yarl.URL(amqp_url), psycopg.conninfo.conninfo_to_dict(database_url)
    broker_link = TCPProxy(broker.host or "127.0.0.1", broker.port or 5672).start()
    database_link = TCPProxy(
        str(db.get("host", "127.0.0.1")), int(str(db.get("port", 5432)))
    ).start()
    stack = Supervisor(settings, logdir=tmp_path_factory.mktemp("fault-logs"))
    via_proxy = str(broker.with_host("127.0.0.1").with_port(broker_link.port))
    stack.overrides["ingest"] = {"amqp_url": via_proxy}
    db_via_proxy = psycopg.conninfo.make_conninfo(
        database_url, host="127.0.0.1", port=database_link.port
    )
    for name in stack.consumers:
        stack.overrides[name] = {"database_url": db_via_proxy}
    stack.start_all()
    yield FaultStack(stack, broker_link, database_link)
    stack.stop_all()
    broker_link.close()
    database_link.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault suite's table (also when it passed)."""
    for table in terminalreporter.config.stash.get(REPORTS, []):
        terminalreporter.write_sep("-", "fault suite")
        terminalreporter.write_line(table)
