"""The one path every ingest route takes: request id, budget, read, inflate, decode, publish,
reply, metrics.

``POST /publish``, ``/v1/logs``, ``/loki/api/v1/push`` and ``/_bulk`` differ only in how a body
becomes events and how the answer is written. Each is a :class:`Receiver` in a module of its
own, contributing exactly that (:meth:`Receiver.accept`, :meth:`Receiver.decode`,
:meth:`Receiver.reply`, and :meth:`Receiver.refuse` where its clients expect errors in another
shape); everything else happens here, once, in the same order for all:

1. the request id, the tenant's rate (``429`` while it is in debt, see :mod:`ingest.limits`),
   and the request's share of the memory budget (its ``Content-Length``);
2. the content type (``415``), then the body as sent, counted as it arrives (``413``, ``408``);
3. its ``Content-Encoding`` undone in a worker thread, bounded (:mod:`ingest.inflate`);
4. the protocol's decode: parse, count, map and validate, every bound checked before the work
   it bounds, what it holds in memory added to the budget;
5. the tenant's rate takes the events and bytes (``429`` if another request put it in debt
   meanwhile), the broker's confirm, then the protocol's answer.

Whatever a protocol's decode raises becomes a ``4xx``: a :class:`~pubsub.http.Refusal` as it
is, any other exception as a ``400`` (logged with the request id, since it is a case the
decoder should name itself). A ``5xx`` is the broker or the budget (``503``, retry), or a bug
of ours in the envelope (``500``, logged with the request id).
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from ingest import inflate, intake, metrics
from ingest.broker import BrokerUnavailable
from ingest.budget import Budget, Held, OverBudget
from pubsub import access, http, message, tenants
from pubsub.http import Refusal
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.receiver")


@dataclass(frozen=True, eq=False)
class Intake:
    """What a protocol's decode is given: the body, inflated, and the request around it.

    ``hold(extra)`` holds ``extra`` bytes more of the memory budget for as long as the request
    lives: what the body becomes in memory (parsed, mapped, encoded). It raises ``413`` if
    the request could never fit, ``503`` if others hold the room now."""

    request: web.Request
    body: bytes
    kind: str  # the content type, as :meth:`Receiver.accept` returned it
    settings: Settings
    received_at: datetime
    request_id: str
    hold: Callable[[int], None]


@dataclass(eq=False)
class Batch:
    """What a protocol's decode made of a body: the encoded events to publish, how many
    events they are, and whatever its answer needs (``result``)."""

    pieces: list[message.Piece]
    accepted: int
    result: Any = None
    rejected: int = 0  # records left out with a reason of their own (partial success)


def content_type(request: web.Request, *kinds: str) -> str:
    """The request's content type if it is one of ``kinds``; :class:`Refusal` 415 naming them
    otherwise."""
    kind = request.content_type
    if kind not in kinds:
        raise Refusal(415, f"unsupported content type {kind!r}: send {' or '.join(kinds)}")
    return kind


class Tally:
    """A request's ``hold``, remembering how much it was told: for a protocol that holds
    part of a later cost ahead of the work (the shared context every event will carry) and
    then holds only the rest."""

    def __init__(self, hold: Callable[[int], None]) -> None:
        self.hold = hold
        self.total = 0

    def __call__(self, size: int) -> None:
        self.hold(size)
        self.total += size


# What decoding a body takes is reserved with the body, this much per byte (a JSON batch of
# log-like events: 2.7 measured, 4 reckoned by ingest.jsonsize); the decoder's own reckoning,
# when it comes, uses this reservation first and holds only what it needs beyond.
DECODE_PER_BYTE = 4


class _Share:
    """A request's ``hold``: what was reserved ahead (:meth:`reserve`) is used first."""

    def __init__(self, budget: Budget, held: Held) -> None:
        self.budget, self.held, self.ahead = budget, held, 0

    def reserve(self, size: int) -> None:
        # At most what one request may hold: the decoder's reckoning decides on a 413.
        size = min(size, self.budget.large_limit - self.held.size)
        if size > 0 and self.held.size + size > self.budget.small:  # small ones take as they go
            intake.hold_more(self.budget, self.held, size)
            self.ahead += size

    def __call__(self, extra: int) -> None:
        covered = min(self.ahead, extra)
        self.ahead -= covered
        if extra > covered:
            intake.hold_more(self.budget, self.held, extra - covered)


class Receiver(abc.ABC):
    """One protocol's part of the path (see the module's docstring)."""

    name: ClassVar[str]  # for logs

    @abc.abstractmethod
    def accept(self, request: web.Request) -> str:
        """The request's content type if this protocol reads it; :class:`Refusal` 415
        otherwise. Headers the protocol reads are checked here too, before the body."""

    @abc.abstractmethod
    def decode(self, intake: Intake) -> Batch:
        """The body as events: parsed, counted, mapped, validated and encoded."""

    @abc.abstractmethod
    def reply(self, batch: Batch, intake: Intake) -> web.Response:
        """The answer once the broker confirmed ``batch``."""

    def adapt(self, exc: Refusal) -> Refusal:
        """The refusal as this protocol's clients expect it (the status its clients retry,
        say); counted and logged as adapted."""
        return exc

    def refuse(self, exc: Refusal, request_id: str) -> web.StreamResponse:
        """The answer to a refused request; JSON by default, through the error middleware."""
        raise exc.with_headers(("X-Request-Id", request_id))

    def handler(self) -> http.Handler:
        """The aiohttp handler of this protocol's routes."""
        return functools.partial(receive, receiver=self)


async def receive(request: web.Request, *, receiver: Receiver) -> web.StreamResponse:
    """The path of the module's docstring, for one request."""
    request_id = intake.request_id(request)
    try:
        response, batch = await _receive(request, receiver, request_id)
    except (Refusal, OverBudget, BrokerUnavailable) as exc:
        # A copy, without the traceback: kept in this frame, the refusal would make a cycle
        # with it (its traceback holds the frame), and with its context (a decoder's frames,
        # an inflated body) it would then wait for the garbage collector, not for refcounts:
        # under a loop of bombs, gigabytes.
        if not isinstance(exc, Refusal):
            exc = intake.refusal(exc, request.app[intake.SETTINGS])
        refusal = replace(receiver.adapt(exc))
        del exc
        intake.note_refusal(log, refusal, request_id)
        tenant = access.of(request).tenant or tenants.DEFAULT
        metrics.TENANT_REFUSED.labels(tenant, str(refusal.status)).inc()
        return receiver.refuse(refusal, request_id)
    metrics.answered(response.status)
    metrics.EVENTS_ACCEPTED.inc(batch.accepted)
    metrics.TENANT_EVENTS.labels(access.of(request).tenant or tenants.DEFAULT).inc(batch.accepted)
    response.headers["X-Request-Id"] = request_id
    return response


async def _receive(
    request: web.Request, receiver: Receiver, request_id: str
) -> tuple[web.Response, Batch]:
    app = request.app
    settings = app[intake.SETTINGS]
    received_at = datetime.now(UTC)
    kind = receiver.accept(request)
    who = access.of(request)
    rates = app[intake.RATES]
    rates.admit(who)  # a tenant over its rate costs no read of its body
    try:
        encoding = inflate.encoding_of(request.headers.get("Content-Encoding", ""))
    except ValueError as exc:
        raise Refusal(415, str(exc)) from None
    budget = app[intake.BUDGET]
    with intake.share(request) as held:
        share = _Share(budget, held)
        length = request.content_length
        if encoding is None and length is not None:
            # A large body's decode is reserved with it, before a byte is read: were it held
            # only once the body arrived, many large requests could each hold their body and
            # none find room for its parse (and all be refused, again and again).
            share.reserve(length * DECODE_PER_BYTE)
        body = await intake.read_body(request, held, settings)
        if encoding is not None:
            body = await _inflated(body, encoding, held, request, settings)
            share.reserve(len(body) * DECODE_PER_BYTE)
        given = Intake(
            request=request,
            body=body,
            kind=kind,
            settings=settings,
            received_at=received_at,
            request_id=request_id,
            hold=share,
        )
        batch = decode(receiver, given)
        if batch.pieces:
            rates.take(who, events=batch.accepted, size=len(body))
            metrics.TENANT_BYTES.labels(who.tenant or tenants.DEFAULT).inc(len(body))
            await app[intake.BROKER].publish(
                batch.pieces,
                received_at=received_at,
                request_id=request_id,
                tenant=who.tenant or tenants.DEFAULT,
            )
        return receiver.reply(batch, given), batch


async def _inflated(
    body: bytes, encoding: str, held: Held, request: web.Request, settings: Settings
) -> bytes:
    """The body inflated, each step of output held before the next is made; once the steps
    are joined, what is held is the compressed body (which the request keeps) and the
    inflated one."""
    budget = request.app[intake.BUDGET]
    held.count_as_large()
    before = held.size
    try:
        inflated = await inflate.inflate(
            body,
            encoding,
            limit=settings.max_body_bytes,
            gate=request.app[intake.INFLATING],
            hold=lambda extra: intake.hold_more(budget, held, extra),
        )
    except inflate.TooLarge as exc:
        raise Refusal(413, f"{exc} (PUBSUB_MAX_BODY_BYTES)") from None
    except inflate.Unreadable as exc:
        raise Refusal(400, f"the body could not be read: {exc}") from None
    held.shrink_to(before + len(inflated))
    return inflated


def decode(receiver: Receiver, given: Intake) -> Batch:
    """``receiver``'s decode of ``given``, whatever it raises a :class:`Refusal`: its own, or
    a ``400`` for any other exception (logged)."""
    try:
        return receiver.decode(given)
    except (Refusal, OverBudget):
        raise
    except Exception as exc:  # a body must never be a 5xx
        # Bodies are the client's: whatever they make a decoder raise is a 4xx. Logged with
        # the request id, as the decoder should have named the case itself.
        log.warning(
            "%s: a body the decoder did not name: %s",
            receiver.name,
            type(exc).__name__,
            exc_info=True,
            extra={"request_id": given.request_id},
        )
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise Refusal(400, f"the body could not be decoded: {reason}") from None
