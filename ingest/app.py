"""The ingest HTTP service: ``POST /publish`` -> validate -> broker (confirmed) -> ``202``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web

from ingest import elastic, intake, loki, metrics, otlp
from ingest.broker import BrokerClient
from ingest.budget import Budget
from ingest.intake import BROKER, BUDGET, SETTINGS
from ingest.validate import validate
from pubsub import api, health, http, openapi, routes
from pubsub.http import Refusal
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.app")

TITLE = "pubsub ingest"

_JSON_TYPES = frozenset({"application/json"})


async def publish(request: web.Request) -> web.Response:
    request_id = intake.request_id(request)
    try:
        accepted = await _accept(request, request_id)
    except Refusal as exc:
        intake.note_refusal(log, exc, request_id)
        raise exc.with_headers(("X-Request-Id", request_id)) from None
    metrics.REQUESTS_202.inc()
    metrics.EVENTS_ACCEPTED.inc(accepted)
    return http.json_response(
        api.Accepted(accepted=accepted, request_id=request_id),
        status=202,
        headers={"X-Request-Id": request_id},
    )


async def _accept(request: web.Request, request_id: str) -> int:
    """Validate the body and publish its events; the number accepted, or :class:`Refusal`."""
    settings = request.app[SETTINGS]
    received_at = datetime.now(UTC)
    ndjson = _is_ndjson(request)
    with intake.holding(request) as held:
        key = _idempotency_key(request)
        body = await intake.read_body(request, held, settings)
        pieces = validate(body, received_at=received_at, settings=settings, key=key, ndjson=ndjson)
        await request.app[BROKER].publish(pieces, received_at=received_at, request_id=request_id)
    return sum(piece.count for piece in pieces)


_FAST_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})


def _idempotency_key(request: web.Request) -> str:
    # A retry with the same key is counted once even if the first attempt reached the broker
    # and only its answer was lost. A client promises the same body for the same key.
    key = request.headers.get("Idempotency-Key", "")
    if key and (len(key) > 200 or not key.isprintable()):
        raise Refusal(400, "Idempotency-Key must be 1 to 200 printable characters")
    return key


_NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-lines"})


def _is_ndjson(request: web.Request) -> bool:
    """Whether the body is newline-delimited JSON (log shippers) rather than one document."""
    if request.headers.get("Content-Type", "").lower() in _FAST_TYPES:
        return False  # the common case, without aiohttp's full header parsing
    kind = request.content_type
    if kind not in _JSON_TYPES and kind not in _NDJSON_TYPES:
        raise Refusal(
            415,
            f"unsupported content type {kind!r}: send application/json or application/x-ndjson",
        )
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise Refusal(415, f"unsupported charset {charset!r}: send UTF-8")
    return kind in _NDJSON_TYPES


def make_app(settings: Settings, broker: BrokerClient) -> web.Application:
    # aiohttp itself refuses chunked bodies past client_max_size with 413.
    app = http.new_app(
        max_body_bytes=settings.max_body_bytes,
        guarded=routes.guarded_paths(api.INGEST, routes.tokens(settings)),
    )
    app[SETTINGS] = settings
    app[BROKER] = broker
    app[BUDGET] = Budget(settings.ingest_memory_budget, largest=settings.max_body_bytes)

    async def ready() -> Mapping[str, bool]:
        return {"broker": broker.connected}

    # GET / also answers the probe of Elasticsearch clients (ingest.elastic.PROBE).
    http.add_index(app, TITLE, health.endpoints(api.INGEST), extra=elastic.PROBE)
    handlers = {
        api.PUBLISH: publish,
        api.OTLP_LOGS: otlp.export_logs,
        api.LOKI_PUSH: loki.push,
        api.BULK: elastic.bulk,
        api.INDEX_BULK: elastic.bulk,
    }
    routes.mount(app, api.INGEST, handlers, settings)
    health.add_health(app, ready, settings)
    openapi.add_docs(app, openapi.document(TITLE, [*api.INGEST, *api.HEALTH], settings))
    return app
