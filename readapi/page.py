"""``/``: the events page for people, and the service index for programs.

A browser (``Accept: text/html``) gets the page; anything else gets the JSON index every
service serves at ``/``. The page's files ship in the package (``readapi/static``): no CDN, no
front-end build step. The page calls the same endpoints as everybody (``/stats``, ``/events``,
``/events/stream``), with the read token when one is configured.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from pubsub import http

STATIC = Path(__file__).with_name("static")


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept.split("text/html")[0]


def add_page(app: web.Application, service: str, endpoints: list[str]) -> None:
    body = http.index_body(service, [*endpoints, "/ (text/html: the events page)"])
    page = (STATIC / "index.html").read_bytes()

    async def index(request: web.Request) -> web.Response:
        if _wants_html(request):
            return web.Response(
                body=page,
                content_type="text/html",
                charset="utf-8",
                headers={"Cache-Control": "no-cache"},  # nosniff: every answer has it
            )
        return http.json_response(body)

    app.router.add_get("/", index)
    app.router.add_static("/ui/", STATIC, append_version=False)
