"""Arbitrary bytes in every header and query parameter the services read: never a 5xx.

Requests are written on a raw socket, so that a header can carry bytes no HTTP client would
send (not UTF-8, not Latin-1). The services run with both tokens configured, so that the
token check reads the fuzzed ``Authorization`` too; the other headers are sent with the right
token, to reach the code behind it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import fuzzing

TOKENS = {"publish_token": "pub-token", "read_token": "read-token"}
EVENT = b'{"topic":"fuzz","event_id":"e1","source":"s","payload":{}}'
# A body with one record for each protocol route, in its JSON encoding.
BODIES = {
    "/v1/logs": b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"x"}}]}]}]}',
    "/loki/api/v1/push": b'{"streams":[{"stream":{"app":"fuzz"},"values":[["1","x"]]}]}',
    "/_bulk": b'{"create":{"_index":"fuzz","_id":"e1"}}\n{"m":"x"}\n',
    "/{index}/_bulk": b'{"create":{"_id":"e1"}}\n{"m":"x"}\n',
}

# (service, method, path, where, name): everything a handler or middleware reads.
TARGETS = [
    ("ingest", "POST", "/publish", "header", "Authorization"),
    ("ingest", "POST", "/publish", "header", "Content-Type"),
    ("ingest", "POST", "/publish", "header", "Content-Encoding"),
    ("ingest", "POST", "/publish", "header", "X-Request-Id"),
    ("ingest", "POST", "/publish", "header", "Idempotency-Key"),
    ("readapi", "GET", "/events", "header", "Authorization"),
    ("readapi", "GET", "/stats", "header", "Authorization"),
    ("readapi", "GET", "/events/stream", "header", "Authorization"),
    ("readapi", "GET", "/events/stream", "header", "Last-Event-ID"),
    ("readapi", "GET", "/", "header", "Accept"),
    *[("readapi", "GET", "/events", "query", name)
      for name in ("topic", "source", "event_id", "limit", "cursor", "since", "until")],
    *[("readapi", "GET", "/events/stream", "query", name)
      for name in ("topic", "source", "event_id", "since", "last_event_id")],
    ("ingest", "POST", "/v1/logs", "header", "X-Pubsub-Topic"),
    ("ingest", "POST", "/v1/logs", "header", "Content-Type"),
    ("ingest", "POST", "/loki/api/v1/push", "header", "Content-Type"),
    ("ingest", "POST", "/loki/api/v1/push", "header", "Content-Encoding"),
    ("ingest", "POST", "/_bulk", "header", "Content-Type"),
    ("ingest", "POST", "/{index}/_bulk", "path", "index"),
]  # fmt: skip


@pytest.fixture
def guarded(own_stack: StackFactory) -> Iterator[Supervisor]:
    stack = own_stack(consumers=1, **TOKENS)
    stack.start_all()
    yield stack


def status_of(stack: Supervisor, target: tuple[str, str, str, str, str], value: bytes) -> int:
    service, method, path, where, name = target
    token = TOKENS["publish_token" if service == "ingest" else "read_token"]
    headers = {b"Host": b"127.0.0.1", b"Authorization": b"Bearer " + token.encode()}
    query = b""
    target_path = path.encode()
    if where == "header":
        # CR, LF and NUL end or break the header line itself: the parser's business.
        headers[name.encode()] = value.translate(None, b"\r\n\x00")
    elif where == "path":
        segment = quote_from_bytes(value).encode()
        target_path = target_path.replace(b"{" + name.encode() + b"}", segment)
    else:
        query = b"?" + name.encode() + b"=" + quote_from_bytes(value).encode()
    body = BODIES.get(path, EVENT) if method == "POST" else b""
    if method == "POST":
        headers.setdefault(b"Content-Type", b"application/json")
        headers[b"Content-Length"] = str(len(body)).encode()
    lines = [method.encode() + b" " + target_path + query + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in headers.items()]
    request = b"\r\n".join([*lines, b"Connection: close", b"", b""]) + body
    port = int(stack.url(service).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(64)  # the status line; a stream that was accepted goes on
    return int(answer.split(b" ", 2)[1])


FUZZ = fuzzing(300)


KNOWN = [
    (TARGETS[0], b"Bearer \xff"),
    (TARGETS[5], b"Bearer \xff\xfe"),
    (TARGETS[8], b"WyLCsiIsICJ0IiwgImUiXQ"),  # ["²", "t", "e"]: a Unicode digit
    (TARGETS[8], b"WyIxODQ0Njc0NDA3MzcwOTU1MTYxNiIsICJ0IiwgImUiXQ"),  # txid 2**64
]


def test_no_header_or_parameter_value_makes_a_server_error(guarded: Supervisor) -> None:
    # The server errors found by reading the code, then whatever hypothesis finds.
    for target, value in KNOWN:
        assert status_of(guarded, target, value) in (400, 401), (target, value)

    @FUZZ
    @given(target=st.sampled_from(TARGETS), value=st.binary(max_size=80))
    def fuzz(target: tuple[str, str, str, str, str], value: bytes) -> None:
        status = status_of(guarded, target, value)
        assert status < 500, (target, value, status)

    fuzz()
