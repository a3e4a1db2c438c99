"""``/healthz`` (the process answers), ``/readyz`` (its servers answer) and ``/metrics``
(Prometheus), which every service serves (``pubsub.api.HEALTH``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from pubsub import api, openapi, routes
from pubsub.http import json_response
from pubsub.settings import Settings

ReadyCheck = Callable[[], Awaitable[Mapping[str, bool]]]


def endpoints(served: Iterable[routes.Route]) -> list[str]:
    """What a service serving ``served`` lists at ``/``: those, its documents, its health."""
    return [*routes.listing(served), *openapi.PATHS, *routes.listing(api.HEALTH)]


def add_health(app: web.Application, ready: ReadyCheck, settings: Settings) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = dict(await ready())
        down = [name for name, up in checks.items() if not up]
        if not down:
            return json_response({"status": "ready", "checks": checks})
        message = (
            f"not connected to: {', '.join(down)}; retrying with backoff"
            " (the log names each server tried)"
        )
        return json_response(
            {"status": "unavailable", "checks": checks, "message": message}, status=503
        )

    handlers = {api.HEALTHZ: healthz, api.READYZ: readyz, api.METRICS: make_aiohttp_handler()}
    routes.mount(app, api.HEALTH, handlers, settings)
