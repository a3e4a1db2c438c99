"""``POST /publish``: events in this system's own schema, one, a JSON array, or NDJSON.

The protocol's part of :mod:`ingest.receiver`'s path: the content type and the
``Idempotency-Key`` are checked before the body is read, :func:`ingest.validate.validate`
turns the body into encoded events (all or nothing), and ``202`` names how many were accepted.
"""

from __future__ import annotations

from aiohttp import web

from ingest.receiver import Batch, Intake, Receiver
from ingest.validate import validate
from pubsub import api, http
from pubsub.http import Refusal

_JSON_TYPES = frozenset({"application/json"})
_FAST_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})
_NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-lines"})
NDJSON = "application/x-ndjson"


class Publish(Receiver):
    name = "publish"

    def accept(self, request: web.Request) -> str:
        _idempotency_key(request)
        if request.headers.get("Content-Type", "").lower() in _FAST_TYPES:
            return "application/json"  # the common case, without aiohttp's header parsing
        kind = request.content_type
        if kind not in _JSON_TYPES and kind not in _NDJSON_TYPES:
            raise Refusal(
                415,
                f"unsupported content type {kind!r}: send application/json or application/x-ndjson",
            )
        charset = request.charset
        if charset is not None and charset.lower().replace("-", "") != "utf8":
            raise Refusal(415, f"unsupported charset {charset!r}: send UTF-8")
        return NDJSON if kind in _NDJSON_TYPES else "application/json"

    def decode(self, intake: Intake) -> Batch:
        pieces = validate(
            intake.body,
            received_at=intake.received_at,
            settings=intake.settings,
            key=_idempotency_key(intake.request),
            ndjson=intake.kind == NDJSON,
            hold=intake.hold,
        )
        return Batch(pieces, sum(piece.count for piece in pieces))

    def reply(self, batch: Batch, intake: Intake) -> web.Response:
        return http.json_response(
            api.Accepted(accepted=batch.accepted, request_id=intake.request_id), status=202
        )


def _idempotency_key(request: web.Request) -> str:
    # A retry with the same key is counted once even if the first attempt reached the broker
    # and only its answer was lost. A client promises the same body for the same key.
    key = request.headers.get("Idempotency-Key", "")
    if key and (len(key) > 200 or not key.isprintable()):
        raise Refusal(400, "Idempotency-Key must be 1 to 200 printable characters")
    return key
