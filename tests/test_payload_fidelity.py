"""Payloads come back from ``/events`` as they were sent: numbers keep their value and their
sign, however large, small or negative-zero they are, and keys keep their order. (Before, jsonb
turned 1e308 into a 309-digit integer and -0.0 into 0, and sorted the keys.)

Numbers come back in the canonical form the services write (as Python and JavaScript write
them: ``1e308`` as ``1e+308``), with the same value: a double or a 64-bit integer, exactly."""

from __future__ import annotations

import math
import uuid

import aiohttp
import orjson

from stack.supervisor import Supervisor
from tests.support import get_json, post_json, settled, stats

# Doubles at the edges of their range, the sign of zero, and the 64-bit integer limits (beyond
# 2**53, where a double would round them): the text sent, and the text that comes back.
NUMBERS = {
    "max": ("1e308", "1e+308"),
    "min_subnormal": ("5e-324", "5e-324"),
    "negative_zero": ("-0.0", "-0.0"),
    "small": ("1.5e-10", "1.5e-10"),
    "int_max": (str(2**63 - 1), str(2**63 - 1)),
    "int_min": (str(-(2**63)), str(-(2**63))),
}


async def test_numbers_come_back_with_their_value_and_sign(
    stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    topic = f"fidelity-{uuid.uuid4().hex[:8]}"
    fields = ", ".join(f'"{name}": {sent}' for name, (sent, _) in NUMBERS.items())
    listed = ", ".join(sent for sent, _ in NUMBERS.values())
    raw = (
        f'{{"topic": "{topic}", "event_id": "n1", "timestamp": "2025-10-21T10:00:00Z",'
        f' "source": "tests", "payload": {{{fields}, "nested": {{"list": [{listed}]}}}}}}'
    )
    before = await stats(http, stack.read_url)
    status, body, _ = await post_json(http, stack.ingest_url, None, raw=raw.encode())
    assert status == 202, body
    await settled(http, stack.read_url, before["received"] + 1)

    async with http.get(f"{stack.read_url}/events", params={"topic": topic}) as resp:
        assert resp.status == 200
        text = await resp.text()
    # No 309-digit integer, no lost sign, keys in the order sent.
    compact = text.replace(" ", "")
    for name, (_, back) in NUMBERS.items():
        assert f'"{name}":{back}' in compact, (name, text)
    assert f'"list":[{",".join(back for _, back in NUMBERS.values())}]' in compact, text
    assert compact.index('"max"') < compact.index('"min_subnormal"') < compact.index('"int_min"')
    (stored,) = await get_json(http, f"{stack.read_url}/events?topic={topic}")
    sent = orjson.loads(raw)["payload"]
    assert stored["payload"] == sent
    assert list(stored["payload"]) == list(sent)
    assert math.copysign(1.0, stored["payload"]["negative_zero"]) == -1.0
    assert stored["payload"]["max"] == 1e308 and stored["payload"]["min_subnormal"] == 5e-324
    assert stored["payload"]["int_max"] == 2**63 - 1 and isinstance(
        stored["payload"]["int_max"], int
    )
