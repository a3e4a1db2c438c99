"""What can be checked of the deployment files without a Docker engine or a cluster: they
parse, keep the rules the README promises, start modules that exist, and every metric a
dashboard panel or alert rule names is really exported by the running services."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import yaml
import yarl

from bench.postgres import RECOMMENDED
from pubsub import api
from pubsub.settings import Settings
from stack.supervisor import Supervisor

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
APP_SERVICES = ("ingest", "consumer", "readapi")


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    """A compose file with every ``${VAR:-default}`` at its default."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", (ROOT / name).read_text())
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and tag != "latest" and any(c.isdigit() for c in tag)


def test_compose_services_images_and_start_order() -> None:
    services = compose()["services"]
    assert set(services) >= {"rabbitmq", "postgres", *APP_SERVICES, "gateway", "prometheus",
                             "grafana", "publisher"}  # fmt: skip
    for name, svc in services.items():
        assert _pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned"
    for name in (*APP_SERVICES, "rabbitmq", "postgres"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        module = svc["command"][svc["command"].index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_compose_scales_consumers_and_keeps_secrets_off_guest() -> None:
    services = compose()["services"]
    consumer = services["consumer"]
    # `--scale consumer=N` needs replicas without fixed names or host ports.
    assert "container_name" not in consumer and "ports" not in consumer
    assert consumer["deploy"]["replicas"] == 2
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"] != "guest"
    assert "guest" not in services["ingest"]["environment"]["PUBSUB_AMQP_URL"]
    assert services["publisher"]["profiles"] == ["demo"]
    assert any("postgres-data" in v for v in services["postgres"]["volumes"])
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins


def test_compose_is_closed_by_default() -> None:
    """Only the gateway on every interface, the consoles on loopback, Grafana without
    anonymous users, and services that connect as roles other than the superuser."""
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {
        "gateway": ["0.0.0.0:8080:8080"],
        "rabbitmq": ["127.0.0.1:15672:15672"],
        "prometheus": ["127.0.0.1:9090:9090"],
        "grafana": ["127.0.0.1:3000:3000"],
    }
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # a default only: from a variable
    text = (ROOT / "docker-compose.yml").read_text()
    for who in ("RABBITMQ", "POSTGRES", "GRAFANA", "OWNER", "APP", "READER"):
        assert f"${{PUBSUB_{who}_PASSWORD:-" in text, who
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    roles = {
        name: re.match(r"postgresql://(\w+):", s["environment"]["PUBSUB_DATABASE_URL"])[1]  # type: ignore[index]
        for name, s in services.items()
        if name in (*APP_SERVICES, "migrate")
    }
    assert roles == {"ingest": "pubsub_app", "consumer": "pubsub_app",
                     "readapi": "pubsub_reader", "migrate": "pubsub_owner"}  # fmt: skip
    assert superuser not in roles.values()
    assert services["migrate"]["command"] == ["python", "-m", "pubsub.dbschema"]
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_compose_runs_postgres_with_the_settings_the_soak_measured() -> None:
    command = compose()["services"]["postgres"]["command"]
    assert command[0] == "postgres" and command[1::2] == ["-c"] * (len(command) // 2)
    assert dict(a.split("=", 1) for a in command[2::2]) == dict(RECOMMENDED)


def test_gateway_routes_publish_to_ingest_and_the_rest_to_the_read_api() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"location = /publish\s*\{\s*proxy_pass http://ingest;", conf)
    assert re.search(r"location / \{\s*proxy_pass http://readapi;", conf)
    assert "client_max_body_size 16m" in conf


def test_dockerfile_is_multi_stage_non_root_and_pinned() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and _pinned(base.group(1))
    assert len(froms) >= 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")


def test_prometheus_scrapes_every_service_and_rabbitmq() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {*APP_SERVICES, "rabbitmq"}
    assert jobs["consumer"]["dns_sd_configs"][0]["names"] == ["consumer"]


def test_kubernetes_manifests() -> None:
    docs = [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 3 and "ScaledObject" in kinds and "Ingress" in kinds
    for d in (d for d in docs if d["kind"] == "Deployment"):
        (container,) = d["spec"]["template"]["spec"]["containers"]
        module = container["args"][container["args"].index("-m") + 1]
        assert importlib.util.find_spec(module) is not None
        assert {"readinessProbe", "livenessProbe"} <= set(container)
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_cluster_compose_file_gives_every_service_the_three_nodes() -> None:
    base, cluster = compose(), compose("docker-compose.cluster.yml")
    nodes = [n for n in cluster["services"] if n.startswith("rabbitmq")]
    assert nodes == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    assert {cluster["services"][n]["hostname"] for n in nodes} == set(nodes)
    cookies = {cluster["services"][n]["environment"]["RABBITMQ_ERLANG_COOKIE"] for n in nodes}
    assert len(cookies) == 1
    conf = (DEPLOY / "rabbitmq" / "cluster.conf").read_text()
    assert set(re.findall(r"= rabbit@(\S+)", conf)) == set(nodes)
    for service in (*APP_SERVICES, "publisher"):
        assert service in base["services"]
        env = cluster["services"][service]["environment"]
        urls = Settings(amqp_url=env["PUBSUB_AMQP_URL"]).amqp_urls
        assert [yarl.URL(u).host for u in urls] == nodes
        assert int(env["PUBSUB_QUORUM_SIZE"]) == 3


def test_rabbitmq_cluster_resource_for_the_operator() -> None:
    (doc,) = yaml.safe_load_all((DEPLOY / "k8s" / "rabbitmq-cluster.yaml").read_text())
    assert doc["kind"] == "RabbitmqCluster" and doc["spec"]["replicas"] == 3
    assert "pause_minority" in doc["spec"]["rabbitmq"]["additionalConfig"]


def _named_metrics() -> set[str]:
    exprs = [
        t["expr"]
        for panel in json.loads((DEPLOY / "grafana/dashboards/pipeline.json").read_text())["panels"]
        for t in panel["targets"]
    ]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return set(re.findall(r"\b(pubsub_[a-z_]+)", " ".join(exprs)))


async def test_every_metric_the_dashboard_and_alerts_name_is_exported(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    named = _named_metrics()
    assert len(named) >= 10
    exported: set[str] = set()
    for name in stack.names:
        async with http.get(stack.url(name) + "/metrics") as resp:
            text = await resp.text()
        exported |= {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                     if line and not line.startswith("#")}  # fmt: skip
    missing = named - exported
    assert not missing, f"named in dashboards/alerts but exported by no service: {missing}"


def test_the_gateway_serves_no_metrics() -> None:
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    blocked = re.search(r"location ~ \^\(/ingest\)\?/metrics\$ \{[^}]*return 404", conf)
    assert blocked, "the gateway must not pass /metrics or /ingest/metrics on"


def _k8s_docs() -> list[dict[str, Any]]:
    return [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]


def test_the_kubernetes_ingress_sends_every_ingest_route_to_ingest() -> None:
    (ingress,) = [d for d in _k8s_docs() if d["kind"] == "Ingress"]
    routed = {
        p["path"]: p["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    fixed = {r.path for r in api.INGEST if "{" not in r.path}
    assert {path: routed.get(path) for path in fixed} == dict.fromkeys(fixed, "ingest")
    assert routed["/"] == "readapi"


def test_kubernetes_core_resources_validate_strictly() -> None:
    # The operators' kinds (KEDA, RabbitMQ) have no schema in the validator: only their names.
    core = [d for d in _k8s_docs() if "." not in d["apiVersion"].split("/")[0]
            or d["apiVersion"].startswith(("apps/", "networking.k8s.io/"))]  # fmt: skip
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "NetworkPolicy", "Ingress"}
    for doc in core:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_kubernetes_pods_run_with_least_privilege() -> None:
    for d in (d for d in _k8s_docs() if d["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["allowPrivilegeEscalation"] is False


def test_kubernetes_network_policies_let_in_only_what_they_name() -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in _k8s_docs() if d["kind"] == "NetworkPolicy"
    }
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def sources(app: str) -> list[tuple[str, int | None]]:
        out = []
        for spec in policies.values():
            if spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != app:
                continue
            for rule in spec.get("ingress", []):
                ports = [p["port"] for p in rule.get("ports", [])] or [None]
                for peer in rule["from"]:
                    selector = peer.get("namespaceSelector") or peer.get("podSelector")
                    label = next(iter(selector["matchLabels"].values()))
                    out += [(label, port) for port in ports]
        return out

    assert sorted(sources("ingest")) == [("ingress-nginx", 8080), ("monitoring", 8080)]
    assert sorted(sources("readapi")) == [("ingress-nginx", 8081), ("monitoring", 8081)]
    assert sources("consumer") == [("monitoring", 9100)]  # metrics only: no other ingress
    assert ("pubsub-aggregator", 5672) in sources("pubsub-rabbitmq")
    assert sources("postgresql") == [("pubsub-aggregator", 5432)]


def test_the_cluster_cookie_comes_from_the_environment() -> None:
    cluster = compose("docker-compose.cluster.yml")
    for name in ("rabbitmq", "rabbitmq-2", "rabbitmq-3"):
        cookie = cluster["services"][name]["environment"]["RABBITMQ_ERLANG_COOKIE"]
        assert cookie.startswith("${RABBITMQ_ERLANG_COOKIE:?"), cookie
