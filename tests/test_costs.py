"""What each hostile shape of body costs, through each protocol's decode in process: memory
stays within a stated multiple of the inflated bytes, and sixteen times the bytes cost at most
about twenty times the CPU (linear, not quadratic).

Each shape comes at two inflated sizes, about 64 KiB and 1 MiB. Whether a shape is taken or
refused (413, 400) does not matter here; what answering it costs does.
"""

from __future__ import annotations

import gc
import gzip
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ingest import elastic, loki, native, otlp
from ingest.receiver import Receiver
from pubsub.http import Refusal
from pubsub.service import COLLECTOR_THRESHOLDS
from tests import hostile
from tests.hostile import JSON, NDJSON, PROTOBUF
from tests.inprocess import decode

SMALL, LARGE = 64 * 1024, 1024 * 1024
# Peak traced memory at most this many times the inflated bytes, plus a constant for what
# any request costs whatever its size. The multiple is high for two reasons: the worst shapes
# spend a few bytes on each value that costs a Python object (``{}``: 3 bytes, 64 in memory),
# and orjson reserves its output buffer by the number of values, which tracemalloc counts
# though most of it is never touched (an object of 46,600 short keys: 16 MB traced while
# writing 600 KB; the process's RSS grows by the 600 KB).
MEMORY_PER_BYTE = 128
MEMORY_BASE = 4 * 1024 * 1024
# Shapes whose events copy shared context: within this many times what they held.
HELD_MULTIPLE = 3
# Sixteen times the bytes: 16x the CPU if linear, 256x if quadratic. Measured alone, with the
# services' collector thresholds, the worst shape took 23.4x (deep payloads; 17x with the
# collector off): the bound leaves room for a busy machine.
CPU_RATIO = 32


@dataclass(frozen=True)
class Shape:
    """A hostile body at a given inflated size, for one route."""

    name: str
    receiver: Receiver
    kind: str
    build: Callable[[int], bytes]  # target inflated size -> body
    snappy: bool = False  # Loki protobuf: inflated size is that of the raw message
    # Each event carries context the request sends once (an OTLP resource, a Loki stream's
    # labels): what it costs grows with records times context, not with the bytes sent, and
    # is bounded by what the request may hold of the memory budget (counted before mapping).
    copies_context: bool = False


def _fill(unit: bytes, size: int, opening: bytes = b"[", closing: bytes = b"]") -> bytes:
    return opening + unit * max(1, size // len(unit)) + closing


def _events(count: int, payload: Callable[[int], object]) -> bytes:
    return orjson.dumps(
        [{"topic": "t", "event_id": str(n), "source": "s", "payload": payload(n)}
         for n in range(count)]
    )  # fmt: skip


SHAPES = [
    # POST /publish
    Shape(
        "publish-empty-objects",
        native.Publish(),
        JSON,
        lambda size: hostile.publish_empty_objects(size // 3),
    ),
    Shape(
        "publish-wide-payload",
        native.Publish(),
        JSON,
        lambda size: _events(1, lambda _: {f"k{i}": i for i in range(size // 12)}),
    ),
    Shape(
        "publish-deep-payloads",
        native.Publish(),
        JSON,
        lambda size: (
            _fill(
                b'{"topic":"t","event_id":"e","source":"s","payload":'
                + hostile.nested_json(150)
                + b"},",
                size,
            )[:-2]
            + b"]"
        ),
    ),
    Shape(
        "publish-many-small",
        native.Publish(),
        JSON,
        lambda size: _events(min(size // 60, 20_000), lambda n: {}),
    ),
    Shape(
        "publish-ndjson-blank-lines",
        native.Publish(),
        NDJSON,
        lambda size: b"\n" * size + b'{"topic":"t","event_id":"e","source":"s"}',
    ),
    # POST /v1/logs
    Shape(
        "otlp-empty-records",
        otlp.Export(),
        PROTOBUF,
        lambda size: hostile.otlp_empty_records(size // 2),
    ),
    Shape(
        "otlp-heavy-resource",
        otlp.Export(),
        PROTOBUF,
        lambda size: hostile.otlp_heavy_resource(size // 2, 2_000),
        copies_context=True,
    ),
    Shape(
        "otlp-many-attributes",
        otlp.Export(),
        PROTOBUF,
        lambda size: hostile.otlp(
            [
                LogRecord(
                    attributes=[
                        KeyValue(key=f"a{i}", value=AnyValue(int_value=i))
                        for i in range(size // 12)
                    ]
                )
            ]
        ),
    ),
    Shape("otlp-json-deep", otlp.Export(), JSON, lambda size: hostile.otlp_json_nested(size // 40)),
    # POST /loki/api/v1/push
    Shape(
        "loki-json-entries", loki.Push(), JSON, lambda size: hostile.loki_json_entries(size // 12)
    ),
    Shape(
        "loki-heavy-labels",
        loki.Push(),
        JSON,
        lambda size: hostile.loki_heavy_labels(size // 2, 2_000),
        copies_context=True,
    ),
    Shape(
        "loki-many-labels",
        loki.Push(),
        PROTOBUF,
        lambda size: hostile.loki_many_labels(size // 10),
        snappy=True,
    ),
    Shape(
        "loki-deep-metadata", loki.Push(), JSON, lambda size: hostile.loki_deep_metadata(size // 6)
    ),
    # POST /_bulk
    Shape(
        "bulk-many-actions", elastic.Bulk(), NDJSON, lambda size: hostile.bulk_actions(size // 32)
    ),
    Shape(
        "bulk-deep-documents",
        elastic.Bulk(),
        NDJSON,
        lambda size: hostile.bulk_nested(300) * max(1, size // 2_000),
    ),
    Shape(
        "bulk-blank-lines",
        elastic.Bulk(),
        NDJSON,
        lambda size: b"\n" * size + hostile.bulk_actions(1),
    ),
]


def _decode(shape: Shape, body: bytes, held: list[int]) -> str:
    try:
        batch = decode(shape.receiver, body, kind=shape.kind, path="/x", encoding="gzip", held=held)
    except Refusal as exc:
        return f"{exc.status} {exc.message[:60]}"
    return f"taken ({batch.accepted})"


@pytest.fixture(autouse=True)
def _collector_as_in_the_services() -> Iterator[None]:
    # The default thresholds set off a full collection, which walks every live object, ever
    # more often as a large body's objects pile up: the services run with fewer (and measured
    # with the defaults, deep payloads took 55x the CPU for 16x the bytes).
    before = gc.get_threshold()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _cost(shape: Shape, body: bytes) -> tuple[float, int, int, str]:
    """CPU seconds (the best of three, untraced: tracemalloc's own cost in every allocation
    would blur the ratio), peak traced bytes (one traced run), bytes held of the budget, and
    the answer."""
    held: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        answer = _decode(shape, body, held)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    best = float("inf")
    for _ in range(3):
        gc.collect()
        started = time.process_time()
        _decode(shape, body, held)
        best = min(best, time.process_time() - started)
    return best, peak, max(held), answer


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_cost_grows_linearly_with_the_inflated_bytes(shape: Shape) -> None:
    figures = []
    for size in (SMALL, LARGE):
        raw = shape.build(size)
        inflated = len(raw)
        body = gzip.compress(raw, compresslevel=1)
        cpu, peak, held, answer = _cost(shape, body)
        figures.append((inflated, cpu, answer))
        print(
            f"{shape.name}: {inflated} B -> {cpu * 1000:.1f} ms CPU, {peak / inflated:.1f} x "
            f"bytes traced, {peak / held:.2f} x held; {answer}"
        )
        where = f"{shape.name} at {inflated} bytes ({answer})"
        if shape.copies_context:
            assert peak <= HELD_MULTIPLE * held + MEMORY_BASE, f"{where}: {peak}, held {held}"
        else:
            assert peak <= MEMORY_PER_BYTE * inflated + MEMORY_BASE, f"{where}: {peak} traced"
    (small, small_cpu, small_answer), (large, large_cpu, large_answer) = figures
    # Timers tick in milliseconds at best: the small run is given at least one.
    ratio = large_cpu / max(small_cpu, 0.001)
    bound = CPU_RATIO * large / small / 16
    assert ratio <= bound, (
        f"{shape.name}: {large / small:.0f}x the bytes took {ratio:.0f}x the CPU "
        f"({small_answer}: {small_cpu * 1000:.1f} ms; {large_answer}: {large_cpu * 1000:.1f} ms)"
    )
