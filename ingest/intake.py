"""What every ingest route shares: the application's parts, request ids, and reading a body
within the memory budget."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from aiohttp import web

from ingest.broker import BrokerClient
from ingest.budget import Budget, Held
from pubsub.http import Refusal
from pubsub.settings import Settings

BROKER = web.AppKey("broker", BrokerClient)
BUDGET = web.AppKey("budget", Budget)
SETTINGS = web.AppKey("settings", Settings)

_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count()


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is fit for logs and headers, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 64 and given.isprintable() and "," not in given:
        return given
    # Unique across processes thanks to the random prefix; cheaper than uuid4 per request.
    return f"{_ID_PREFIX}-{next(_ids):x}"


async def read_body(request: web.Request, held: Held, settings: Settings) -> bytes:
    """The body as it arrives, after any ``Content-Encoding`` is undone, each chunk counted
    against the request's share of the budget and the body limit before it is kept."""
    limit = settings.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_read_timeout):
            if request.content_length is not None and _identity(request):
                # Its Content-Length (within the limit, checked before) is reserved already,
                # and aiohttp reads no more than that: one read, nothing to count per chunk.
                return await request.read()
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise Refusal(413, f"body exceeds the limit of {limit} bytes")
                held.grow_to(size)
                chunks.append(chunk)
    except TimeoutError:
        raise Refusal(
            408,
            f"the body did not arrive within {settings.body_read_timeout:g} s "
            "(PUBSUB_BODY_READ_TIMEOUT)",
        ) from None
    except web.RequestPayloadError as exc:
        # A body cut short, or a compressed one that cannot be decoded (corrupt, or more
        # members than aiohttp accepts): name the deepest cause, it says what was wrong.
        cause: BaseException = exc
        while (deeper := cause.__cause__ or cause.__context__) is not None:
            cause = deeper
        reason = " ".join(str(cause).split())
        raise Refusal(400, f"the body could not be read: {reason}") from None
    return b"".join(chunks)


def _identity(request: web.Request) -> bool:
    """Whether the body arrives as sent: no ``Content-Encoding`` for aiohttp to undo."""
    return request.headers.get("Content-Encoding", "identity").lower() in ("identity", "")
