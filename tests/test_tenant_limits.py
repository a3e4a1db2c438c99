"""A tenant's limits: its ingest rates by token bucket (``ingest/limits.py``), answered 429 with
Retry-After and taking nothing, and its share of the live streams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from ingest.budget import Budget, TenantOverBudget
from ingest.limits import Rates
from pubsub.http import Refusal
from pubsub.settings import Settings
from pubsub.tenants import Access, Tenant
from readapi.stream import Streams
from tests.inprocess import RecordingBroker, ingest, serve
from tests.support import event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(call: Any) -> Refusal:
    with pytest.raises(Refusal) as refused:
        call()
    return refused.value


def test_a_tenant_in_debt_is_refused_until_its_rate_repays_it() -> None:
    clock = Clock()
    rates = Rates(clock)
    who = Access("a", "publish", Tenant(events_per_second=10, burst_seconds=1))
    rates.admit(who)
    # A batch larger than the burst passes once, and puts the tenant 15 events in debt.
    rates.take(who, events=25, size=100)
    refusal = _refused(lambda: rates.admit(who))
    assert refusal.status == 429 and "'a' is over its rate of 10 events/s" in refusal.message
    assert dict(refusal.headers)["Retry-After"] == "2"  # 1.5 s of debt, rounded up
    clock.now += 1.0
    assert dict(_refused(lambda: rates.take(who, events=1, size=1)).headers)["Retry-After"] == "1"
    clock.now += 0.55  # 15.5 events repaid: half of one to spare
    rates.take(who, events=1, size=1)
    assert _refused(lambda: rates.admit(who)).status == 429
    # Another tenant, and one without limits, have buckets of their own.
    rates.take(Access("b", "publish", Tenant(events_per_second=10)), events=5, size=1)
    rates.take(Access("c", "publish", Tenant()), events=10**9, size=10**12)


def test_the_bytes_rate_counts_bytes_and_a_refusal_takes_nothing() -> None:
    clock = Clock()
    rates = Rates(clock)
    who = Access("a", "publish", Tenant(events_per_second=100, bytes_per_second=1000))
    rates.take(who, events=1, size=1500)
    refusal = _refused(lambda: rates.take(who, events=50, size=10))
    assert "1000 bytes/s" in refusal.message
    clock.now += 0.6  # the bytes repaid (100 to spare); the refused 50 events were not taken
    for _ in range(99):
        rates.take(who, events=1, size=1)


def test_a_changed_limit_applies_from_the_next_request() -> None:
    clock = Clock()
    rates = Rates(clock)
    rates.take(Access("a", "publish", Tenant(events_per_second=1)), events=2, size=0)
    assert _refused(lambda: rates.admit(Access("a", "publish", Tenant(events_per_second=1))))
    clock.now += 0.5  # half the debt repaid at the old rate
    raised = Access("a", "publish", Tenant(events_per_second=100))
    assert _refused(lambda: rates.admit(raised))
    clock.now += 0.01  # the rest at the new one
    rates.admit(raised)


async def test_ingest_answers_429_past_a_tenants_rate_and_publishes_nothing_of_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        "[tenants.slow]\nevents_per_second = 10\nburst_seconds = 1\n[tenants.fast]\n"
        '[[tokens]]\ntoken = "slow-token-0123456789"\nscope = "publish"\ntenants = ["slow"]\n'
        '[[tokens]]\ntoken = "fast-token-0123456789"\nscope = "publish"\ntenants = ["fast"]\n'
    )
    broker = RecordingBroker()
    app = ingest(broker, tenants_file=str(path), tenants_reload_interval=0)
    batch = [event("limits", str(i)) for i in range(20)]
    async with serve(app) as client:

        async def post(tenant: str) -> tuple[int, dict[str, str]]:
            resp = await client.post(
                "/publish",
                json=batch,
                headers={"Authorization": f"Bearer {tenant}-token-0123456789"},
            )
            return resp.status, dict(resp.headers)

        assert (await post("slow"))[0] == 202
        status, headers = await post("slow")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert (await post("fast"))[0] == 202
        loki = await client.post(
            "/loki/api/v1/push",
            json={"streams": [{"stream": {"app": "x"}, "values": [["1", "line"]]}]},
            headers={"Authorization": "Bearer slow-token-0123456789"},
        )
        assert loki.status == 429 and "over its rate" in await loki.text()
    assert broker.events == 40 and broker.tenants == ["slow", "fast"]


async def test_a_tenants_streams_are_bounded_and_free_their_place_when_they_end() -> None:
    streams = Streams(Settings.from_env({}), asyncio.Event(), cast(Any, None))
    one = Access("a", "read", Tenant(streams=1))
    with streams.place(one):
        refusal = _refused(lambda: streams.place(one).__enter__())
        assert refusal.status == 429 and "'a' has 1 live stream(s) open" in refusal.message
        with streams.place(Access("b", "read", Tenant(streams=1))):
            pass
    with streams.place(one):
        assert streams.active == 1


def test_one_tenant_holds_at_most_its_share_of_ingests_memory() -> None:
    budget = Budget(1000, largest=1000, tenant_share=0.5)
    with budget.reserve(400, tenant="a") as first:
        with pytest.raises(TenantOverBudget, match="'a' holds 400 of the 500 bytes"):
            first.grow_to(501)
        # Its flood leaves the other half to another tenant.
        with budget.reserve(450, tenant="b"):
            assert budget.by_tenant == {"a": 400, "b": 450}
    assert budget.by_tenant == {} and budget.used == 0
