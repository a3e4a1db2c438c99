"""What the OpenAPI 3.1 documents of the HTTP services share, and Swagger UI to show them.

Each service builds its own document (``ingest.openapi``, ``readapi.openapi``) from the same
pydantic types that validate the requests, with the pieces here: the error reply, the health
endpoints, ``POST /publish`` (which the gateway's document shows too). Swagger UI is served
from a package (no CDN: it works offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NotRequired

from aiohttp import web
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from pubsub import http
from pubsub.event import Event

_REF = "#/components/schemas/{model}"
# A bearer token when the service is configured with one (PUBSUB_*_TOKEN), none otherwise.
OPTIONAL_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]


class Problem(TypedDict):
    index: NotRequired[int]
    field: str | None
    problem: str


class ErrorReply(TypedDict):
    error: str
    problems: NotRequired[list[Problem]]
    problem_count: NotRequired[int]


def schemas(*types: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in types:
        schema = TypeAdapter(t).json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[schema.get("title", getattr(t, "__name__", "Schema"))] = schema
    return out


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON, bad parameter or header.",
        401: "Missing or wrong bearer token.",
        413: "Body or batch over the limit.",
        415: "Not application/json (UTF-8).",
        422: "Schema violations, with the index and field of each.",
        503: "Broker or database unavailable; retry after `Retry-After` seconds.",
    }
    return {str(c): json_body(ref("ErrorReply"), text[c]) for c in codes}


# /healthz, /readyz and /metrics: every service serves them.
HEALTH = {
    "/healthz": {"get": {"summary": "The process answers.", "responses": {"200": {
        "description": "alive"}}}},
    "/readyz": {"get": {"summary": "Broker and database connections are up.", "responses": {
        "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {
        "description": "text exposition format"}}}},
}  # fmt: skip


class Accepted(TypedDict):
    accepted: int
    request_id: str


def publish_path() -> dict[str, Any]:
    """``POST /publish``, as ingest serves it and as the gateway's document shows it."""
    return {
        "post": {
            "summary": "Publish one event or a batch of events.",
            "security": OPTIONAL_BEARER,
            "description": (
                "Answers 202 only after the broker confirmed every event. A batch is accepted "
                "or refused as a whole. Send `Idempotency-Key` to make retries safe."
            ),
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                ref("Event"),
                                {"type": "array", "items": ref("Event"), "minItems": 1},
                            ]
                        }
                    },
                    "application/x-ndjson": {
                        "schema": {
                            "type": "string",
                            "description": "One Event object per line (Vector, Fluent Bit).",
                        }
                    },
                },
            },
            "responses": {
                "202": json_body(ref("Accepted"), "Accepted: confirmed by the broker."),
                **errors(400, 401, 413, 415, 422, 503),
            },
        }
    }


PUBLISH_SCHEMAS = (Event, Accepted)


def document(title: str, paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
_INIT = "SwaggerUIBundle({url: '/openapi.json', dom_id: '#ui'});\n"


def add_docs(app: web.Application, document: dict[str, Any]) -> None:
    """``/openapi.json`` and Swagger UI at ``/docs``."""
    from swagger_ui_bundle import swagger_ui_path

    async def page(_: web.Request) -> web.Response:
        title = document["info"]["title"]
        return web.Response(text=_PAGE.format(title=title), content_type="text/html")

    async def init(_: web.Request) -> web.Response:
        return web.Response(text=_INIT, content_type="application/javascript")

    add_document(app, "/openapi.json", document)
    app.router.add_get("/docs", page)
    app.router.add_get("/docs/init.js", init)
    app.router.add_static("/docs/static", Path(swagger_ui_path))


def add_document(app: web.Application, path: str, document: dict[str, Any]) -> None:
    """Serve an OpenAPI document as JSON at ``path``."""

    async def spec(_: web.Request) -> web.Response:
        return http.json_response(document)

    app.router.add_get(path, spec)
