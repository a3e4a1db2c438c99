"""A system with tenants of its own: ``alpha``, ``beta`` and ``gamma``, each with a token of
both scopes, and one token that holds ``alpha`` and ``beta``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stack.supervisor import Supervisor
from tests.fix_services import private_settings

TENANTS = ("alpha", "beta", "gamma")


def token(tenant: str) -> str:
    return f"token-of-{tenant}-0123456789"


MULTI = "token-of-alpha-and-beta-0123"
ADMIN = "token-of-the-admin-0123456789"

TENANTS_FILE = "\n".join(
    [*(f"[tenants.{t}]" for t in TENANTS)]
    + [f'[[tokens]]\ntoken = "{token(t)}"\nscope = "both"\ntenants = ["{t}"]' for t in TENANTS]
    + [f'[[tokens]]\ntoken = "{MULTI}"\nscope = "both"\ntenants = ["alpha", "beta"]']
    + [f'[[tokens]]\ntoken = "{ADMIN}"\nscope = "admin"']
)


@pytest.fixture(scope="module")
def tenant_stack(
    amqp_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervisor]:
    """One per test module: its counts are the module's own."""
    path = tmp_path_factory.mktemp("tenants") / "tenants.toml"
    path.write_text(TENANTS_FILE)
    with private_settings(amqp_url, database_url, prefix="tenants", tenants_file=str(path)) as s:
        stack = Supervisor(s, logdir=tmp_path_factory.mktemp("tenant-logs"), consumers=2)
        stack.start_all()
        try:
            yield stack
        finally:
            stack.stop_all()


def headers(tenant: str, *, scope: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {token(tenant)}"}
    if scope is not None:
        out["X-Scope-OrgID"] = scope
    return out
