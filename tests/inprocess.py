"""Ingest in process, in front of a broker client that records what it is given: for tests
of the request path that need no RabbitMQ (``TestServer`` serves the real application), and a
protocol's decode called directly (:func:`decode`) for the fuzz and cost tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from ingest import inflate, intake
from ingest.app import make_app as make_ingest
from ingest.broker import BrokerClient, BrokerUnavailable
from ingest.budget import Budget, Held
from ingest.receiver import Batch, Intake, Receiver
from pubsub import message, tenants
from pubsub.http import Refusal
from pubsub.settings import Settings

Client = TestClient[web.Request, web.Application]


class RecordingBroker:
    """Stands in for :class:`BrokerClient`: keeps what it is asked to publish; confirms at
    once, or when ``confirm`` is set if one is given."""

    def __init__(
        self, *, refuse: str = "", connected: bool = True, confirm: asyncio.Event | None = None
    ) -> None:
        self.refuse = refuse
        self.connected = connected
        self.confirm = confirm
        self.published: list[list[message.Piece]] = []
        self.tenants: list[str] = []  # of each publish
        self.arrived = asyncio.Event()

    async def publish(
        self,
        pieces: Sequence[message.Piece],
        *,
        received_at: datetime,
        request_id: str,
        tenant: str = tenants.DEFAULT,
    ) -> None:
        if self.refuse:
            raise BrokerUnavailable(self.refuse)
        self.published.append(list(pieces))
        self.tenants.append(tenant)
        self.arrived.set()
        if self.confirm is not None:
            await self.confirm.wait()

    @property
    def events(self) -> int:
        return sum(piece.count for pieces in self.published for piece in pieces)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app)) as client:
        yield client


def ingest(broker: RecordingBroker, **settings: Any) -> web.Application:
    return make_ingest(Settings(**settings), cast(BrokerClient, broker))


def decode(
    receiver: Receiver,
    body: bytes,
    *,
    kind: str,
    path: str = "/",
    headers: dict[str, str] | None = None,
    match_info: dict[str, str] | None = None,
    settings: Settings | None = None,
    encoding: str | None = None,
    held: list[int] | None = None,
) -> Batch:
    """``receiver``'s part of the path for ``body``, without HTTP: inflated as the envelope
    inflates it (``encoding``), decoded with the memory budget of a fresh ingest process.
    Raises :class:`~pubsub.http.Refusal` as the route would answer it. ``held`` gets what
    the request held of the budget at the end."""
    settings = settings or Settings()
    budget = Budget(settings.ingest_memory_budget, largest=settings.max_body_bytes)
    request = make_mocked_request(
        "POST", path, headers={"Content-Type": kind, **(headers or {})}, match_info=match_info or {}
    )
    with budget.reserve(len(body)) as share:
        try:
            return _decode(
                receiver,
                body,
                kind=kind,
                request=request,
                settings=settings,
                budget=budget,
                held=share,
                encoding=encoding,
            )
        finally:
            if held is not None:
                held.append(share.size)


def _decode(
    receiver: Receiver,
    body: bytes,
    *,
    kind: str,
    request: web.Request,
    settings: Settings,
    budget: Budget,
    held: Held,
    encoding: str | None,
) -> Batch:
    if encoding is not None:
        try:
            body = inflate.inflate_sync(body, encoding, limit=settings.max_body_bytes)
        except inflate.TooLarge as exc:
            raise Refusal(413, str(exc)) from None
        except inflate.Unreadable as exc:
            raise Refusal(400, str(exc)) from None
        intake.hold_more(budget, held, len(body))
    given = Intake(
        request=request,
        body=body,
        kind=kind,
        settings=settings,
        received_at=datetime.now(UTC),
        request_id="in-process",
        hold=lambda extra: intake.hold_more(budget, held, extra),
    )
    return receiver.decode(given)
