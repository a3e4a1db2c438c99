"""Broker and database for the tests: URLs from the environment, else testcontainers.

``PUBSUB_TEST_AMQP_URL`` and ``PUBSUB_TEST_DATABASE_URL`` point the tests at running servers.
Without them, a reachable Docker engine starts RabbitMQ and PostgreSQL containers (see
:mod:`tests.servers`); with neither, the tests fail and say what to set: integration tests never
skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from pubsub import dbschema
from pubsub.database import connect_kwargs
from pubsub.settings import Settings
from stack.supervisor import free_port
from tests import servers
from tests.prerequisites import AMQP_ENV, DB_ENV, docker_engine_answers
from tests.servers import Server
from tests.support import delete_topology, run_async


def _missing(what: str, env: str, example: str) -> str:
    return (
        f"no {what} for the tests: set {env} (e.g. {env}={example}) "
        "or make a Docker engine reachable so testcontainers can start one"
    )


@pytest.fixture(scope="session")
def broker() -> Iterator[Server]:
    url = os.environ.get(AMQP_ENV)
    if url:
        yield Server(url, servers.LocalRabbitMQ())
        return
    if not docker_engine_answers():
        pytest.fail(_missing("RabbitMQ", AMQP_ENV, "amqp://guest:guest@127.0.0.1:5672/"))
    with servers.rabbitmq_container(free_port()) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        url = f"amqp://{container.username}:{container.password}@{host}:{port}/"
        yield Server(url, servers.ContainerServer(container))


@pytest.fixture(scope="session")
def database() -> Iterator[Server]:
    url = os.environ.get(DB_ENV)
    if url:
        yield Server(url, servers.LocalPostgres())
        return
    if not docker_engine_answers():
        pytest.fail(_missing("PostgreSQL", DB_ENV, "postgresql://postgres@127.0.0.1:5432/test"))
    with servers.postgres_container(free_port()) as container:
        yield Server(container.get_connection_url(driver=None), servers.ContainerServer(container))


@pytest.fixture(scope="session")
def amqp_url(broker: Server) -> str:
    return broker.url


@pytest.fixture(scope="session")
def database_url(database: Server) -> str:
    return database.url


@contextlib.contextmanager
def private_settings(
    amqp_url: str, database_url: str, *, prefix: str = "test", **overrides: Any
) -> Iterator[Settings]:
    """Settings of their own (schema, queue names, ports), removed again afterwards."""
    run = uuid.uuid4().hex[:10]
    s = Settings.from_env(
        {},
        **{
            "amqp_url": amqp_url,
            "database_url": database_url,
            "db_schema": f"{prefix}_{run}",
            "queue": f"{prefix}.{run}.events",
            "ingest_port": free_port(),
            "read_port": free_port(),
            "consumer_port": 0,
            **overrides,
        },
    )
    run_async(dbschema.ensure(s))
    try:
        yield s
    finally:
        run_async(delete_topology(s))
        run_async(dbschema.drop(s))


@pytest.fixture(scope="session")
def settings(amqp_url: str, database_url: str) -> Iterator[Settings]:
    """Settings private to this test run: its own schema, queue names and ports."""
    with private_settings(amqp_url, database_url) as s:
        yield s


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A direct connection to the run's schema, for checking what was stored."""
    with psycopg.connect(
        settings.database_url, autocommit=True, **connect_kwargs(settings)
    ) as conn:
        yield conn


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
