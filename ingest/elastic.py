"""``POST /_bulk`` and ``POST /{index}/_bulk``: the Elasticsearch bulk API, stored as events.

Fluent Bit's ``es`` output, Vector's ``elasticsearch`` sink and the OpenSearch clients send
documents this way; pointing their host at ingest is all it takes. A request (NDJSON: an action
line, then for ``index`` and ``create`` the document's line, gzip or not) goes through the same
memory budget, validation, broker confirms and metrics as ``POST /publish``; ``200`` with
Elasticsearch's reply (``took``, ``errors``, one item per action, in order) comes only once the
broker confirmed the request's events.

Each ``index`` or ``create`` action becomes one event:

- ``topic``: the action's ``_index``, else the index of the path;
- ``event_id``: the action's ``_id``, else a hash of the document's line, so a retried request
  is deduplicated (and so are identical documents sent without an id);
- ``timestamp``: the document's ``@timestamp`` (RFC 3339, or Unix milliseconds as
  Elasticsearch reads them), else the receive time;
- ``source``: the first of the document's fields ``PUBSUB_ELASTIC_SOURCE_FIELDS`` that holds
  a string, else ``bulk``;
- ``payload``: the document, as sent (nested at most 254 levels deep, as JSON is written).

``update`` and ``delete`` are answered with an error of their own (events are immutable), as is
a document that cannot be an event; the other items are stored. Whether an ``_id`` is already
stored cannot be known at ingest: every stored item answers ``201 created``, and a duplicate is
then dropped by the consumer and counted in ``/stats`` (``duplicate_dropped``).

A busy ingest or an unreachable broker answers ``429`` with ``Retry-After``, the status that
Elasticsearch clients retry (the Python clients' bulk helpers retry no other).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from ingest import intake, jsonsize, metrics
from ingest.intake import more_lines_than
from ingest.receiver import Batch, Intake, Receiver
from ingest.validate import validate_records
from pubsub import http
from pubsub.http import Refusal
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest.elastic")

TYPES = frozenset({
    "application/x-ndjson",
    "application/json",
    "application/vnd.elasticsearch+x-ndjson",
    "application/vnd.elasticsearch+json",
})  # fmt: skip
ACTIONS = ("index", "create", "update", "delete")

# What clients read from ``GET /`` before they send: the version decides the bulk format
# (8: no ``_type``). No ``X-Elastic-Product`` header: this is not Elasticsearch, and the
# clients that require that header (elasticsearch-py 8+, Logstash, Beats) are not supported.
PROBE: dict[str, Any] = {
    "name": "pubsub-ingest",
    "cluster_name": "pubsub",
    "version": {"number": "8.0.0", "build_flavor": "oss"},
    "tagline": "pubsub ingest: the Elasticsearch bulk API (POST /_bulk), stored as events",
}


class Bulk(Receiver):
    """``POST`` (or ``PUT``) ``/_bulk`` and ``/{index}/_bulk`` on :mod:`ingest.receiver`'s
    path."""

    name = "bulk"

    def accept(self, request: web.Request) -> str:
        kind = request.content_type
        if kind not in TYPES:
            raise Refusal(415, f"unsupported content type {kind!r}: send application/x-ndjson")
        charset = request.charset
        if charset is not None and charset.lower().replace("-", "") != "utf8":
            raise Refusal(415, f"unsupported charset {charset!r}: send UTF-8")
        index = request.match_info.get("index")
        if index is not None and (index in (".", "..") or "/" in index or "\\" in index):
            raise Refusal(400, f"invalid index name {index[:60]!r} in the path")
        return kind

    def decode(self, intake: Intake) -> Batch:
        settings = intake.settings
        body = intake.body
        # Each action is one or two lines: more than twice the limit in lines is over it.
        limit = settings.max_batch_events
        if body.count(b"\n") >= 2 * limit and more_lines_than(body, 2 * limit):
            raise Refusal(
                413, f"more than {limit} actions in one request (PUBSUB_MAX_BATCH_EVENTS)"
            )
        intake.hold(jsonsize.parsed_size(body))
        items, events, slots = to_events(
            body,
            index=intake.request.match_info.get("index"),
            settings=settings,
            received_at=intake.received_at,
        )
        pieces, problems = validate_records(events, settings=settings, hold=intake.hold)
        for n, reason in problems.items():
            (result,) = items[slots[n]].values()
            _refuse(result, "mapper_parsing_exception", reason)
        rejected = sum(1 for item in items if "error" in next(iter(item.values())))
        metrics.BULK_ITEMS_REJECTED.inc(rejected)
        return Batch(pieces, len(events) - len(problems), result=items, rejected=rejected)

    def reply(self, batch: Batch, intake: Intake) -> web.Response:
        took = int((datetime.now(UTC) - intake.received_at).total_seconds() * 1000)
        return http.json_response({"took": took, "errors": batch.rejected > 0,
                                   "items": batch.result})  # fmt: skip

    def adapt(self, exc: Refusal) -> Refusal:
        # Elasticsearch's "retry later"; its clients retry 429 where 503 may be fatal.
        return replace(exc, status=429) if exc.status == 503 else exc


def to_events(
    body: bytes, *, index: str | None, settings: Settings, received_at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """The reply's items (one per action, in order), the events of the actions that map to
    one, and the item of each event; :class:`Refusal` 400 for a body that is not a bulk
    request, 413 past the batch limit."""
    # The body's lines one at a time (a copy of each, not of all at once), without their end.
    lines = [line.rstrip(b"\n") for line in io.BytesIO(body) if not line.isspace()]
    sources = [(k, k.split(".")) for k in map(str.strip, settings.elastic_source_fields.split(","))
               if k]  # fmt: skip
    items: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    slots: list[int] = []
    at = 0
    while at < len(lines):
        action, meta = _action(lines[at], at + 1)
        document: bytes | None = None
        if action != "delete":
            if at + 1 >= len(lines):
                raise Refusal(400, f"line {at + 1}: the {action} action has no document line")
            document = lines[at + 1]
        at += 1 if document is None else 2
        if len(items) >= settings.max_batch_events:
            raise Refusal(
                413,
                f"more than {settings.max_batch_events} actions in one request "
                "(PUBSUB_MAX_BATCH_EVENTS)",
            )
        topic = meta.get("_index", index)
        given_id = meta.get("_id")
        if isinstance(given_id, int) and not isinstance(given_id, bool):
            given_id = str(given_id)
        result: dict[str, Any] = {"_index": topic, "_id": given_id}
        problem = _item_problem(action, topic, given_id)
        event = None
        if problem is None and document is not None:
            event_id = given_id if isinstance(given_id, str) and given_id else (
                f"bulk-{hashlib.blake2b(document, digest_size=16).hexdigest()}"
            )  # fmt: skip
            result["_id"] = event_id
            event, problem = _event(document, str(topic), event_id, sources, received_at)
        if problem is None and event is not None:
            slots.append(len(items))
            events.append(event)
            result.update(_CREATED)
        else:
            _refuse(result, *(problem or ("illegal_argument_exception", "not stored")))
        items.append({action: result})
    return items, events, slots


def _refuse(result: dict[str, Any], kind: str, reason: str) -> None:
    """Make an action's result an error of ``kind``."""
    for key in _CREATED:
        result.pop(key, None)
    result.update(status=400, error={"type": kind, "reason": reason})


# What clients read of a stored item (its status, and result for some); Elasticsearch's
# _shards, _seq_no and _primary_term would say nothing true here, and cost bytes per item.
_CREATED: dict[str, Any] = {"_version": 1, "result": "created", "status": 201}


def _action(line: bytes, number: int) -> tuple[str, dict[str, Any]]:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, f"line {number}: the action is not JSON: {exc}") from None
    if not isinstance(parsed, dict) or len(parsed) != 1:
        raise Refusal(400, f"line {number}: an action is one object with one key, e.g. "
                           '{"create": {"_index": "app"}}')  # fmt: skip
    (action, meta), = parsed.items()  # fmt: skip
    if action not in ACTIONS:
        raise Refusal(
            400, f"line {number}: unknown action {action[:40]!r}; expected one of {list(ACTIONS)}"
        )
    if not isinstance(meta, dict):
        raise Refusal(400, f"line {number}: the {action} action's metadata must be an object")
    return action, meta


def _item_problem(action: str, topic: Any, given_id: Any) -> tuple[str, str] | None:
    if action in ("update", "delete"):
        return (
            "illegal_argument_exception",
            f"{action} is not supported: stored events are immutable; use create or index",
        )
    if topic is None:
        return ("action_request_validation_exception", "index is missing: give _index or "
                "send to /{index}/_bulk")  # fmt: skip
    if not isinstance(topic, str):
        return ("illegal_argument_exception", "_index must be a string")
    if given_id is not None and not isinstance(given_id, str):
        return ("illegal_argument_exception", "_id must be a string")
    return None


def _event(
    document: bytes,
    topic: str,
    event_id: str,
    sources: list[tuple[str, list[str]]],
    received_at: datetime,
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    try:
        source = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        return None, ("mapper_parsing_exception", f"the document is not JSON: {exc}")
    if not isinstance(source, dict):
        return None, ("mapper_parsing_exception", "the document must be a JSON object")
    stamp = source.get("@timestamp")
    try:
        timestamp = received_at if stamp is None else timestamp_of(stamp)
    except (ValueError, OverflowError):
        return None, (
            "mapper_parsing_exception",
            f"@timestamp {str(stamp)[:60]!r} is neither an RFC 3339 time nor Unix milliseconds",
        )
    origin = next((s for field in sources if isinstance(s := _field(source, *field), str) and s),
                  "bulk")  # fmt: skip
    event = {
        "topic": topic,
        "event_id": event_id,
        "timestamp": timestamp,
        "source": origin,
        "payload": source,
    }
    return event, None


def timestamp_of(value: Any) -> datetime:
    """``@timestamp`` as Elasticsearch's default date format reads it: an ISO 8601 time (UTC
    when it has no offset), or Unix milliseconds as a number or a string of digits."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int | float):
        return intake.EPOCH + timedelta(milliseconds=value)
    if not isinstance(value, str):
        raise ValueError(value)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _field(document: dict[str, Any], name: str, path: list[str]) -> Any:
    """The field ``name`` as written (``"host.name": ...``), else along ``path`` through
    nested objects (``"host": {"name": ...}``)."""
    if name in document:
        return document[name]
    value: Any = document
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
