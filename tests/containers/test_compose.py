"""The compose stack as users run it: ``up --build``, publishing and reading through the
gateway only, scaling, faults, persistence across ``down``/``up``, and Prometheus.

The tests share one stack and run in file order, each building on the state the previous
one left.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest
import yaml

from publisher.load import run_load
from publisher.tail import messages
from publisher.watch import fetch_stats
from tests import tour
from tests.containers.fix_compose import APP, HEALTHY_WITHIN, ROOT, Compose, docker
from tests.support import eventually, grafana_sql, settled, stream_through

DEPLOY = ROOT / "deploy"
QUEUE = "pubsub.events"
STREAM_EVENTS = 100_000


def test_every_service_is_healthy_within_120_s_of_up_build(compose: Compose) -> None:
    assert 0 < compose.healthy_after < HEALTHY_WITHIN
    print(f"healthy {compose.healthy_after:.1f} s after up --build")


def test_the_database_is_utf8(compose: Compose) -> None:
    """What the services insist on; the stand-in image must initialise it as the official one."""
    assert compose.psql("SHOW server_encoding") == "UTF8"


def test_our_containers_run_as_a_non_root_user(compose: Compose) -> None:
    for service in APP:
        for cid in compose.ids(service):
            assert compose.exec(cid, "id", "-u").strip() != "0", service
            assert docker("inspect", "-f", "{{.Config.User}}", cid).strip() not in ("", "0", "root")


def _bindings(cid: str) -> set[str]:
    """The host addresses a container's ports are published on (``docker port``)."""
    out = docker("port", cid)
    return {line.split(" -> ")[1].rsplit(":", 1)[0] for line in out.splitlines() if " -> " in line}


def test_only_the_gateway_listens_beyond_loopback(compose: Compose) -> None:
    (gateway,) = compose.ids("gateway")
    assert _bindings(gateway) == {"0.0.0.0"}
    for service in ("rabbitmq", "prometheus"):
        (cid,) = compose.ids(service)
        assert _bindings(cid) == {"127.0.0.1"}, service
    for service in ("postgres", *APP):
        for cid in compose.ids(service):
            assert _bindings(cid) == set(), service


async def test_publishing_and_reading_need_the_tokens_printed_at_first_start(
    compose: Compose,
) -> None:
    publish, read = compose.tokens["publish"], compose.tokens["read"]
    assert len(publish) >= 43 and len(read) >= 43 and publish != read
    shown = compose("run", "--rm", "--no-deps", "tokens", "python", "-m", "pubsub.tokens", "show")
    assert f"PUBSUB_PUBLISH_TOKEN={publish}" in shown and f"PUBSUB_READ_TOKEN={read}" in shown
    # Printed by the tokens step only: the services log their settings with tokens masked.
    services = compose("logs", "--no-color", "ingest", "readapi", "consumer")
    assert publish not in services and read not in services
    event = {"topic": "t", "event_id": "e", "timestamp": "2025-01-01T00:00:00Z",
             "source": "s", "payload": {}}  # fmt: skip
    refused = [
        ("POST", "/publish", None), ("POST", "/publish", read), ("POST", "/v1/logs", None),
        ("POST", "/loki/api/v1/push", None), ("POST", "/_bulk", None),
        ("POST", "/logs/_bulk", None), ("GET", "/events", None), ("GET", "/events", publish),
        ("GET", "/stats", None), ("GET", "/events/histogram", None),
        ("GET", "/events/stream", None),
    ]  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as anonymous:
        for method, path, token in refused:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with anonymous.request(
                method, f"{compose.gateway}{path}", json=event, headers=headers
            ) as resp:
                assert resp.status == 401, (method, path, resp.status)
        for path in ("/healthz", "/readyz", "/docs"):
            async with anonymous.get(f"{compose.gateway}{path}") as resp:
                assert resp.status == 200, path
    async with compose.session() as http:
        async with http.post(f"{compose.gateway}/publish", json=event) as resp:
            assert resp.status == 202, await resp.text()
        async with http.get(f"{compose.gateway}/stats") as resp:
            assert resp.status == 200


def test_the_readme_tour_runs_as_written_through_the_gateway(compose: Compose) -> None:
    steps = tour.read()
    assert "localhost:8080" in steps.docker and "docker compose " in steps.docker
    # The stack of these tests: its gateway's address, and its compose command (the same
    # project, from COMPOSE_PROJECT_NAME; compose v1 where the plugin is missing).
    setup = steps.docker.replace("localhost:8080", compose.gateway.removeprefix("http://"))
    setup = setup.replace("docker compose ", " ".join(compose.command) + " ")
    publish, events, stream, stats = steps.commands
    env = dict(os.environ)
    assert json.loads(tour.run(setup, publish, cwd=ROOT, env=env))["accepted"] == 1
    deadline = time.monotonic() + 30
    while not any(
        e["event_id"] == "evt001" for e in json.loads(tour.run(setup, events, cwd=ROOT, env=env))
    ):
        assert time.monotonic() < deadline, "the tour's event was not stored within 30 s"
        time.sleep(0.2)
    assert json.loads(tour.run(setup, stats, cwd=ROOT, env=env))["unique_processed"] >= 1
    tour.run(setup, stream, cwd=ROOT, env=env)  # a refused tail fails: --fail-with-body


async def test_grafana_is_loopback_only_and_refuses_anonymous_data_source_queries(
    compose: Compose,
) -> None:
    """As configured, always; by a real anonymous query too where a Grafana image exists."""
    config = yaml.safe_load(compose("config"))["services"]["grafana"]
    ports = config["ports"]
    assert all(p["host_ip"] == "127.0.0.1" for p in ports if isinstance(p, dict)) or all(
        str(p).startswith("127.0.0.1:") for p in ports
    ), ports
    assert config["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    if "grafana" not in compose.services:
        return  # no Grafana image on this machine (no registry): the configuration is all
    port = os.environ.get("PUBSUB_GRAFANA_PORT", "3000")
    query = {"queries": [{"refId": "A", "datasource": {"uid": "pubsub-events"},
                          "rawSql": "SELECT 1", "format": "table"}]}  # fmt: skip
    async with compose.session() as http:

        async def status() -> int:
            async with http.post(f"http://127.0.0.1:{port}/api/ds/query", json=query) as resp:
                return resp.status

        assert await eventually(status, lambda s: s != 502, timeout=60, what="grafana") == 401


def test_the_services_connect_as_roles_that_cannot_change_the_schema(compose: Compose) -> None:
    sessions = compose.psql(
        "SELECT DISTINCT a.usename || ':' || r.rolsuper FROM pg_stat_activity a "
        "JOIN pg_roles r ON r.rolname = a.usename WHERE a.application_name = 'pubsub'"
    )
    assert set(sessions.split()) == {"pubsub_app:false", "pubsub_reader:false"}, sessions
    (pg,) = compose.ids("postgres")

    def as_role(role: str, sql: str) -> str:
        return compose.exec(pg, "psql", "-U", role, "-d", "pubsub", "-tAc", sql)

    # The reader's read-only transactions refuse first; without them it would be refused too.
    for role, refused in (("pubsub_app", "permission denied for schema pubsub|must be owner"),
                          ("pubsub_reader", "read-only transaction")):  # fmt: skip
        with pytest.raises(AssertionError, match=refused):
            as_role(role, "CREATE TABLE pubsub.intruder (i int)")
        with pytest.raises(AssertionError, match=refused):
            as_role(role, "DROP TABLE pubsub.blocks")
    with pytest.raises(AssertionError, match="permission denied for schema pubsub"):
        compose.exec(pg, "psql", "-U", "pubsub_reader", "-d", "pubsub",
                     "-c", "SET default_transaction_read_only = off",
                     "-c", "CREATE TABLE pubsub.intruder (i int)")  # fmt: skip
    with pytest.raises(AssertionError, match="read-only transaction"):
        as_role("pubsub_reader", "DELETE FROM pubsub.blocks")
    assert as_role("pubsub_reader", "SHOW statement_timeout").strip() == "10s"
    owner = compose.psql("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'pubsub'")
    assert owner == "pubsub_owner"


async def test_the_gateway_sends_the_security_headers_and_no_metrics(compose: Compose) -> None:
    async with compose.session() as http:
        async with http.get(f"{compose.gateway}/", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
        for path in ("/metrics", "/ingest/metrics"):
            async with http.get(f"{compose.gateway}{path}") as resp:
                assert resp.status == 404, path


async def test_docs_through_the_gateway_document_every_public_operation(compose: Compose) -> None:
    async with compose.session() as http:
        async with http.get(f"{compose.gateway}/openapi.json") as resp:
            assert resp.status == 200
            doc = await resp.json()
        async with http.get(f"{compose.gateway}/docs") as resp:
            assert resp.status == 200 and "swagger-ui" in await resp.text()
        async with http.get(f"{compose.gateway}/docs/init.js") as resp:
            assert "/openapi.json" in await resp.text()
    assert doc["paths"]["/publish"]["post"]["requestBody"]
    assert set(doc["paths"]) >= {"/publish", "/events", "/stats", "/healthz", "/readyz"}
    assert doc["paths"]["/events"]["get"] and doc["paths"]["/stats"]["get"]


async def test_the_seeds_demo_gives_exact_counts_through_the_gateway(compose: Compose) -> None:
    """5,000 events, 20 % duplicates, as the seeds' publishers send them."""
    cfg = compose.load(events=5000)
    report = await run_load(cfg)
    assert report.failed_events == 0
    assert report.got == {"received": 5000, "unique_processed": 4000, "duplicate_dropped": 1000}
    async with (
        compose.session() as http,
        http.get(f"{compose.gateway}/events", params={"topic": cfg.topic, "limit": "10"}) as resp,
    ):
        assert resp.status == 200 and len(await resp.json()) == 10


async def test_the_log_protocols_reach_ingest_through_the_gateway(compose: Compose) -> None:
    """OTLP, Loki push and both bulk paths go to ingest, and so does the probe of
    Elasticsearch clients under ingest's prefix."""
    topic = f"gw-proto-{uuid.uuid4().hex[:8]}"
    otlp = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": topic}}]},
        "scopeLogs": [{"logRecords": [{"body": {"stringValue": "otlp"}}]}],
    }]}  # fmt: skip
    loki = {"streams": [{"stream": {"service_name": topic}, "values": [["1", "loki"]]}]}
    bulk = f'{{"create":{{"_index":"{topic}","_id":"b1"}}}}\n{{"m":"bulk"}}\n'
    by_path = '{"create":{"_id":"b2"}}\n{"m":"by path"}\n'
    ndjson = {"Content-Type": "application/x-ndjson"}
    async with compose.session() as http:
        async with http.post(f"{compose.gateway}/v1/logs", json=otlp) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(f"{compose.gateway}/loki/api/v1/push", json=loki) as resp:
            assert resp.status == 204, await resp.text()
        async with http.post(f"{compose.gateway}/_bulk", data=bulk, headers=ndjson) as resp:
            assert resp.status == 200 and not (await resp.json())["errors"]
        async with http.post(f"{compose.gateway}/{topic}/_bulk", data=by_path,
                             headers=ndjson) as resp:  # fmt: skip
            assert resp.status == 200 and not (await resp.json())["errors"]
        async with http.get(f"{compose.gateway}/ingest/") as resp:
            assert (await resp.json())["version"]["number"].startswith("8.")

        async def stored() -> int:
            async with http.get(f"{compose.gateway}/events", params={"topic": topic}) as r:
                return len(await r.json())

        await eventually(stored, lambda n: n == 4, timeout=60, what="the four events stored")


async def _queue_consumers(http: aiohttp.ClientSession, compose: Compose) -> int:
    auth = {"Authorization": "Basic " + base64.b64encode(b"pubsub:pubsub").decode()}
    async with http.get(f"{compose.management}/api/queues/%2F/{QUEUE}", headers=auth) as resp:
        if resp.status != 200:
            return -1
        return int((await resp.json()).get("consumers", -1))


def _stored_by(compose: Compose, cid: str) -> float:
    metrics = compose.exec(
        cid,
        "python",
        "-c",
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())",
    )
    found = re.search(r"^pubsub_consumer_events_received_total (\S+)$", metrics, re.M)
    assert found, f"no pubsub_consumer_events_received_total in {cid}'s metrics"
    return float(found.group(1))


async def test_four_consumers_after_scaling_each_store_events(compose: Compose) -> None:
    compose("up", "-d", "--no-recreate", "--scale", "consumer=4", *compose.services)
    compose.wait_healthy(time.monotonic() + HEALTHY_WITHIN)
    async with compose.session() as http:
        await eventually(
            lambda: _queue_consumers(http, compose),
            lambda n: n == 4,
            timeout=60,
            interval=0.5,
            what="four consumers on the queue",
        )
        consumers = compose.ids("consumer")
        assert len(consumers) == 4
        before = {cid: _stored_by(compose, cid) for cid in consumers}
        # Many small messages, so that the broker spreads them over every consumer.
        cfg = compose.load(
            events=20_000,
            batch_size=100,
            concurrency=8,
        )
        report = await run_load(cfg)
    assert report.ok, (report.expected, report.got)
    gained = {cid[:12]: _stored_by(compose, cid) - before[cid] for cid in consumers}
    assert all(n > 0 for n in gained.values()), gained


async def test_a_killed_consumer_and_a_restarted_broker_lose_and_double_nothing(
    compose: Compose,
) -> None:
    """A stream of 100,000 events (20 % duplicates); mid-stream one consumer is killed with
    ``docker kill`` and the RabbitMQ container is restarted."""
    topic = f"compose-faults-{uuid.uuid4().hex[:8]}"
    cfg = compose.load(
        events=STREAM_EVENTS,
        batch_size=100,
        concurrency=4,
        topic=topic,
        retries=400,
    )
    victim = compose.ids("consumer")[0]
    (broker,) = compose.ids("rabbitmq")
    timeline: dict[str, float] = {}

    def inject() -> None:
        docker("kill", victim)
        timeline["restart"] = time.monotonic()
        docker("restart", broker)
        timeline["restarted"] = time.monotonic()

    async with compose.session(connector=aiohttp.TCPConnector(limit=cfg.concurrency)) as http:
        before = await fetch_stats(http, compose.gateway)
        source, report = await stream_through(
            http, cfg, lambda: asyncio.to_thread(inject), start_after=STREAM_EVENTS // 5
        )
        after = await settled(http, compose.gateway, before["received"] + report.sent, timeout=180)
    docker("start", victim)
    stored = int(compose.psql(f"SELECT count(*) FROM pubsub.events WHERE topic = '{topic}'"))
    received = after["received"] - before["received"]
    unique = after["unique_processed"] - before["unique_processed"]
    print(
        f"stream: {report.sent:,} events, {sum(report.answers.values()) - report.answers[202]}"
        f" refused requests, broker restart took {timeline['restarted'] - timeline['restart']:.1f}"
        f" s, lost {source.unique - stored}, doubled {(received - report.sent) + (unique - stored)}"
    )
    assert report.failed_events == 0
    assert report.sent >= STREAM_EVENTS
    assert stored == source.unique, "lost events"
    assert received == report.sent and unique == stored, "doubled events"
    assert after["duplicate_dropped"] - before["duplicate_dropped"] == report.sent - stored
    # The faults hit: the broker restart refused or cut requests mid-stream.
    assert report.answers[202] < sum(report.answers.values()), report.answers


async def _prometheus(
    http: aiohttp.ClientSession, compose: Compose, path: str, **params: str
) -> Any:
    async with http.get(f"{compose.prometheus}/api/v1/{path}", params=params) as resp:
        body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]


def _alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def _expressions() -> list[str]:
    """Every PromQL expression of the dashboard, and of each alert without its threshold (the
    threshold filters the data away when all is well)."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "pipeline.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    for rule in _alert_rules():
        lhs = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[-+\d.e]+\s*$", "", rule["expr"])
        assert lhs != rule["expr"], f"no threshold found in {rule['expr']}"
        exprs.append(lhs)
    return exprs


async def test_prometheus_scrapes_every_target_and_every_query_returns_data(
    compose: Compose,
) -> None:
    consumers = len(compose.ids("consumer"))
    async with compose.session() as http:

        async def targets() -> list[tuple[str, str]]:
            data = await _prometheus(http, compose, "targets")
            return [(t["labels"]["job"], t["health"]) for t in data["activeTargets"]]

        await eventually(
            targets,
            lambda ts: (
                all(h == "up" for _, h in ts)
                and sorted(j for j, _ in ts)
                == sorted(["ingest", "readapi", "rabbitmq", *["consumer"] * consumers])
            ),
            timeout=90,
            interval=1,
            what="every scrape target up",
        )
        groups = (await _prometheus(http, compose, "rules"))["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert loaded == {r["alert"] for r in _alert_rules()}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        for expr in _expressions():

            async def query(expr: str = expr) -> list[Any]:
                result: list[Any] = (await _prometheus(http, compose, "query", query=expr))[
                    "result"
                ]
                return result

            await eventually(query, bool, timeout=60, interval=1, what=f"data for {expr}")


async def test_the_live_stream_and_the_events_page_work_through_the_gateway(
    compose: Compose,
) -> None:
    """nginx must pass the stream through unbuffered: each event arrives on its own."""
    topic = f"gw-stream-{uuid.uuid4().hex[:8]}"
    async with compose.session() as http:
        async with http.get(f"{compose.gateway}/", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200 and "<title>pubsub-aggregator" in await resp.text()
        async with http.get(f"{compose.gateway}/events/stream", params={"topic": topic}) as stream:
            assert stream.status == 200
            for i in range(3):
                sent = time.monotonic()
                body = [{"topic": topic, "event_id": f"s{i}", "source": "compose"}]
                async with http.post(f"{compose.gateway}/publish", json=body) as resp:
                    assert resp.status == 202
                async with asyncio.timeout(5):
                    async for msg in messages(stream):
                        assert json.loads(msg.data)["event_id"] == f"s{i}"
                        break
                assert time.monotonic() - sent < 2.0


def test_grafana_reads_events_through_its_read_only_role(compose: Compose) -> None:
    """The role made on the database's first start runs the events dashboard's logs query,
    and cannot write."""
    (pg,) = compose.ids("postgres")
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "events.json").read_text())
    (logs,) = [p for p in board["panels"] if p["type"] == "logs"]
    query = grafana_sql(
        logs["targets"][0]["rawSql"], topic="__all", start="2000-01-01T00:00:00Z",
        end="2100-01-01T00:00:00Z",
    )  # fmt: skip

    def as_reader(sql: str) -> str:
        return compose.exec(pg, "psql", "-U", "grafana_reader", "-d", "pubsub", "-tAc", sql)

    assert len(as_reader(query).strip().splitlines()) == 1000  # the panel's limit
    with pytest.raises(AssertionError, match="read-only transaction"):
        as_reader("DELETE FROM blocks")


async def test_events_and_counters_persist_across_down_and_up(compose: Compose) -> None:
    async with compose.session() as http:
        before = await fetch_stats(http, compose.gateway)
    compose("down")  # volumes kept
    assert not compose.ids("postgres")
    compose.up()
    async with compose.session() as http:
        after = await fetch_stats(http, compose.gateway)
        async with http.get(f"{compose.gateway}/events", params={"limit": "5"}) as resp:
            events = await resp.json()
    keys = ("received", "unique_processed", "duplicate_dropped", "topics")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
    assert before["unique_processed"] >= 4000 and len(events) == 5


def test_alert_rules_fire_when_they_should_and_only_then() -> None:
    """``promtool test rules`` on deploy/prometheus/alerts.test.yml, in the Prometheus image."""
    from tests import servers

    out = docker(
        "run", "--rm", "--entrypoint", "promtool",
        "-v", f"{DEPLOY / 'prometheus'}:/etc/prometheus:ro",
        servers.image("prometheus"), "test", "rules", "/etc/prometheus/alerts.test.yml",
    )  # fmt: skip
    assert "SUCCESS" in out, out
