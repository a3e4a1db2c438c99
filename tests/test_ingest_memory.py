"""Ingest's memory budget counts what bodies inflate to, and keeps room for small requests:
a burst of gzip bodies that each inflate to a maximal batch stays under the memory cap, is
accepted in the end, and does not turn other clients away."""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid

import aiohttp
import orjson
import pytest

from bench.workloads import RssSampler
from ingest.budget import Budget, OverBudget
from tests.fix_stack import StackFactory
from tests.support import event, post_json, settled, stats

RSS_CAP_MIB = 256  # what the bench holds ingest to


async def test_large_requests_leave_room_for_small_ones() -> None:
    budget = Budget(32 * 2**20, largest=16 * 2**20)
    with budget.reserve() as big:
        big.grow_to(16 * 2**20)
        with budget.reserve() as second, pytest.raises(OverBudget, match="large"):
            second.grow_to(15 * 2**20)  # 31 MiB of large bodies: past three quarters
        smalls = [budget.reserve(2**20) for _ in range(8)]
        for small in smalls:
            small.__enter__()  # 8 MiB of small ones still fit next to the large one
        for small in smalls:
            small.__exit__(None, None, None)
    assert (budget.used, budget.used_large) == (0, 0)


async def test_a_budget_no_larger_than_the_largest_body_still_takes_it() -> None:
    budget = Budget(16 * 2**20, largest=16 * 2**20)
    with budget.reserve() as held:
        held.grow_to(16 * 2**20)


async def test_a_burst_of_gzip_bombs_within_limits_stays_in_budget_and_others_go_on(
    own_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # 24 bodies of ~0.1 MB that each inflate to a valid batch of 18,000 events (~15 MB).
    stack = own_stack(consumers=2)
    stack.start_all()
    before = (await stats(http, stack.read_url))["received"]
    topic = f"gzburst-{uuid.uuid4().hex[:6]}"
    batch = [event(topic, str(i), payload={"msg": "x" * 700}) for i in range(18_000)]
    body = gzip.compress(orjson.dumps(batch))
    assert len(body) < 2**20 and len(orjson.dumps(batch)) > 12 * 2**20
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    done = asyncio.Event()
    probes: list[tuple[int, float]] = []

    async def big() -> int:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            async with http.post(f"{stack.ingest_url}/publish", data=body, headers=headers) as r:
                await r.read()
                if r.status != 503:
                    return r.status
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        return 503

    async def probe() -> None:
        n = 0
        while not done.is_set():
            n += 1
            started = time.monotonic()
            status, _, _ = await post_json(http, stack.ingest_url, event(topic + "-probe", str(n)))
            probes.append((status, time.monotonic() - started))
            await asyncio.sleep(0.2)

    with RssSampler(stack) as rss:
        prober = asyncio.create_task(probe())
        statuses = await asyncio.gather(*(big() for _ in range(24)))
        done.set()
        await prober
    print(
        f"\ngzip burst: ingest peak RSS {rss.peak['ingest'] / 1024:.0f} MiB; {len(probes)} probes,"
        f" worst {max(s for _, s in probes) * 1000:.0f} ms"
    )
    assert statuses == [202] * 24
    assert len(probes) >= 5 and all(status == 202 for status, _ in probes), probes
    # Answered, not merely eventually: well within ten times what they take (about 0.5 s).
    assert max(seconds for _, seconds in probes) < 10.0, probes
    assert rss.peak["ingest"] / 1024 < RSS_CAP_MIB, rss.peak
    # Drained before this system stops: its queue is the next tests' too, and events still
    # queued would be counted among theirs.
    await settled(http, stack.read_url, before + 24 * 18_000 + len(probes), timeout=300)
