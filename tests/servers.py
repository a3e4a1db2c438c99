"""The RabbitMQ and PostgreSQL under test, and how the fault suite stops and starts them.

A server is either given by URL (``PUBSUB_TEST_*_URL``; the fault suite then controls this
machine's own servers with ``rabbitmqctl`` and ``pg_ctlcluster``) or started by testcontainers,
and then controlled through the Docker API. Container images default to the ones
``docker-compose.yml`` names and are overridden by the same ``PUBSUB_IMAGE_*`` variables.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def image(name: str) -> str:
    """``PUBSUB_IMAGE_<NAME>``, else that variable's default in docker-compose.yml."""
    var = f"PUBSUB_IMAGE_{name.upper()}"
    if os.environ.get(var):
        return os.environ[var]
    found = re.search(r"\$\{" + var + r":-([^}]+)\}", COMPOSE_FILE.read_text())
    assert found, f"docker-compose.yml names no default for {var}"
    return found.group(1)


class Control(Protocol):
    """Faults the suite injects into a server; each returns once the server obeyed."""

    what: str

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def restart(self) -> None: ...


@dataclass
class Server:
    url: str
    control: Control


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _need(*commands: str) -> list[str]:
    paths = [shutil.which(c) for c in commands]
    if not all(paths):
        raise AssertionError(
            "the fault suite stops and starts the servers given by URL with "
            f"{', '.join(commands)}, which this machine lacks: run it against local servers, "
            "or unset PUBSUB_TEST_AMQP_URL / PUBSUB_TEST_DATABASE_URL so that it starts containers"
        )
    return [p for p in paths if p]


class LocalRabbitMQ:
    """This machine's RabbitMQ: ``rabbitmqctl stop_app`` / ``start_app``."""

    what = "rabbitmqctl"

    def stop(self) -> None:
        _run(*_need("rabbitmqctl"), "stop_app")

    def start(self) -> None:
        _run(*_need("rabbitmqctl"), "start_app")

    def restart(self) -> None:
        self.stop()
        self.start()


class LocalPostgres:
    """This machine's PostgreSQL cluster: ``pg_ctlcluster``."""

    what = "pg_ctlcluster"

    def _ctl(self, action: str, *extra: str) -> None:
        (ctl,) = _need("pg_ctlcluster")
        version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
        _run(ctl, "--skip-systemctl-redirect", version, "main", action, *extra)

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")


class ContainerServer:
    """A container started by testcontainers; stop, start and restart through the Docker API.

    Its ports are bound to fixed host ports, so that a restarted container answers at the
    same URL."""

    what = "Docker API"

    def __init__(self, container: Any) -> None:
        self._container = container

    @property
    def _docker(self) -> Any:
        return self._container.get_wrapped_container()

    def stop(self) -> None:
        self._docker.stop(timeout=10)

    def start(self) -> None:
        self._docker.start()

    def restart(self) -> None:
        self._docker.restart(timeout=10)


def rabbitmq_container(host_port: int) -> AbstractContextManager[Any]:
    from testcontainers.community.rabbitmq import RabbitMqContainer

    return RabbitMqContainer(image("rabbitmq")).with_bind_ports(5672, host_port)


def postgres_container(host_port: int) -> AbstractContextManager[Any]:
    from testcontainers.community.postgres import PostgresContainer

    return PostgresContainer(image("postgres")).with_bind_ports(5432, host_port)
