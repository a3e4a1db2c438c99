"""The admin scope against a system with tenants: ``GET /tenants`` (tested with the tenants'
events in ``tests/test_tenant_isolation.py``) and the dead-letter routes of ingest, which a
tenant's token may not use."""

from __future__ import annotations

import aiohttp

from pubsub.topology import Names
from stack.supervisor import Supervisor
from tests.fix_tenants import ADMIN, headers
from tests.support import eventually, publish_raw, queue_depth

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def test_an_admin_token_lists_and_replays_the_dead_letters(
    tenant_stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    settings = tenant_stack.settings
    names = Names.of(settings)
    await publish_raw(settings, names.exchange, [b"not json", b'[{"topic": 1}]'])
    await eventually(
        lambda: queue_depth(settings, names.dead_queue), lambda n: n == 2, what="2 dead letters"
    )
    base = tenant_stack.ingest_url
    async with http.get(f"{base}/dead-letters", params={"limit": "10"}, headers=ADMIN_AUTH) as r:
        assert r.status == 200, await r.text()
        letters = await r.json()
    assert len(letters) == 2
    assert {letter["tenant"] for letter in letters} == {"default"}
    assert {"message_id", "reason", "deliveries", "size", "preview"} <= set(letters[0])
    # Listing leaves them in place; a replay moves them (and, still poison, they come back).
    assert await queue_depth(settings, names.dead_queue) == 2
    async with http.post(
        f"{base}/dead-letters/replay", params={"limit": "1"}, headers=ADMIN_AUTH
    ) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"moved": 1}
    await eventually(
        lambda: queue_depth(settings, names.dead_queue), lambda n: n == 2, what="back again"
    )


async def test_the_admin_routes_refuse_other_tokens_and_bad_limits(
    tenant_stack: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = tenant_stack.ingest_url
    for path in ("/dead-letters", "/dead-letters/replay"):
        method = http.get if path == "/dead-letters" else http.post
        async with method(f"{base}{path}", headers=headers("alpha")) as r:
            assert r.status == 403, path
        async with method(f"{base}{path}") as r:
            assert r.status == 401, path
        async with method(f"{base}{path}", params={"limit": "0"}, headers=ADMIN_AUTH) as r:
            assert r.status == 400, path
        async with method(f"{base}{path}", params={"limit": "1001"}, headers=ADMIN_AUTH) as r:
            assert r.status == 400, path
    async with http.get(f"{tenant_stack.read_url}/tenants", headers=ADMIN_AUTH) as r:
        assert r.status == 200
