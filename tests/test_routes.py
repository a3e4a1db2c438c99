"""One declaration per route (``pubsub.api``) feeds the router, the token check, the query
parsing and the OpenAPI documents of both services and the gateway."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from ingest.app import make_app as make_ingest
from ingest.broker import BrokerClient
from pubsub import access, api, openapi, routes
from pubsub.http import Refusal
from pubsub.settings import Settings
from readapi.app import Sources
from readapi.app import make_app as make_read

ROOT = Path(__file__).parent.parent
SETTINGS = Settings.from_env({}, publish_token="p", read_token="r")
# What every service serves besides its declared routes: its index, Swagger UI and documents.
INFRASTRUCTURE = re.compile(r"^(/|/docs.*|/openapi.*\.json|/ui.*)$")


def served(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and not INFRASTRUCTURE.match(path):
            out.add((route.method, path))
    return out


def declared(*tables: tuple[routes.Route, ...]) -> set[tuple[str, str]]:
    return {(r.method, r.path) for table in tables for r in table}


def apps() -> dict[str, tuple[web.Application, tuple[routes.Route, ...]]]:
    ingest = make_ingest(SETTINGS, cast(BrokerClient, object()))
    read = make_read(Sources(SETTINGS))
    return {"ingest": (ingest, api.INGEST), "readapi": (read, api.READ)}


@pytest.mark.parametrize("service", ["ingest", "readapi"])
def test_the_router_serves_exactly_the_declared_routes(service: str) -> None:
    app, table = apps()[service]
    assert served(app) == declared(table, api.HEALTH)


@pytest.mark.parametrize("service", ["ingest", "readapi"])
def test_the_document_lists_exactly_the_declared_routes(service: str) -> None:
    table = apps()[service][1]
    document = openapi.document(service, [*table, *api.HEALTH], SETTINGS)
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert listed == declared(table, api.HEALTH)
    for route in table:
        operation = document["paths"][route.path][route.method.lower()]
        assert ("security" in operation) == (route.auth != "open")


def test_the_gateway_document_lists_every_route_of_both_services() -> None:
    document = openapi.document("gateway", api.GATEWAY, SETTINGS)
    assert "post" in document["paths"]["/publish"]
    assert {"/events", "/events/stream", "/stats", "/healthz"} <= set(document["paths"])
    assert {"Event", "Accepted", "Stats", "ErrorReply"} <= set(document["components"]["schemas"])


def test_each_route_asks_for_its_own_kind_of_token() -> None:
    registry = access.tenancy(SETTINGS).registry
    guarded = {r.path: r.auth for r in api.GATEWAY if r.auth != "open"}
    assert guarded == {
        "/publish": "publish",
        "/v1/logs": "publish",
        "/loki/api/v1/push": "publish",
        "/_bulk": "publish",
        "/{index}/_bulk": "publish",
        "/events": "read",
        "/events/histogram": "read",
        "/events/stream": "read",
        "/stats": "read",
        "/tenants": "admin",
        "/dead-letters": "admin",
        "/dead-letters/replay": "admin",
    }
    assert registry.access("Bearer p", None, "publish").tenant == "default"
    assert registry.access("Bearer r", None, "read").tenant == "default"
    for token, need in (("Bearer r", "publish"), ("Bearer p", "read"), ("Bearer x", "read")):
        with pytest.raises(Refusal) as refused:
            registry.access(token, None, need)  # type: ignore[arg-type]
        assert refused.value.status == 401
    # No token set: anonymous, as before tenants (on loopback only, see pubsub.tokens).
    anonymous = access.tenancy(Settings.from_env({})).registry
    assert anonymous.access(None, None, "publish").tenant == "default"
    assert anonymous.access(None, None, "read").tenant == "default"


def test_the_gateway_sends_each_ingest_route_to_ingest() -> None:
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    regexes = re.findall(r"location ~ (\S+) { proxy_pass http://ingest; }", conf)
    for route in api.INGEST:
        if "{" not in route.path:
            assert f"location = {route.path} {{ proxy_pass http://ingest; }}" in conf
            continue
        example = re.sub(r"{\w+}", "app-logs", route.path)
        assert any(re.fullmatch(r, example) for r in regexes), route.path
        # Ingest's own prefix is not a variable part of the route.
        assert not any(re.fullmatch(r, re.sub(r"{\w+}", "ingest", route.path)) for r in regexes)


def test_the_limit_bound_comes_from_the_settings() -> None:
    small = Settings.from_env({}, events_max_limit=10, events_default_limit=5)
    document = openapi.document("read", api.READ, small)
    limit = next(
        p for p in document["paths"]["/events"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10}


class FakeRequest:
    def __init__(self, query: dict[str, str]) -> None:
        self.query = query


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"x": "1"}, "unknown query parameter(s): x; known: cursor, event_id, limit, order, "
                     "q, since, source, topic, until"),
        ({"q": "x" * 257}, "q must be at most 256 characters"),
        ({"q": "a b c d e f g h i"}, "q must have at most 8 words"),
        ({"q": "time\x00out"}, "q must not contain NUL"),
        ({"topic": "t" * 256}, "topic must be at most 255 characters without NUL"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"limit": "0"}, "limit must be between 1 and 1000"),
        ({"since": "yesterday"}, "since must be an RFC 3339 time, e.g. 2025-10-21T10:00:00Z"),
        ({"until": "2025-10-21T10:00:00"}, "until must include a UTC offset, e.g. "
                                           "2025-10-21T10:00:00Z"),
    ],
)  # fmt: skip
def test_query_parameters_are_refused_with_the_same_words(
    query: dict[str, str], message: str
) -> None:
    with pytest.raises(Refusal) as refused:
        api.EVENTS.parse(cast(Any, FakeRequest(query)), Settings.from_env({}))
    assert (refused.value.status, refused.value.message) == (400, message)


def test_empty_parameters_mean_any() -> None:
    request = cast(Any, FakeRequest({"topic": "", "limit": "7", "since": "", "cursor": ""}))
    q = api.EVENTS.parse(request, Settings.from_env({}))
    assert isinstance(q, api.EventsQuery)
    assert (q.topic, q.limit, q.since, q.cursor) == (None, 7, None, None)
