"""A consumer's memory with a backlog of the largest messages ingest makes."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import psutil

from stack.supervisor import Supervisor
from tests.fix_stack import StackFactory
from tests.support import delete_topology, event, post_json, queue_depth, settled, stats

CAP_MIB = 256  # the consumer's cap in the bench (bench/workloads.py) and well under k8s's limit


async def test_a_backlog_of_maximal_messages_fits_the_consumers_memory(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = own_stack(consumers=1, queue=f"pubsub.memory-{uuid.uuid4().hex[:8]}.events")
    try:
        await _fill_and_drain(stack, http)
    finally:
        stack.stop_all()
        await delete_topology(stack.settings)


async def _fill_and_drain(stack: Supervisor, http: aiohttp.ClientSession) -> None:
    stack.start_all(["ingest", "readapi"])
    topic = f"maximal-{uuid.uuid4().hex[:8]}"
    text = "m" * 1_024_000  # four such events make one message of just under 4 MiB
    before = (await stats(http, stack.read_url))["received"]
    for n in range(40):
        batch = [event(topic, f"e{n}-{i}", payload={"text": text}) for i in range(4)]
        status, body, _ = await post_json(http, stack.ingest_url, batch)
        assert status == 202, body
    assert await queue_depth(stack.settings, stack.settings.queue) == 40  # 160 MiB waiting

    stack.start("consumer-1")
    proc = psutil.Process(stack.procs["consumer-1"].pid)
    peak = 0
    storing = asyncio.create_task(settled(http, stack.read_url, before + 160, timeout=120))
    while not storing.done():
        peak = max(peak, proc.memory_info().rss)
        await asyncio.sleep(0.02)  # a sampling period, not a synchronisation
    await storing
    print(f"the consumer peaked at {peak >> 20} MiB")
    assert peak < CAP_MIB * 1024 * 1024, f"the consumer peaked at {peak >> 20} MiB"
