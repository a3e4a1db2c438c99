"""The compose stack for the container tests: ``up --build`` once per session, ``down -v`` after.

The compose command comes from ``COMPOSE`` (set by ``scripts/test-containers``), else
``docker compose`` when the plugin exists, else compose v1 in compatibility mode.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from publisher.load import LoadConfig
from tests import servers

ROOT = Path(__file__).resolve().parent.parent.parent
# Grafana cannot be pulled where no registry answers, and nothing stands in for it: it is
# started only when its image is here.
CORE = ["rabbitmq", "postgres", "ingest", "consumer", "readapi", "gateway", "prometheus"]
APP = ("ingest", "consumer", "readapi")
HEALTHY_WITHIN = 120.0


def _compose_command() -> list[str]:
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return (
        ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose", "--compatibility"]
    )


def docker(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


@dataclass
class Compose:
    command: list[str]
    gateway: str = "http://127.0.0.1:8080"
    prometheus: str = "http://127.0.0.1:9090"
    management: str = "http://127.0.0.1:15672"
    services: list[str] = field(default_factory=lambda: list(CORE))
    healthy_after: float = 0.0  # seconds from `up --build` until every service was healthy
    # The bearer tokens the tokens step generated at first start and printed.
    tokens: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            [*self.command, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            raise AssertionError(
                f"{' '.join([*self.command, *args])} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def ids(self, service: str) -> list[str]:
        """Running containers of a service."""
        ids = self("ps", "-q", service).split()
        running = "{{.State.Running}}"
        return [cid for cid in ids if docker("inspect", "-f", running, cid).strip() == "true"]

    def exec(self, container: str, *cmd: str) -> str:
        return docker("exec", container, *cmd)

    def psql(self, query: str) -> str:
        (pg,) = self.ids("postgres")
        return self.exec(pg, "psql", "-U", "postgres", "-d", "pubsub", "-tAc", query).strip()

    def up(self, *args: str) -> float:
        """``up -d`` with ``args``; returns the seconds until every service was healthy."""
        started = time.monotonic()
        self("up", "-d", *args, *self.services)
        self.wait_healthy(started + HEALTHY_WITHIN)
        return time.monotonic() - started

    def printed_tokens(self) -> dict[str, str]:
        """The tokens the tokens step printed at first start: kind -> token."""
        printed = re.findall(
            r"PUBSUB_(PUBLISH|READ)_TOKEN=(\S+)", self("logs", "--no-color", "tokens")
        )
        return {kind.lower(): token for kind, token in printed}

    def session(self, **options: Any) -> aiohttp.ClientSession:
        """An HTTP session that sends the gateway the token each request needs (the publish
        token with a POST or PUT, the read token otherwise) unless the request has its own
        ``Authorization``."""

        async def bearer(
            req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            if str(req.url).startswith(self.gateway) and "Authorization" not in req.headers:
                kind = "publish" if req.method in ("POST", "PUT") else "read"
                req.headers["Authorization"] = f"Bearer {self.tokens[kind]}"
            return await handler(req)

        options.setdefault("timeout", aiohttp.ClientTimeout(total=60))
        return aiohttp.ClientSession(middlewares=(bearer,), **options)

    def load(self, **options: Any) -> LoadConfig:
        """A load through the gateway, with the stack's tokens."""
        return LoadConfig(
            ingest_url=self.gateway,
            read_url=self.gateway,
            publish_token=self.tokens["publish"],
            read_token=self.tokens["read"],
            **options,
        )

    def wait_healthy(self, deadline: float) -> None:
        while True:
            unhealthy = self._unhealthy()
            if not unhealthy:
                return
            if time.monotonic() > deadline:
                logs = self("logs", "--tail", "30", *{u.split(" ")[0] for u in unhealthy})
                raise AssertionError(f"not healthy in time: {unhealthy}\n{logs}")
            time.sleep(0.5)

    def _unhealthy(self) -> list[str]:
        bad = []
        for service in self.services:
            ids = self.ids(service)
            if not ids:
                bad.append(f"{service} (no running container)")
            for cid in ids:
                state = docker(
                    "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", cid
                ).strip()
                if state not in ("", "healthy"):
                    bad.append(f"{service} ({state})")
        if not bad and not _answers(f"{self.gateway}/readyz"):
            bad.append("gateway (does not answer /readyz)")
        if not bad and not _answers(f"{self.prometheus}/-/ready"):
            bad.append("prometheus (not ready)")
        return bad


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def compose() -> Iterator[Compose]:
    stack = Compose(_compose_command())
    port = {
        "gateway": os.environ.get("PUBSUB_GATEWAY_PORT", "8080"),
        "prometheus": os.environ.get("PUBSUB_PROMETHEUS_PORT", "9090"),
        "management": os.environ.get("PUBSUB_RABBITMQ_UI_PORT", "15672"),
    }
    stack.gateway = f"http://127.0.0.1:{port['gateway']}"
    stack.prometheus = f"http://127.0.0.1:{port['prometheus']}"
    stack.management = f"http://127.0.0.1:{port['management']}"
    grafana = subprocess.run(
        ["docker", "image", "inspect", servers.image("grafana")], capture_output=True, check=False
    )
    if grafana.returncode == 0:
        stack.services.append("grafana")
    stack("down", "-v", "--remove-orphans")  # what an interrupted earlier run left
    try:
        stack.healthy_after = stack.up("--build")
        stack.tokens = stack.printed_tokens()
        yield stack
    finally:
        stack("down", "-v", "--remove-orphans")
