"""``python -m publisher tail``: the stream in a terminal, resuming after the read API restarts
with no event missed and none printed twice."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

import aiohttp
import orjson

from tests.fix_stack import StackFactory
from tests.support import event, eventually, post_json


async def test_tail_prints_every_event_once_across_a_restart_of_the_read_api(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(consumers=1)
    stack.start_all()
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    first, second = [f"a{i:02d}" for i in range(20)], [f"b{i:02d}" for i in range(20)]

    async def publish(ids: list[str]) -> None:
        status, body, _ = await post_json(http, stack.ingest_url, [event(topic, i) for i in ids])
        assert status == 202, body

    async def stored() -> int:
        url = f"{stack.read_url}/events"
        async with http.get(url, params={"topic": topic, "limit": "100"}) as resp:
            return len(await resp.json()) if resp.status == 200 else 0

    since = datetime.now(UTC).isoformat()  # whenever the tail connects, it starts here
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", "tail", "--read-url", stack.read_url,
        "--topic", topic, "--since", since, "--json", "-n", "40",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await publish(first)
        await eventually(stored, lambda n: n >= 20, what="the first events stored")
        await asyncio.get_running_loop().run_in_executor(None, stack.restart, "readapi")
        await publish(second)
        out, err = await asyncio.wait_for(tail.communicate(), 60)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    assert tail.returncode == 0, err.decode()
    ids = [orjson.loads(line)["event_id"] for line in out.decode().splitlines()]
    assert len(ids) == len(set(ids)) == 40, ids
    assert set(ids) == {*first, *second}
    assert b"reconnecting" in err  # it noticed the restart, and went on
