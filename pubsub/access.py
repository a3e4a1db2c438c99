"""Who may call a guarded route, as which tenant: the middleware every HTTP service puts in
front of its routes (see :mod:`pubsub.tenants` for the rules).

Each route declares what it needs (:attr:`pubsub.routes.Route.auth`); the middleware resolves
the request's token and ``X-Scope-OrgID`` against the registry in force and leaves the
outcome on the request (:func:`of`) for the handler, or answers 400, 401 or 403 itself. The
registry is read again on SIGHUP and when its file changes (``PUBSUB_TENANTS_RELOAD_INTERVAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web

from pubsub.http import Handler
from pubsub.routes import Route
from pubsub.settings import Settings
from pubsub.tenants import HEADER, Access, Need, Tenancy

ACCESS = web.RequestKey("access", Access)
TENANCY = web.AppKey("tenancy", Tenancy)
_INTERVAL = web.AppKey("tenants_reload_interval", float)

# Every registry of this process, read again on one SIGHUP (tests run several apps in one).
_HANGUP: set[Tenancy] = set()


def tenancy(settings: Settings) -> Tenancy:
    """The registry of ``settings``: its tenants file, or ``default`` with its tokens;
    :class:`~pubsub.tenants.TenantsError` when the file cannot be used."""
    return Tenancy(
        path=settings.tenants_file,
        publish_token=settings.publish_token,
        read_token=settings.read_token,
        retention=settings.retention,
    )


def of(request: web.Request) -> Access:
    """The tenant and scope the middleware found for ``request`` (a guarded route's)."""
    return request[ACCESS]


def guard(
    app: web.Application, routes: Iterable[Route], tenants: Tenancy, *, reload_interval: float
) -> None:
    """Require of each guarded route of ``routes`` in ``app`` what it declares, from
    ``tenants``; keep ``tenants`` up to date while ``app`` runs (SIGHUP, and a look at its
    file every ``reload_interval`` seconds; 0: on SIGHUP only)."""
    needs: dict[str, Need] = {r.path: r.auth for r in routes if r.auth != "open"}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A route with a variable part (/{index}/_bulk) is guarded by its declared path.
        resource = request.match_info.route.resource
        need = needs.get(resource.canonical if resource is not None else request.path)
        if need is not None:
            headers = request.headers
            request[ACCESS] = tenants.registry.access(
                headers.get("Authorization"), headers.get(HEADER), need
            )
        return await handler(request)

    app.middlewares.append(check)
    app[TENANCY] = tenants
    app[_INTERVAL] = reload_interval
    app.cleanup_ctx.append(_kept_current)


async def _kept_current(app: web.Application) -> AsyncIterator[None]:
    tenants = app[TENANCY]
    stop = asyncio.Event()
    watching = asyncio.create_task(tenants.watch(stop, interval=app[_INTERVAL]))
    _HANGUP.add(tenants)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGHUP, _reload_all)
    try:
        yield
    finally:
        _HANGUP.discard(tenants)
        stop.set()
        await watching


def _reload_all(*_: Any) -> None:
    for tenants in list(_HANGUP):
        tenants.reload()
