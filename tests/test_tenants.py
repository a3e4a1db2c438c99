"""The tenants file and the token check: what a file may say, which refusals name which entry,
which token acts as which tenant on which route, and a reload that revokes at once and keeps
the last good file when the new one is bad."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pubsub.http import Refusal
from pubsub.tenants import Registry, Tenancy, TenantsError
from tests.inprocess import RecordingBroker, ingest, serve
from tests.support import event

PUBLISH = "p" * 20
READ = "r" * 20
BOTH = "b" * 20
ADMIN = "a" * 20

GOOD = f"""
[tenants.default]
events_per_second = 500
bytes_per_second = 2_000_000
burst_seconds = 2
streams = 8

[[tokens]]
token = "{PUBLISH}"
scope = "publish"
tenants = ["default"]

[[tokens]]
token = "{READ}"
scope = "read"
tenants = ["default"]

[[tokens]]
token_file = "{{secret}}"
scope = "both"
tenants = ["default"]

[[tokens]]
token = "{ADMIN}"
scope = "admin"
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_text(BOTH + "\n")
    path = tmp_path / "tenants.toml"
    path.write_text(GOOD.replace("{secret}", str(secret)))
    return path


def _refused(registry: Registry, token: str | None, org: str | None, need: str) -> Refusal:
    with pytest.raises(Refusal) as refused:
        registry.access(token, org, need)  # type: ignore[arg-type]
    return refused.value


def test_a_tenants_file_gives_each_token_its_scope_and_tenant(good: Path) -> None:
    registry = Registry.load(good)
    assert registry.tenants["default"].events_per_second == 500
    assert registry.tenants["default"].streams == 8
    assert registry.access(f"Bearer {PUBLISH}", None, "publish").tenant == "default"
    assert registry.access(f"Bearer {READ}", "default", "read").tenant == "default"
    for need in ("publish", "read"):
        assert registry.access(f"Bearer {BOTH}", None, need).tenant == "default"
    admin = registry.access(f"Bearer {ADMIN}", None, "admin")
    assert admin.tenant is None and admin.scope == "admin"
    # A token of another scope: known, but not allowed here (403, naming the scope).
    wrong = _refused(registry, f"Bearer {READ}", None, "publish")
    assert wrong.status == 403 and "scope is read" in wrong.message
    assert _refused(registry, f"Bearer {PUBLISH}", None, "admin").status == 403
    assert _refused(registry, f"Bearer {ADMIN}", None, "read").status == 403
    # Unknown, missing, or a prefix of a real one: 401, whatever the route.
    for token in (None, "", "Bearer nope", f"Bearer {PUBLISH[:-1]}", PUBLISH):
        assert _refused(registry, token, None, "publish").status == 401


def test_the_scope_header_names_a_tenant_the_token_holds(good: Path) -> None:
    registry = Registry.load(good)
    other = _refused(registry, f"Bearer {PUBLISH}", "team-b", "publish")
    assert other.status == 403 and "'team-b'" in other.message
    for bad in ("", " ", "a" * 65, "a|b", "-a", "ünï"):
        refused = _refused(registry, f"Bearer {PUBLISH}", bad, "publish")
        assert refused.status == 400 and "X-Scope-OrgID" in refused.message


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ('scope = "publish"', 'scope = "all"', "tokens[0].scope: Input should be"),
        ('tenants = ["default"]', 'tenants = ["default"]\nx = 1', "tokens[0].x: unknown key"),
        (
            'scope = "publish"',
            'scopes = "publish"',
            "tokens[0].scopes: unknown key (did you mean scope?)",
        ),
        (
            "streams = 8",
            "stream = 8",
            "tenants.default.stream: unknown key (did you mean streams?)",
        ),
        ("[tenants.default]", "[tenant.default]", "tenant: unknown key (did you mean tenants?)"),
        ("streams = 8", "streams = -1", "tenants.default.streams: Input should be greater"),
        ("events_per_second = 500", "events_per_second = -5", "tenants.default.events_per"),
        ("streams = 8", 'retention = "soon"', "tenants.default.retention: give a positive"),
        (f'token = "{READ}"', f'token = "{PUBLISH}"', "tokens[1]: the same token is given twice"),
        (f'token = "{READ}"', 'token = "short"', "tokens[1]: a token has 16 characters at least"),
        ('tenants = ["default"]', 'tenants = ["nobody"]', "tokens[0]: no tenant 'nobody'"),
        ("[tenants.default]", '[tenants."a b"]\n[tenants.default]', "tenants.a b: String should"),
        ("[tenants.default]", "[tenants.default", "not TOML"),
    ],
)
def test_a_file_that_cannot_be_used_is_refused_naming_the_entry(
    good: Path, old: str, new: str, says: str
) -> None:
    text = good.read_text()
    assert old in text
    good.write_text(text.replace(old, new, 1))
    with pytest.raises(TenantsError) as refused:
        Registry.load(good)
    assert str(refused.value).startswith(f"{good}: ")
    assert says in str(refused.value)


def test_a_token_file_given_and_empty_is_refused(good: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("")
    with pytest.raises(TenantsError, match=r"tokens\[2\]\.token_file: .* is empty"):
        Registry.load(good)


def test_the_environment_tokens_join_the_file_as_tokens_of_default(good: Path) -> None:
    registry = Registry.load(good, publish_token="from-the-environment")
    assert registry.access("Bearer from-the-environment", None, "publish").tenant == "default"
    with pytest.raises(TenantsError, match="the same token is given twice"):
        Registry.load(good, read_token=READ)


async def test_a_revoked_token_stops_at_the_reload_and_a_bad_file_keeps_the_last_good(
    good: Path,
) -> None:
    broker = RecordingBroker()
    app = ingest(broker, tenants_file=str(good), tenants_reload_interval=0)
    batch = [event("tenants", "one")]
    async with serve(app) as client:

        async def publish(token: str) -> int:
            resp = await client.post(
                "/publish", json=batch, headers={"Authorization": f"Bearer {token}"}
            )
            return resp.status

        assert await publish(PUBLISH) == 202
        assert await publish(READ) == 403
        wrong = await client.post("/publish", json=batch, headers={"X-Scope-OrgID": "x"})
        assert wrong.status == 401
        # The publish token revoked: refused from the next request after the signal on.
        _edit(good, f'token = "{PUBLISH}"', f'token = "{"n" * 20}"')
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: publish(PUBLISH), 401)
        assert await publish("n" * 20) == 202
        # A broken file: refused, logged, and the one before stays in force.
        _edit(good, "[[tokens]]", "[[tokens]]\nscope = 'publish'")
        os.kill(os.getpid(), signal.SIGHUP)
        assert await publish("n" * 20) == 202
        assert await publish(PUBLISH) == 401


async def test_a_changed_file_is_read_again_without_a_signal(good: Path) -> None:
    tenancy = Tenancy(path=str(good))
    assert tenancy.registry.access(f"Bearer {PUBLISH}", None, "publish")
    _edit(good, f'token = "{PUBLISH}"', f'token = "{"n" * 20}"')
    broker = RecordingBroker()
    app = ingest(broker, tenants_file=str(good), tenants_reload_interval=0.05)
    async with serve(app) as client:
        _edit(good, "n" * 20, "m" * 20)

        async def status() -> int:
            resp = await client.post(
                "/publish",
                json=[event("tenants", "two")],
                headers={"Authorization": f"Bearer {'m' * 20}"},
            )
            return resp.status

        await _until(status, 202)


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


async def _until(check: Callable[[], Awaitable[int]], want: int) -> None:
    """Poll ``check()`` until it answers ``want``, for at most 10 s."""
    deadline = time.monotonic() + 10
    got = None
    while time.monotonic() < deadline:
        got = await check()
        if got == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"answered {got}, not {want}, within 10 s")


def test_the_example_tenants_file_is_one_the_services_take() -> None:
    example = Path(__file__).parent.parent / "deploy" / "tenants" / "example.toml"
    registry = Registry.load(example)
    assert set(registry.tenants) == {"default", "team-a", "team-b"}
    shared = "Bearer replace-me-platform-team-reads"
    assert registry.access(shared, "team-b", "read").tenant == "team-b"
