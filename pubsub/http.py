"""HTTP plumbing shared by the services: JSON replies and errors, the token check, serving."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NotRequired

import orjson
from aiohttp import web
from typing_extensions import TypedDict

log = logging.getLogger("pubsub.http")

MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class Problem(TypedDict):
    index: NotRequired[int]
    field: str | None
    problem: str


class ErrorReply(TypedDict):
    """The body of every error answer."""

    error: str
    problems: NotRequired[list[Problem]]
    problem_count: NotRequired[int]


# Not frozen: raising sets __traceback__ (also through context managers), and eq=False keeps
# the exception hashable.
@dataclass(eq=False)
class Refusal(Exception):
    """A request that is answered with an error; the error middleware renders it as JSON.

    ``problems`` name what is wrong inside a refused body (at most a configured number of
    them; ``problem_count`` says how many there were in all).
    """

    status: int
    message: str
    problems: tuple[dict[str, Any], ...] = ()
    problem_count: int = 0
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def unavailable(cls, message: str, *, retry_after: int) -> Refusal:
        """503: a server behind this one is down; the client should retry later."""
        return cls(503, message, headers=(("Retry-After", str(retry_after)),))

    def with_headers(self, *headers: tuple[str, str]) -> Refusal:
        return replace(self, headers=(*self.headers, *headers))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.problems:
            out["problems"] = list(self.problems)
            out["problem_count"] = self.problem_count
        return out

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=dict(self.headers))


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in JSON; an unexpected exception is logged with its request."""
    try:
        return await handler(request)
    except Refusal as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 413:
            message = f"body exceeds the limit of {request.app[MAX_BODY_BYTES]} bytes"
        return Refusal(exc.status, message).response()
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return Refusal(500, "internal error; the request was not processed").response()


# Pages load only what their own service serves (no CDN, no inline script), and no other site
# may frame them; no answer is sniffed into another type or leaks its URL as a referrer.
CONTENT_SECURITY_POLICY = "default-src 'self'; frame-ancestors 'none'"


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    # The header as set, not response.content_type, which parses it on every answer.
    if response.headers.get("Content-Type", "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)


def new_app(
    *,
    max_body_bytes: int = 1024 * 1024,
    raw_bodies: bool = False,
) -> web.Application:
    """An application answering errors in JSON (its routes guarded by
    :func:`pubsub.access.guard`). With ``raw_bodies`` request bodies
    arrive as sent, their ``Content-Encoding`` left for the handlers to undo (aiohttp would
    inflate them on the event loop)."""
    middlewares: list[Any] = [json_errors]
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=middlewares,
        handler_args={"auto_decompress": False} if raw_bodies else None,
    )
    app[MAX_BODY_BYTES] = max_body_bytes
    app.on_response_prepare.append(_security_headers)
    return app


def index_body(
    service: str, endpoints: list[str], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a service is and what it serves (and ``extra``, what its clients look for)."""
    return {**(extra or {}), "service": service, "endpoints": endpoints}


def add_index(
    app: web.Application,
    service: str,
    endpoints: list[str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """``/``: what this service is and what it serves, for whoever opens it in a browser."""
    body = index_body(service, endpoints, extra)

    async def index(_: web.Request) -> web.Response:
        return json_response(body)

    app.router.add_get("/", index)


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, *, what: str, reuse_port: bool = False
) -> AsyncIterator[int]:
    """Serve ``app`` for the time of the ``with`` block, which gets the bound port (useful
    with port 0). On leaving it the listener closes first, then the requests in progress are
    finished (each handler bounds its own wait).

    With ``reuse_port`` several processes share the port and the kernel spreads connections.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
        await site.start()
        bound: int = runner.addresses[0][1] if runner.addresses else port
        log.info("%s listening on http://%s:%d", what, host, bound)
        yield bound
    finally:
        await runner.shutdown()
        await runner.cleanup()
