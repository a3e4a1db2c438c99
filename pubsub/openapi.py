"""The OpenAPI 3.1 documents of the HTTP services, and Swagger UI to show them.

A document is derived from route declarations (``pubsub.api``, ``pubsub.routes``) and the
types they name, the same pydantic types that validate requests. Swagger UI is served from a
package (no CDN: it works offline)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from pubsub import http, routes
from pubsub.routes import Route
from pubsub.settings import Settings


def schemas(*types: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in types:
        schema = TypeAdapter(t).json_schema(ref_template=routes.REF)
        out.update(schema.pop("$defs", {}))
        out[schema.get("title", getattr(t, "__name__", "Schema"))] = schema
    return out


# Where every service serves its document and Swagger UI.
DOCUMENT, DOCS = "/openapi.json", "/docs"
PATHS = (DOCS, DOCUMENT)


def document(title: str, served: Iterable[Route], settings: Settings) -> dict[str, Any]:
    """The document of a service that serves ``served``."""
    served = list(served)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0"},
        "paths": routes.paths(served, settings),
        "components": {
            "schemas": schemas(*routes.models(served)),
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

    add_document(app, DOCUMENT, document)
    app.router.add_get(DOCS, page)
    app.router.add_get(f"{DOCS}/init.js", init)
    app.router.add_static(f"{DOCS}/static", Path(swagger_ui_path))


def add_document(app: web.Application, path: str, document: dict[str, Any]) -> None:
    """Serve an OpenAPI document as JSON at ``path``."""

    async def spec(_: web.Request) -> web.Response:
        return http.json_response(document)

    app.router.add_get(path, spec)
