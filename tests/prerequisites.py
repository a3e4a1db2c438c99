"""What each part of the test suite needs from the machine, checked before any test runs.

The parts are the markers of ``pyproject.toml``, which ``tests/conftest.py`` sets from the
fixtures a test uses; a test with none of them (``./scripts/test --fast``) needs Python and the
project's extras only. :func:`missing` says, one line per part, what the selected tests lack
and how to get it, so that a run stops before its first test instead of failing halfway.
``python -m tests.prerequisites`` prints every part's state.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from bench.postgres import server_binary

AMQP_ENV = "PUBSUB_TEST_AMQP_URL"
DB_ENV = "PUBSUB_TEST_DATABASE_URL"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url.split(",", maxsplit=1)[0])
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default_port)
        with socket.create_connection(address, timeout=3):
            return True
    except OSError:
        return False


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False
    return True


def servers() -> str | None:
    amqp, db = os.environ.get(AMQP_ENV), os.environ.get(DB_ENV)
    if amqp and db:
        down = [url for url, port in ((amqp, 5672), (db, 5432)) if not _answers(url, port)]
        if down:
            return (
                f"{AMQP_ENV}/{DB_ENV} are set but nothing answers at {', '.join(down)}: start "
                "RabbitMQ and PostgreSQL there (./scripts/test starts this machine's own)"
            )
        return None
    if docker_engine_answers():
        return None  # testcontainers starts them
    return (
        f"no RabbitMQ and PostgreSQL: set {AMQP_ENV} and {DB_ENV}, or run them on 127.0.0.1 "
        "(apt-get install rabbitmq-server postgresql; ./scripts/test finds them), or start a "
        "Docker engine for testcontainers"
    )


def browser() -> str | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium and shutil.which("chromedriver"):
        return None
    return (
        "no headless Chromium: apt-get install chromium chromium-driver (./scripts/test does it "
        "as root or through sudo)"
    )


def node() -> str | None:
    if shutil.which("node") and shutil.which("npm"):
        return None
    return "no node and npm (a JavaScript Loki client): apt-get install nodejs npm"


def cluster() -> str | None:
    lacking = [t for t in ("rabbitmq-server", "rabbitmqctl") if shutil.which(t) is None]
    if server_binary("initdb") is None:
        lacking.append("initdb")
    if os.geteuid() != 0 or lacking:
        return (
            "the cluster and replica tests start RabbitMQ nodes and a PostgreSQL pair of their "
            "own: they run as root with rabbitmq-server and postgresql installed"
            + (f" (missing: {', '.join(lacking)})" if lacking else " (not root)")
        )
    return None


def containers() -> str | None:
    if docker_engine_answers():
        return None
    return "no Docker engine: ./scripts/test-containers installs and starts one (Debian, root)"


NEEDS: dict[str, Callable[[], str | None]] = {
    "servers": servers,
    "browser": browser,
    "node": node,
    "cluster": cluster,
    "containers": containers,
}


def missing(parts: Iterable[str]) -> list[str]:
    """One line per part of ``parts`` (markers) this machine cannot run, saying why and how."""
    lines = []
    for part in sorted(set(parts) & NEEDS.keys()):
        why = NEEDS[part]()
        if why:
            lines.append(f"{part}: {why}; leave these out with -m 'not {part}'")
    return lines


def main() -> int:
    for part, check in NEEDS.items():
        why = check()
        print(f"{part:<11} {'ready' if why is None else why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
