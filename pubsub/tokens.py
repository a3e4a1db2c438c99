"""The bearer tokens: read from a file, required beyond loopback, generated at first start.

``python -m pubsub.tokens init`` is the compose stack's first step (the ``tokens`` service): it
keeps one token per kind in a directory of its volume, for ingest, the read API and the demo
publisher to read through ``PUBSUB_*_TOKEN_FILE``. A token given in the environment is written
there; a missing one is generated and printed, once, as Elasticsearch 8 prints the password it
generated at first start. ``python -m pubsub.tokens show`` prints them again for whoever can
run a container on the stack's volumes.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pubsub.routes import Auth, Route

KINDS: tuple[Auth, ...] = ("publish", "read")
DIRECTORY = Path("/var/lib/pubsub/tokens")  # the compose stack's volume (deploy/Dockerfile)
_BYTES = 32  # 256 random bits: as long as guessing goes, no token is ever found


class TokenFileError(ValueError):
    pass


def variable(kind: str) -> str:
    return f"PUBSUB_{kind.upper()}_TOKEN"


def read_file(path: str | Path, *, variable: str) -> str:
    """The token in ``path``; a file missing, unreadable or empty is an error naming
    ``variable``: an unset secret must not silently open a service."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{variable}: {exc}") from None
    if not token:
        raise TokenFileError(
            f"{variable}: {path} is empty; put the token in it, or unset the variable to run "
            "without one"
        )
    return token


def from_env(kind: str, environ: Mapping[str, str] | None = None) -> str:
    """A client's token of ``kind`` from ``PUBSUB_<KIND>_TOKEN_FILE`` (a file wins) or
    ``PUBSUB_<KIND>_TOKEN``; empty when neither is set."""
    env = os.environ if environ is None else environ
    name = variable(kind)
    if env.get(name + "_FILE"):
        return read_file(env[name + "_FILE"], variable=name + "_FILE")
    return env.get(name, "").strip()


# --- closed by default -----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only. Anything else (``0.0.0.0``, ``::``,
    an interface's address, a name) may be reached from the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_doors(
    routes: Iterable[Route], tokens: Mapping[Auth, str], *, host: str, allow_anonymous: bool
) -> str | None:
    """Why a service serving ``routes`` on ``host`` with ``tokens`` must not start: a guarded
    route without its token, on an address beyond loopback, unless anonymous access was asked
    for (as Redis's protected mode refuses outside clients when no password is set). ``None``
    when it may."""
    if allow_anonymous or is_loopback(host):
        return None
    # Admin routes have no anonymous door: only a tenants file's admin token opens them.
    missing = sorted({r.auth for r in routes if r.auth in KINDS and not tokens.get(r.auth)})
    if not missing:
        return None
    names = " and ".join(f"{variable(k)} (or {variable(k)}_FILE)" for k in missing)
    return (
        f"PUBSUB_HTTP_HOST={host} serves beyond this machine, and {names} is not set: anyone "
        f"who reaches it could {' and '.join(missing)} events. Set the token, listen on "
        "127.0.0.1, or set PUBSUB_ALLOW_ANONYMOUS=true to serve without one"
    )


# --- the compose stack's first start ------------------------------------------------------------


def init(directory: Path, environ: Mapping[str, str], *, new: bool = False) -> dict[str, str]:
    """One token per kind in ``directory``: the environment's when it gives one, the kept one,
    else a new one (``new`` replaces the kept ones). Returns the tokens generated now."""
    directory.mkdir(parents=True, exist_ok=True)
    generated: dict[str, str] = {}
    for kind in KINDS:
        path = directory / kind
        given = from_env(kind, environ)
        if given:
            token = given
        elif path.exists() and not new:
            continue
        else:
            token = generated[kind] = secrets.token_urlsafe(_BYTES)
        _write(path, token)
    return generated


def _write(path: Path, token: str) -> None:
    # Written aside and renamed: a service starting meanwhile reads the old token or the new
    # one, never half of one. Readable by this user only.
    part = path.with_name(f".{path.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    part.replace(path)


def show(directory: Path) -> dict[str, str]:
    return {k: read_file(directory / k, variable=str(directory / k)) for k in KINDS}


def _print(tokens: Mapping[str, str]) -> None:
    for kind, token in tokens.items():
        print(f"    {variable(kind)}={token}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pubsub.tokens",
        description="Keep the bearer tokens of a deployment in a directory (the compose "
        "stack's tokens volume): take them from PUBSUB_PUBLISH_TOKEN / PUBSUB_READ_TOKEN (or "
        "their _FILE variables), keep the ones there, or generate them.",
    )
    parser.add_argument("action", choices=["init", "show"], help="init: at start; show: print")
    parser.add_argument("--dir", type=Path, default=DIRECTORY, help=f"default {DIRECTORY}")
    parser.add_argument("--new", action="store_true", help="init: replace the kept tokens")
    args = parser.parse_args(argv)
    try:
        if args.action == "show":
            # As shell assignments, for ``eval "$(... show)"`` (the README's tour) or .env.
            for kind, token in show(args.dir).items():
                print(f"{variable(kind)}={shlex.quote(token)}")
            return
        generated = init(args.dir, os.environ, new=args.new)
    except (OSError, TokenFileError) as exc:
        sys.stderr.write(f"tokens: {exc}\n")
        raise SystemExit(2) from None
    if generated:
        print("Generated bearer tokens; they are printed this once and kept in the volume")
        print(f"({args.dir}). Send them as 'Authorization: Bearer <token>':")
        _print(generated)
        print("Print them again: docker compose run --rm tokens python -m pubsub.tokens show")
    kept = [variable(k) for k in KINDS if k not in generated]
    if kept:
        print(f"Tokens in place (from the environment or kept): {', '.join(kept)}")


if __name__ == "__main__":
    main()
