"""Real clients with tenants: the OpenTelemetry SDK's exporter, winston-loki under node and
opensearch-py's bulk helpers, each with a tenant's token (and ``X-Scope-OrgID`` where the
client sets headers). Each tenant's events arrive in its own space, and nowhere else."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from opensearchpy import OpenSearch, helpers
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from stack.supervisor import Supervisor
from tests.fix_tenants import MULTI, TENANTS, headers, token
from tests.support import eventually

DEADLINE = 60.0


def _otel(endpoint: str, service: str, count: int, *, auth: dict[str, str]) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPLogExporter(endpoint=endpoint, headers=auth, timeout=30)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = logging.getLogger(f"otel-tenants.{service}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    try:
        for i in range(count):
            logger.warning("order %d failed", i, extra={"log.record.uid": f"u{i}"})
        assert provider.force_flush(timeout_millis=30_000)
    finally:
        provider.shutdown()


async def _seen(http: aiohttp.ClientSession, stack: Supervisor, topic: str) -> dict[str, int]:
    """How many events of ``topic`` each tenant reads."""
    seen = {}
    for tenant in TENANTS:
        async with http.get(
            f"{stack.read_url}/events",
            params={"topic": topic, "limit": "1000"},
            headers=headers(tenant),
        ) as resp:
            assert resp.status == 200, await resp.text()
            seen[tenant] = len(await resp.json())
    return seen


async def _only(
    http: aiohttp.ClientSession, stack: Supervisor, topic: str, tenant: str, count: int
) -> None:
    want = {t: count if t == tenant else 0 for t in TENANTS}
    await eventually(
        lambda: _seen(http, stack, topic), lambda s: s == want, timeout=DEADLINE, what=topic
    )


@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated")
async def test_the_otel_sdk_exports_as_the_tenant_its_headers_name(
    tenant_stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    endpoint = f"{tenant_stack.ingest_url}/v1/logs"
    for tenant, auth in (
        ("alpha", {"authorization": f"Bearer {token('alpha')}"}),
        ("beta", {"authorization": f"Bearer {MULTI}", "x-scope-orgid": "beta"}),
    ):
        service = f"otel-{tenant}-{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(_otel, endpoint, service, 40, auth=auth)
        await _only(http, tenant_stack, service, tenant, 40)


async def test_winston_loki_pushes_as_the_tenant_of_its_scope_header(
    node_clients: Path, tenant_stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    service = f"loki-{uuid.uuid4().hex[:6]}"
    node = await asyncio.create_subprocess_exec(
        "node", str(node_clients / "loki_winston.js"), tenant_stack.ingest_url, service, "300",
        MULTI, "beta",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(node.communicate(), DEADLINE)
    assert node.returncode == 0, err.decode()
    assert orjson.loads(out)["sent"] == 300
    await _only(http, tenant_stack, service, "beta", 300)


async def test_the_bulk_helpers_index_as_the_tenant_of_their_token(
    tenant_stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    index = f"bulk-{uuid.uuid4().hex[:6]}"
    client = OpenSearch(hosts=[tenant_stack.ingest_url], headers=headers("gamma"), timeout=30)
    actions: list[dict[str, Any]] = [
        {"_index": index, "_id": str(i), "message": f"doc {i}"} for i in range(200)
    ]
    ok, errors = await asyncio.to_thread(helpers.bulk, client, actions, chunk_size=50)
    assert (ok, errors) == (200, [])
    await _only(http, tenant_stack, index, "gamma", 200)
