"""What every ingest route shares: the application's parts, request ids, and reading a body
within the memory budget."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import uuid
from datetime import UTC, datetime, timedelta

from aiohttp import web

from ingest import metrics
from ingest.broker import BrokerClient, BrokerUnavailable
from ingest.budget import Budget, Held, OverBudget, TenantOverBudget
from ingest.limits import Rates
from pubsub import access
from pubsub.http import Refusal
from pubsub.settings import Settings

BROKER = web.AppKey("broker", BrokerClient)
RATES = web.AppKey("rates", Rates)
BUDGET = web.AppKey("budget", Budget)
INFLATING = web.AppKey("inflating", asyncio.Semaphore)
SETTINGS = web.AppKey("settings", Settings)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count()


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is fit for logs and headers, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 64 and given.isprintable() and "," not in given:
        return given
    # Unique across processes thanks to the random prefix; cheaper than uuid4 per request.
    return f"{_ID_PREFIX}-{next(_ids):x}"


def time_of_nanos(nanos: int) -> datetime:
    """The time of Unix nanoseconds, to the microsecond PostgreSQL keeps."""
    # A timedelta multiplied: half what building one from keyword arguments costs, per record.
    return EPOCH + _MICROSECOND * (nanos // 1000)


def note_refusal(log: logging.Logger, exc: Refusal, request_id: str) -> None:
    """Count a refused request and log it (a warning when the fault is on this side)."""
    metrics.answered(exc.status)
    log.log(logging.WARNING if exc.status >= 500 else logging.DEBUG, "refused: %s", exc.message,
            extra={"request_id": request_id, "status": exc.status})  # fmt: skip


def share(request: web.Request) -> Held:
    """The request's share of the memory budget, reserved by its ``Content-Length`` (413
    past the body limit), given back when its ``with`` block ends. The body, its events and
    their message live in it until the broker confirmed them. Raises
    :class:`~ingest.budget.OverBudget` when the budget is spent (see :func:`refusal`)."""
    settings = request.app[SETTINGS]
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise Refusal(413, f"body exceeds the limit of {settings.max_body_bytes} bytes")
    tenant = access.of(request).tenant or ""
    return request.app[BUDGET].reserve(length or 0, tenant=tenant)


def refusal(exc: OverBudget | BrokerUnavailable, settings: Settings) -> Refusal:
    """The ``503`` for a spent budget or a broker that did not take the events; the ``429``
    for a tenant past its share of the budget."""
    if isinstance(exc, TenantOverBudget):
        return Refusal(
            429,
            f"{exc}; nothing was accepted, retry later",
            headers=(("Retry-After", str(settings.retry_after)),),
        )
    if isinstance(exc, OverBudget):
        return Refusal.unavailable(
            f"ingest is busy ({exc}); nothing was accepted, retry later",
            retry_after=settings.retry_after,
        )
    return broker_refusal(exc, retry_after=settings.retry_after)


def broker_refusal(exc: BrokerUnavailable, *, retry_after: int) -> Refusal:
    """The ``503`` for events the broker did not confirm: nothing was accepted, or, when the
    message was written and no answer came, that the outcome is unknown and a retry is safe."""
    if exc.unknown:
        return Refusal.unavailable(
            f"outcome unknown: {exc}, so the events may or may not have been stored. Retry: "
            "events are stored once per topic and event_id, and a retry with the same "
            "Idempotency-Key is counted once",
            retry_after=retry_after,
        )
    return Refusal.unavailable(
        f"broker unavailable: {exc}; nothing was accepted, retry later", retry_after=retry_after
    )


def hold_more(budget: Budget, held: Held, extra: int) -> None:
    """Hold ``extra`` bytes more: what the body became in memory (inflated, mapped to events).
    A request that could never fit the budget on its own is a 413, not a 503 to retry."""
    size = held.size + extra
    if size > budget.large_limit:
        raise Refusal(
            413,
            f"the request takes {size} bytes in memory once decoded, more than ingest holds "
            "for one request (PUBSUB_INGEST_MEMORY_BUDGET)",
        )
    held.grow_to(size)


async def read_body(request: web.Request, held: Held, settings: Settings) -> bytes:
    """The body as sent (still compressed: :mod:`ingest.receiver` inflates it), each chunk
    counted against the request's share of the budget and the body limit before it is
    kept."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content.is_eof():
        # Arrived whole with its headers (most small requests): nothing to wait for, so no
        # timer to arm and cancel.
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_read_timeout):
            if request.content_length is not None:
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
        # A body cut short: name the deepest cause, it says what was wrong.
        cause: BaseException = exc
        while (deeper := cause.__cause__ or cause.__context__) is not None:
            cause = deeper
        reason = " ".join(str(cause).split())
        raise Refusal(400, f"the body could not be read: {reason}") from None
    return b"".join(chunks)


def more_lines_than(body: bytes, limit: int) -> bool:
    """Whether ``body`` has more than ``limit`` non-blank lines, counted one line at a time
    (splitting first would hold an entry for every line of a body of empty lines) and no
    further than the limit."""
    count = 0
    for line in io.BytesIO(body):
        if not line.isspace():
            count += 1
            if count > limit:
                return True
    return False
