"""Tenants: which token may publish or read, as which tenant, within which limits.

A deployment's tenants are declared once, in a TOML file named by ``PUBSUB_TENANTS_FILE``
(mounted as a secret: it holds tokens)::

    [tenants.team-a]
    events_per_second = 500      # ingest rate, with a burst of burst_seconds of it
    bytes_per_second = 2_000_000
    burst_seconds = 2
    streams = 8                  # live streams at once
    retention = "7d"             # shorter than PUBSUB_RETENTION (see consumer.tenant_expiry)

    [[tokens]]
    token = "..."                # or token_file = "/run/secrets/team-a"
    scope = "publish"            # publish, read, both, or admin
    tenants = ["team-a"]         # the first is the one used without X-Scope-OrgID

Without the file there is one tenant, ``default``, and the tokens are ``PUBSUB_PUBLISH_TOKEN``
and ``PUBSUB_READ_TOKEN`` (none: anonymous, on loopback only), as before tenants existed. With
it, those two, when set, are tokens of ``default`` as well.

A request's tenant is its token's. ``X-Scope-OrgID`` (the header Loki, Mimir and their
shippers send) picks one of the tenants the token holds; naming any other is refused (403).
Tokens are looked up by their SHA-256 digest, so the lookup's time does not depend on how much
of a token an attacker guessed right, and they are never logged.

:class:`Tenancy` keeps the registry a service uses and reads the file again on demand (SIGHUP,
or a change seen by :meth:`Tenancy.watch`): a file that does not validate is refused with the
file, the entry and the rule in one line, and the last good registry stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pubsub import tokens
from pubsub.http import Refusal
from pubsub.settings import Horizon

log = logging.getLogger("pubsub.tenants")

DEFAULT = "default"
HEADER = "X-Scope-OrgID"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ID = re.compile(ID_PATTERN)
# A file's token must not be guessable; an environment token keeps the rule it always had.
TOKEN_MIN_CHARS = 16
# Past these, a file is not a tenants file: refused before it is parsed.
MAX_FILE_BYTES = 1 << 20

Scope = Literal["publish", "read", "both", "admin"]
# What a route asks of a token (pubsub.routes.Auth, without "open").
Need = Literal["publish", "read", "admin"]

TenantId = Annotated[str, Field(pattern=ID_PATTERN)]


class Tenant(BaseModel):
    """One tenant's limits; absent: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events_per_second: float | None = Field(None, gt=0)
    bytes_per_second: float | None = Field(None, gt=0)
    burst_seconds: float = Field(1.0, gt=0, le=3600)
    streams: int | None = Field(None, ge=0)
    # PUBSUB_RETENTION's rule: "30d", "12h"...; at most PUBSUB_RETENTION (see Registry.load).
    retention: Horizon = None


NO_LIMITS = Tenant()


class Token(BaseModel):
    """One token: its secret (inline or in a file of its own), its scope and its tenants."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field("", repr=False)
    token_file: str = ""
    scope: Scope
    tenants: list[TenantId] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _secret(self) -> Token:
        if bool(self.token) == bool(self.token_file):
            raise ValueError("give token or token_file, one of them")
        if self.scope == "admin" and self.tenants:
            raise ValueError("an admin token holds no tenants")
        if self.scope != "admin" and not self.tenants:
            raise ValueError("name the tenants this token may use")
        if len(set(self.tenants)) != len(self.tenants):
            raise ValueError("a tenant is named twice")
        return self


class TenantsFile(BaseModel):
    """The file's shape: ``[tenants.<id>]`` tables and ``[[tokens]]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: dict[TenantId, Tenant] = Field(default_factory=dict, max_length=10_000)
    tokens: list[Token] = Field(default_factory=list, max_length=10_000)


class TenantsError(ValueError):
    """A tenants file that cannot be used, in one line naming the file and the entry."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token may do."""

    scope: Scope
    tenants: tuple[str, ...]  # the first without a header; none for admin

    def allows(self, need: Need) -> bool:
        if need == "admin":
            return self.scope == "admin"
        return self.scope in (need, "both")


@dataclass(frozen=True, slots=True)
class Access:
    """Who a request is: its tenant (``None`` for an admin request), its token's scope and
    the tenant's limits."""

    tenant: str | None
    scope: Scope
    limits: Tenant = NO_LIMITS


def _digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


_ANONYMOUS = Grant("both", (DEFAULT,))
_ENVIRONMENT = "PUBSUB_PUBLISH_TOKEN and PUBSUB_READ_TOKEN"


@dataclass(frozen=True)
class Registry:
    """The tenants and tokens in force."""

    tenants: Mapping[str, Tenant]
    grants: Mapping[bytes, Grant]  # by the digest of "Bearer <token>"
    # Kinds without any token, open to anyone (no file, no environment token, loopback).
    anonymous: frozenset[Need]
    source: str  # the file, or where the tokens came from

    @classmethod
    def of_environment(cls, *, publish_token: str, read_token: str) -> Registry:
        """The registry without a file: ``default`` and the environment's tokens."""
        grants, anonymous = _environment_grants(publish_token, read_token)
        return cls({DEFAULT: Tenant()}, grants, anonymous, _ENVIRONMENT)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        publish_token: str = "",
        read_token: str = "",
        retention: timedelta | None = None,
    ) -> Registry:
        """The registry of the file at ``path``, with the environment's tokens as tokens of
        ``default``; :class:`TenantsError` when it cannot be used. A tenant's retention may
        not pass the deployment's ``retention`` (its partitions go then, whoever's events
        they hold)."""
        where = str(path)
        try:
            with Path(path).open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise TenantsError(f"{where}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise TenantsError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise TenantsError(f"{where}: not TOML: {exc}") from None
        try:
            parsed = TenantsFile.model_validate(data)
        except ValidationError as exc:
            raise TenantsError(f"{where}: {_explain(exc)}") from None
        for name, tenant in parsed.tenants.items():
            if (
                retention is not None
                and tenant.retention is not None
                and (tenant.retention > retention)
            ):
                raise TenantsError(
                    f"{where}: tenants.{name}.retention: longer than PUBSUB_RETENTION "
                    f"({retention}), which removes every tenant's events past it"
                )
        return cls._of(parsed, where, publish_token=publish_token, read_token=read_token)

    @classmethod
    def _of(
        cls, parsed: TenantsFile, where: str, *, publish_token: str, read_token: str
    ) -> Registry:
        tenants = dict(parsed.tenants)
        grants, _ = _environment_grants(publish_token, read_token)
        if grants:
            tenants.setdefault(DEFAULT, Tenant())
        for i, spec in enumerate(parsed.tokens):
            entry = f"tokens[{i}]"
            unknown = [t for t in spec.tenants if t not in tenants]
            if unknown:
                raise TenantsError(f"{where}: {entry}: no tenant {unknown[0]!r} is declared")
            secret = spec.token
            if spec.token_file:
                try:
                    secret = tokens.read_file(spec.token_file, variable=f"{entry}.token_file")
                except tokens.TokenFileError as exc:
                    raise TenantsError(f"{where}: {exc}") from None
            if len(secret) < TOKEN_MIN_CHARS or secret != secret.strip():
                raise TenantsError(
                    f"{where}: {entry}: a token has {TOKEN_MIN_CHARS} characters at least and "
                    "no surrounding white space"
                )
            digest = _digest(f"Bearer {secret}")
            if digest in grants:
                raise TenantsError(f"{where}: {entry}: the same token is given twice")
            grants[digest] = Grant(spec.scope, tuple(spec.tenants))
        return cls(tenants, grants, frozenset(), where)

    def access(self, authorization: str | None, org_id: str | None, need: Need) -> Access:
        """The tenant a request acts as, from its ``Authorization`` and ``X-Scope-OrgID``
        headers, for a route that needs ``need``; :class:`Refusal` (400, 401 or 403) when it
        may not."""
        if org_id is not None and not ID.fullmatch(org_id):
            raise Refusal(
                400,
                f"{HEADER} must be a tenant id: 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            )
        if need in self.anonymous:
            grant: Grant | None = _ANONYMOUS  # whatever token came, as before tenants
        else:
            grant = self.grants.get(_digest(authorization)) if authorization else None
        # Without a file, a token of the other kind is a wrong token, as it always was.
        if grant is None or (not grant.allows(need) and self.source == _ENVIRONMENT):
            raise Refusal(
                401, "missing or wrong bearer token", headers=(("WWW-Authenticate", "Bearer"),)
            )
        if not grant.allows(need):
            raise Refusal(403, f"this token may not {need}: its scope is {grant.scope}")
        if need == "admin":
            return Access(None, grant.scope)
        if org_id is None:
            org_id = grant.tenants[0]
        elif org_id not in grant.tenants:
            raise Refusal(403, f"this token may not act as tenant {org_id!r}")
        limits = self.tenants.get(org_id)
        if limits is None:  # removed from the file since the token was given it
            raise Refusal(403, f"this token may not act as tenant {org_id!r}")
        return Access(org_id, grant.scope, limits)

    def guards(self, need: Need) -> bool:
        """Whether routes that need ``need`` ask for a token."""
        return need not in self.anonymous


def _environment_grants(publish_token: str, read_token: str) -> tuple[dict[bytes, Grant], Any]:
    grants: dict[bytes, Grant] = {}
    anonymous: set[Need] = set()
    for need, token in (("publish", publish_token), ("read", read_token)):
        if not token:
            anonymous.add(need)  # type: ignore[arg-type]
            continue
        digest = _digest(f"Bearer {token}")
        if digest in grants:  # one token for both kinds: it may do both
            grants[digest] = Grant("both", (DEFAULT,))
        else:
            grants[digest] = Grant(need, (DEFAULT,))  # type: ignore[arg-type]
    return grants, frozenset(anonymous)


# The keys an entry may hold, by the table it is in, for a misspelling's suggestion.
_KEYS = {
    "": list(TenantsFile.model_fields),
    "tenants": list(Tenant.model_fields),
    "tokens": list(Token.model_fields),
}


def _explain(exc: ValidationError) -> str:
    """The first error as ``entry: rule``, the entry as the file names it
    (``tenants.team-a.streams``, ``tokens[2].scope``)."""
    errors = exc.errors(include_url=False)
    # A misspelled key also leaves the key meant missing: the misspelling says more.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    entry = ""
    for part in first["loc"]:
        if part == "[key]":  # pydantic's mark of a table's name: the name is the entry
            continue
        entry += f"[{part}]" if isinstance(part, int) else (f".{part}" if entry else str(part))
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        loc = first["loc"]
        table = str(loc[0]) if len(loc) > 1 else ""
        close = difflib.get_close_matches(str(loc[-1]), _KEYS.get(table, ()), n=1)
        message = "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    return f"{entry}: {message}" if entry else message


class Tenancy:
    """The registry a service uses, read again from its file on :meth:`reload`."""

    def __init__(
        self,
        *,
        path: str = "",
        publish_token: str = "",
        read_token: str = "",
        retention: timedelta | None = None,
    ) -> None:
        self._path = path
        self._env = {"publish_token": publish_token, "read_token": read_token}
        self._retention = retention
        self._stamp: tuple[int, int, int] | None = None
        self.registry = self._read()

    @property
    def path(self) -> str:
        return self._path

    def _read(self) -> Registry:
        if not self._path:
            return Registry.of_environment(**self._env)
        self._stamp = _stamp(self._path)
        return Registry.load(self._path, **self._env, retention=self._retention)

    def reload(self) -> bool:
        """Read the file again; whether the new registry is in force. A file that does not
        validate is logged, naming the entry, and the last good registry stays."""
        if not self._path:
            return False
        try:
            registry = self._read()
        except TenantsError as exc:
            log.error("tenants file refused, the previous one stays in force: %s", exc)
            return False
        self.registry = registry
        log.info(
            "tenants file read",
            extra={"tenants": len(registry.tenants), "tokens": len(registry.grants)},
        )
        return True

    def refresh(self) -> bool:
        """Read the file again if it changed since it was read; whether it did."""
        return bool(self._path) and _stamp(self._path) != self._stamp and self.reload()

    async def watch(self, stop: asyncio.Event, *, interval: float) -> None:
        """Read the file again whenever it changes (a Kubernetes secret is replaced without
        a signal), looking every ``interval`` seconds, until ``stop``."""
        if not self._path or interval <= 0:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not stop.is_set():
                self.refresh()


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What tells that a file changed: its inode, size and modification time."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
