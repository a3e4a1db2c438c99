"""Ingest's admin routes for the dead-letter queue: list (``GET /dead-letters``) and replay
(``POST /dead-letters/replay``), for a token of scope ``admin`` (see :mod:`pubsub.tenants`).

Ingest serves them because a replay publishes, as ingest does; both are the shared
:mod:`pubsub.deadletters`, which the ``dead-letters`` command runs too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
from aiohttp import web

from ingest.intake import SETTINGS
from pubsub import api, deadletters, http, routes
from pubsub.http import Refusal
from pubsub.settings import Settings

T = TypeVar("T")

# What a command-line connection raises when no node answers (see pubsub.failover).
_UNREACHABLE = (OSError, aio_pika.exceptions.AMQPError)


async def _on_broker(request: web.Request, act: Callable[[Settings, int], Awaitable[T]]) -> T:
    """``act(settings, limit)`` with the request's ``limit``; 503 if no node answers."""
    settings = request.app[SETTINGS]
    q = routes.params(request, api.DeadLettersQuery)
    try:
        return await act(settings, q.limit)
    except _UNREACHABLE as exc:
        raise Refusal.unavailable(
            f"the broker is unavailable: {exc}", retry_after=settings.retry_after
        ) from None


async def list_dead(request: web.Request) -> web.Response:
    letters = await _on_broker(request, lambda s, n: deadletters.list_dead(s, limit=n))
    return http.json_response(letters)


async def replay(request: web.Request) -> web.Response:
    moved = await _on_broker(request, lambda s, n: deadletters.replay(s, limit=n))
    return http.json_response(api.Replayed(moved=moved))
