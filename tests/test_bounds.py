"""Every bound is checked before the work it bounds: bodies that are small on the wire and
huge in memory or CPU, and bodies that used to be answered 5xx or accepted in part, through
ingest's real application in process (the broker stood in for: nothing here needs one)."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import orjson
import pytest

from tests import hostile
from tests.hostile import JSON, NDJSON, PROTOBUF, Body
from tests.inprocess import Client, RecordingBroker, ingest, serve


async def post(client: Client, body: Body, **headers: str) -> tuple[int, str]:
    resp = await client.post(body.path, data=body.data, headers=body.headers(**headers))
    return resp.status, await resp.text()


@pytest.mark.parametrize(
    ("count", "says"),
    [
        # What parsing would take is past what one request may hold: refused unparsed.
        (1_000_000, "bytes in memory once decoded"),
        # Parsed (within the budget), counted, refused before a single item is validated.
        (100_000, "100000 events exceeds the limit of 20000"),
    ],
)
async def test_many_empty_objects_are_413_before_any_is_validated(count: int, says: str) -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        status, text = await post(
            client,
            Body("/publish", JSON, gzip.compress(hostile.publish_empty_objects(count))),
            **{"Content-Encoding": "gzip"},
        )
    assert status == 413, text
    assert says in text
    assert not broker.published


async def test_a_problem_in_every_item_lists_a_few_and_counts_them_all() -> None:
    async with serve(ingest(RecordingBroker(), max_errors_reported=5)) as client:
        resp = await client.post(
            "/publish", data=hostile.publish_empty_objects(20_000), headers={"Content-Type": JSON}
        )
        reply = await resp.json()
    assert resp.status == 422
    assert reply["problem_count"] == 60_000  # topic, event_id and source of each
    assert len(reply["problems"]) == 5
    assert reply["problems"][0] == {"index": 0, "field": "topic", "problem": "Field required"}
    assert [p["index"] for p in reply["problems"]] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "body",
    [
        Body("/v1/logs", PROTOBUF, hostile.otlp_heavy_resource(100_000, 2_000)),
        Body("/loki/api/v1/push", JSON, hostile.loki_heavy_labels(100_000, 2_000)),
    ],
    ids=["otlp-resource", "loki-labels"],
)
async def test_shared_context_is_counted_per_record_before_it_is_mapped(body: Body) -> None:
    # 200 KB on the wire; 200 MB once every record carries its resource or labels.
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        status, text = await post(client, body)
    assert status == 413, text
    assert "in memory" in text
    assert not broker.published


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (Body("/v1/logs", PROTOBUF, hostile.otlp_empty_records(8_000_000)), "log records"),
        (Body("/loki/api/v1/push", JSON, hostile.loki_json_entries(50_000)), "entries"),
        (Body("/_bulk", NDJSON, hostile.bulk_actions(300_000)), "actions"),
        (Body("/publish", NDJSON, b"{}\n" * 1_000_000), "events"),
    ],
    ids=["otlp-8M-empty-records", "loki-50k-entries", "bulk-300k-actions", "ndjson-1M-lines"],
)
async def test_records_are_counted_before_they_are_parsed(body: Body, says: str) -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        gzipped = Body(body.path, body.kind, gzip.compress(body.data))
        status, text = await post(client, gzipped, **{"Content-Encoding": "gzip"})
    assert status == 413, text
    assert says in text and "20000" in text
    assert not broker.published


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (Body("/v1/logs", JSON, hostile.otlp_json_nested(40)), "nest deeper than 32"),
        (Body("/v1/logs", JSON, hostile.otlp_json_nested(60, "arrayValue")), "deeper than 32"),
        (Body("/v1/logs", JSON, hostile.otlp_json_nested(250)), "deeper than 32"),
        (
            Body("/loki/api/v1/push", JSON, hostile.loki_deep_metadata(1000)),
            "metadata values must be strings",
        ),
        (
            Body(
                "/loki/api/v1/push",
                JSON,
                hostile.loki_json(
                    [{"stream": {"app": "m"}, "values": [["1", "l", {"m": {"a": 1}}]]}]
                ),
            ),
            "metadata values must be strings",
        ),
        (
            Body(
                "/loki/api/v1/push",
                JSON,
                hostile.loki_json(
                    [{"stream": {"app": "m"}, "values": [["9999999999999999999", "l"]]}]
                ),
            ),
            "out of range",
        ),
        (
            Body(
                "/loki/api/v1/push",
                PROTOBUF,
                hostile.loki_protobuf('{app="t"}', [(-(2**62), 0, "l")]),
            ),
            "out of range",
        ),
        (
            Body(
                "/loki/api/v1/push", PROTOBUF, hostile.loki_protobuf('{app="t"}', [(2**62, 0, "l")])
            ),
            "out of range",
        ),
    ],
    ids=[
        "otlp-kvlists",
        "otlp-arrays",
        "otlp-250",
        "loki-deep-meta",
        "loki-object-meta",
        "loki-json-time",
        "loki-negative-time",
        "loki-huge-time",
    ],
)
async def test_bodies_that_were_500s_are_400s_naming_the_problem(body: Body, says: str) -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        status, text = await post(client, body)
    assert status == 400, text
    assert says in text
    assert not broker.published


async def test_a_bulk_document_nested_past_what_json_is_written_to_is_its_own_error() -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        body = hostile.bulk_nested(300) + hostile.bulk_document({"fine": 1})
        resp = await client.post("/_bulk", data=body, headers={"Content-Type": NDJSON})
        reply = await resp.json()
    assert resp.status == 200, reply
    deep, fine = (next(iter(item.values())) for item in reply["items"])
    assert deep["status"] == 400 and "JSON" in deep["error"]["reason"]
    assert fine["status"] == 201
    assert broker.events == 1


async def test_a_loki_time_before_1970_is_stored() -> None:
    broker = RecordingBroker()
    body = Body(
        "/loki/api/v1/push",
        PROTOBUF,
        hostile.loki_protobuf('{app="t"}', [(-86_400, 5, "a day before")]),
    )
    async with serve(ingest(broker)) as client:
        status, text = await post(client, body)
    assert status == 204, text
    assert broker.events == 1


@pytest.mark.parametrize(
    "body",
    [
        Body("/_bulk", NDJSON, hostile.bulk_actions(10)),
        Body(
            "/publish",
            NDJSON,
            b"".join(
                orjson.dumps({"topic": "cut", "event_id": str(n), "source": "s"}) + b"\n"
                for n in range(10)
            ),
        ),
        Body("/loki/api/v1/push", JSON, hostile.loki_json_entries(10)),
        Body("/v1/logs", JSON, orjson.dumps({"resourceLogs": []}) + b" " * 100),
    ],
    ids=["bulk", "publish-ndjson", "loki-json", "otlp-json"],
)
async def test_a_gzip_stream_cut_short_is_400_and_nothing_is_stored(body: Body) -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        cut = Body(body.path, body.kind, hostile.cut_at_flush(body.data))
        status, text = await post(client, cut, **{"Content-Encoding": "gzip"})
        assert status == 400, text
        assert "cut short" in text
        # The same body whole is taken.
        whole = Body(body.path, body.kind, gzip.compress(body.data))
        status, text = await post(client, whole, **{"Content-Encoding": "gzip"})
        assert status < 300, text
    assert broker.events == (0 if body.path == "/v1/logs" else 10)


@pytest.mark.parametrize(
    ("encoding", "status", "says"),
    [
        ("br", 415, "unsupported Content-Encoding"),
        ("gzip, gzip", 415, "unsupported"),
        ("deflate", 400, "not valid deflate"),
    ],
)
async def test_encodings_that_cannot_be_undone_are_refused(
    encoding: str, status: int, says: str
) -> None:
    async with serve(ingest(RecordingBroker())) as client:
        body = Body("/publish", JSON, b"\x00not compressed")
        got, text = await post(client, body, **{"Content-Encoding": encoding})
    assert got == status and says in text, text


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ('{app="x", app="y"}', "given twice"),
        ('{app="\\q"}', "cannot read"),
        ('{app="x" env="y"}', "cannot read"),
    ],
)
async def test_loki_labels_are_read_strictly(labels: str, says: str) -> None:
    body = Body(
        "/loki/api/v1/push", PROTOBUF, hostile.loki_protobuf(labels, [(1_760_000_000, 0, "l")])
    )
    async with serve(ingest(RecordingBroker())) as client:
        status, text = await post(client, body)
    assert status == 400 and says in text, text


@pytest.mark.parametrize(
    ("stream", "says"),
    [
        ({"app-name": "x"}, "not a label name"),
        ({"1app": "x"}, "not a label name"),
        ({"app": 1}, "must be strings"),
    ],
)
async def test_loki_json_labels_follow_the_same_syntax_as_protobuf(
    stream: dict[str, Any], says: str
) -> None:
    body = Body(
        "/loki/api/v1/push", JSON, hostile.loki_json([{"stream": stream, "values": [["1", "l"]]}])
    )
    async with serve(ingest(RecordingBroker())) as client:
        status, text = await post(client, body)
    assert status == 400 and says in text, text


async def test_a_loki_line_with_nul_is_a_documented_422() -> None:
    body = Body(
        "/loki/api/v1/push",
        JSON,
        hostile.loki_json([{"stream": {"app": "n"}, "values": [["1", "a\u0000b"]]}]),
    )
    async with serve(ingest(RecordingBroker())) as client:
        status, text = await post(client, body)
        document = await (await client.get("/openapi.json")).json()
    assert status == 422 and "NUL" in text, text
    assert "422" in document["paths"]["/loki/api/v1/push"]["post"]["responses"]


async def test_put_bulk_is_taken_as_elasticsearch_takes_it() -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        for path in ("/_bulk", "/logs/_bulk"):
            resp = await client.put(
                path, data=hostile.bulk_actions(2), headers={"Content-Type": NDJSON}
            )
            assert resp.status == 200, await resp.text()
    assert broker.events == 4


@pytest.mark.parametrize("path", ["/../_bulk", "/./_bulk", "/%2E%2E/_bulk"])
async def test_dot_segments_are_not_an_index(path: str) -> None:
    broker = RecordingBroker()
    async with serve(ingest(broker)) as client:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        document = b'{"index":{}}\n{"a":1}\n'
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            f"Content-Length: {len(document)}\r\nConnection: close\r\n\r\n".encode()
            + document
        )
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    # Either the path is normalised away (no index: the action's error) or refused whole.
    assert status in (200, 400, 404), answer[:300]
    assert not broker.published, answer[:300]
