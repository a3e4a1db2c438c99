"""Tenants on one deployment, end to end: random events of three tenants that share topic
names, event ids and sources, then every read route with random parameters, each asked with
each tenant's token. A tenant's token never returns, counts or streams another's event,
including with a cursor or a resume id taken from another tenant, and with search terms only
another tenant's events hold.

The data and the queries come from one seed (``PUBSUB_TEST_SEED``, random otherwise), which
every failure names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import yarl

from publisher.tail import Message, messages
from stack.supervisor import Supervisor
from tests.fix_tenants import ADMIN, MULTI, TENANTS, headers
from tests.support import event, eventually, take

TOPICS = ("shared-1", "shared-2", "shared-3")
SEED = int(os.environ.get("PUBSUB_TEST_SEED", random.randrange(2**32)))
DEADLINE = 30.0


Key = tuple[str, str]  # (topic, event_id)


class World:
    """What each tenant sent, and so what each must read back."""

    def __init__(self, rng: random.Random) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {t: [] for t in TENANTS}
        self.stored: dict[str, dict[Key, dict[str, Any]]] = {t: {} for t in TENANTS}
        for tenant in TENANTS:
            for _ in range(rng.randrange(40, 90)):
                # Ids from one small pool for every tenant: the same (topic, id) in several.
                key = (rng.choice(TOPICS), f"id-{rng.randrange(60)}")
                known = self.stored[tenant].get(key)
                one = known or event(
                    key[0],
                    key[1],
                    source=rng.choice(("shared-source", f"source-{tenant}")),
                    payload={"tenant": tenant, "msg": f"common secret{tenant} {rng.random()}"},
                )
                self.sent[tenant].append(one)
                self.stored[tenant].setdefault(key, one)


@pytest.fixture(scope="module")
def world(tenant_stack: Supervisor) -> World:
    """Every tenant's events, sent and stored."""
    w = World(random.Random(SEED))
    asyncio.run(_send(tenant_stack, w))
    return w


async def _send(tenant_stack: Supervisor, w: World) -> None:
    async with aiohttp.ClientSession() as http:
        for tenant in TENANTS:
            events = w.sent[tenant]
            for start in range(0, len(events), 25):
                async with http.post(
                    f"{tenant_stack.ingest_url}/publish",
                    json=events[start : start + 25],
                    headers=headers(tenant),
                ) as resp:
                    assert resp.status == 202, await resp.text()
        for tenant in TENANTS:
            await eventually(
                lambda t=tenant: _stats(http, tenant_stack, t),  # type: ignore[misc]
                lambda s, t=tenant: s["received"] == len(w.sent[t]),  # type: ignore[misc]
                timeout=60,
                what=f"{tenant}'s events stored",
            )


async def _stats(http: aiohttp.ClientSession, stack: Supervisor, tenant: str) -> dict[str, Any]:
    async with http.get(f"{stack.read_url}/stats", headers=headers(tenant)) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def _pages(
    http: aiohttp.ClientSession,
    stack: Supervisor,
    tenant: str,
    params: dict[str, str],
    *,
    cursor: str | None = None,
) -> list[dict[str, Any]]:
    """Every event of ``/events`` with ``params``, page after page by the cursors."""
    found: list[dict[str, Any]] = []
    for _ in range(500):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        async with http.get(
            f"{stack.read_url}/events", params=query, headers=headers(tenant)
        ) as resp:
            assert resp.status == 200, (SEED, query, await resp.text())
            found += await resp.json()
            link = resp.headers.get("Link")
        if not link:
            return found
        cursor = _cursor(link)
    raise AssertionError(f"seed {SEED}: more than 500 pages for {params}")


def _cursor(link: str) -> str:
    """The cursor of a ``Link: <...>; rel="next"`` header."""
    return yarl.URL(link.split(";", maxsplit=1)[0].strip("<>")).query["cursor"]


def _is(event_id: str) -> Callable[[Message], bool]:
    return lambda message: _id(message) == event_id


def _id(message: Message) -> str:
    event_id: str = orjson.loads(message.data)["event_id"]
    return event_id


def _keys(events: list[dict[str, Any]]) -> set[Key]:
    return {(e["topic"], e["event_id"]) for e in events}


def _owners(events: list[dict[str, Any]]) -> set[str]:
    return {e["payload"]["tenant"] for e in events}


async def test_every_read_route_shows_each_tenant_its_own_events_only(
    tenant_stack: Supervisor, world: World
) -> None:
    rng = random.Random(SEED + 1)
    async with aiohttp.ClientSession() as http:
        for tenant in TENANTS:
            mine = world.stored[tenant]
            stats = await _stats(http, tenant_stack, tenant)
            assert stats["unique_processed"] == len(mine), SEED
            assert stats["duplicate_dropped"] == len(world.sent[tenant]) - len(mine), SEED
            assert stats["topics"] == sorted({topic for topic, _ in mine}), SEED
            assert stats["queued_messages"] is None  # the shared queue is no tenant's to see
            for _ in range(12):
                params: dict[str, str] = {"limit": str(rng.randrange(1, 40))}
                if rng.random() < 0.5:
                    params["order"] = "desc"
                want = dict(mine)
                if rng.random() < 0.5:
                    params["topic"] = rng.choice(TOPICS)
                    want = {k: v for k, v in want.items() if k[0] == params["topic"]}
                if rng.random() < 0.3:
                    params["source"] = rng.choice(("shared-source", f"source-{tenant}"))
                    want = {k: v for k, v in want.items() if v["source"] == params["source"]}
                if rng.random() < 0.4:
                    other = rng.choice(TENANTS)
                    params["q"] = f"secret{other}"
                    want = want if other == tenant else {}
                # The histogram takes every filter but the id.
                assert await _histogram(http, tenant_stack, tenant, params) == len(want), (
                    SEED, params,
                )  # fmt: skip
                if rng.random() < 0.3:
                    params["event_id"] = f"id-{rng.randrange(60)}"
                    want = {k: v for k, v in want.items() if k[1] == params["event_id"]}
                got = await _pages(http, tenant_stack, tenant, params)
                assert _owners(got) <= {tenant}, (SEED, params)
                assert _keys(got) == set(want), (SEED, params)
                assert len(got) == len(want), (SEED, params, "an event twice")


async def _histogram(
    http: aiohttp.ClientSession, stack: Supervisor, tenant: str, params: dict[str, str]
) -> int:
    query = {k: v for k, v in params.items() if k in ("topic", "source", "q")}
    query |= {"since": "2025-10-21T00:00:00Z", "until": "2025-10-22T00:00:00Z"}
    async with http.get(
        f"{stack.read_url}/events/histogram", params=query, headers=headers(tenant)
    ) as resp:
        assert resp.status == 200, (SEED, query, await resp.text())
        total: int = (await resp.json())["total"]
        return total


async def test_a_cursor_of_another_tenant_reveals_nothing_of_it(
    tenant_stack: Supervisor, world: World
) -> None:
    async with aiohttp.ClientSession() as http:
        for tenant in TENANTS:
            for other in TENANTS:
                async with http.get(
                    f"{tenant_stack.read_url}/events",
                    params={"limit": "3"},
                    headers=headers(other),
                ) as resp:
                    cursor = _cursor(resp.headers["Link"])
                got = await _pages(http, tenant_stack, tenant, {"limit": "50"}, cursor=cursor)
                assert _owners(got) <= {tenant}, SEED


async def test_the_live_stream_and_its_resume_id_stay_within_the_tenant(
    tenant_stack: Supervisor, world: World
) -> None:
    async with aiohttp.ClientSession() as http:
        resume: dict[str, str] = {}
        for tenant in TENANTS:
            async with _stream(http, tenant_stack, tenant, since="2000-01-01T00:00:00Z") as got:
                taken = await take(got, len(world.stored[tenant]))
            assert _owners([orjson.loads(m.data) for m in taken]) == {tenant}, SEED
            assert {(orjson.loads(m.data)["topic"], orjson.loads(m.data)["event_id"])
                    for m in taken} == set(world.stored[tenant]), SEED  # fmt: skip
            resume[tenant] = str(taken[0].id)
        # Another tenant's resume id: the stream goes on with this tenant's events only. The
        # other tenant's next event is stored first, so a leak would come first.
        for n, (tenant, other) in enumerate(zip(TENANTS, TENANTS[1:] + TENANTS[:1], strict=True)):
            async with _stream(
                http, tenant_stack, tenant, extra={"Last-Event-ID": resume[other]}
            ) as got:
                for who in (other, tenant):
                    one = event("shared-1", f"late-{n}", payload={"tenant": who})
                    async with http.post(
                        f"{tenant_stack.ingest_url}/publish", json=one, headers=headers(who)
                    ) as resp:
                        assert resp.status == 202
                    world.stored[who][("shared-1", f"late-{n}")] = one
                    world.sent[who].append(one)
                taken = await take(got, until=_is(f"late-{n}"))
            assert _owners([orjson.loads(m.data) for m in taken]) == {tenant}, SEED


async def test_the_scope_header_picks_among_the_tokens_tenants_and_nothing_else(
    tenant_stack: Supervisor, world: World
) -> None:
    async with aiohttp.ClientSession() as http:
        base = tenant_stack.read_url
        for scope in ("alpha", "beta"):
            async with http.get(
                f"{base}/events",
                params={"limit": "1000"},
                headers={"Authorization": f"Bearer {MULTI}", "X-Scope-OrgID": scope},
            ) as resp:
                assert resp.status == 200
                got = await resp.json()
            assert _owners(got) == {scope} and _keys(got) == set(world.stored[scope])
        for who, scope in (("alpha", "beta"), ("gamma", "alpha"), ("alpha", "nobody")):
            for url in (f"{base}/events", f"{base}/stats", f"{base}/events/histogram"):
                async with http.get(url, headers=headers(who, scope=scope)) as resp:
                    assert resp.status == 403, (url, who, scope)
                    assert f"'{scope}'" in (await resp.json())["error"]
            async with http.post(
                f"{tenant_stack.ingest_url}/publish",
                json=event("shared-1", "refused"),
                headers=headers(who, scope=scope),
            ) as resp:
                assert resp.status == 403
        async with http.get(f"{base}/events", headers=headers("alpha", scope="")) as resp:
            assert resp.status == 400
        async with http.get(f"{base}/events", headers={"X-Scope-OrgID": "alpha"}) as resp:
            assert resp.status == 401


@contextlib.asynccontextmanager
async def _stream(
    http: aiohttp.ClientSession,
    stack: Supervisor,
    tenant: str,
    *,
    extra: dict[str, str] | None = None,
    **params: str,
) -> AsyncIterator[Any]:
    async with http.get(
        f"{stack.read_url}/events/stream",
        params=params,
        headers={**headers(tenant), **(extra or {})},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE),
    ) as resp:
        assert resp.status == 200, await resp.text()
        yield messages(resp)


async def test_an_admin_token_lists_the_tenants_and_reads_no_events(
    tenant_stack: Supervisor, world: World
) -> None:
    base = tenant_stack.read_url
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/tenants", headers=admin) as resp:
            assert resp.status == 200, await resp.text()
            listed = await resp.json()
        assert [t["id"] for t in listed] == sorted(TENANTS)
        for entry in listed:
            assert entry["stored"] == len(world.stored[entry["id"]]), SEED
            want = {"both": 2} if entry["id"] in ("alpha", "beta") else {"both": 1}
            assert entry["tokens"] == want
            assert ADMIN not in str(entry)
        for url in (f"{base}/events", f"{base}/stats"):
            async with http.get(url, headers=admin) as resp:
                assert resp.status == 403
        async with http.get(f"{base}/tenants", headers=headers("alpha")) as resp:
            assert resp.status == 403
