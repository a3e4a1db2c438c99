"""Process entry point shared by the services: logging, event loop, signals, waiting for a
server at start-up.

It imports no database driver: ingest never talks to PostgreSQL, and psycopg's objects in its
heap would only lengthen its garbage collections (see :func:`pubsub.dbschema.prepare`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from aio_pika.abc import AbstractRobustConnection

from pubsub import logs, routes, tenants, tokens, topology
from pubsub.backoff import Backoff
from pubsub.errors import Unusable
from pubsub.routes import Route
from pubsub.settings import Settings, env_name, unknown_variables

log = logging.getLogger("pubsub.service")
# The cyclic collector's thresholds in every service (see run): tests that measure what a
# request costs measure it with these.
COLLECTOR_THRESHOLDS = (10_000, 10, 10)


T = TypeVar("T")


async def retry(
    attempt: Callable[[], Awaitable[T]], *, what: str, stop: asyncio.Event, backoff: Backoff
) -> T:
    """``attempt()`` until it succeeds, waiting as ``backoff`` says between attempts, so that a
    service can start before RabbitMQ or PostgreSQL does. Exits quietly if ``stop`` is set."""
    failures = 0
    while True:
        try:
            return await attempt()
        except Unusable:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, reset, handshake cut, bad login...
            # ...all mean "not yet" at start-up; the log line says which, every attempt.
            delay = backoff.delay(failures)
            failures += 1
            log.warning("%s unreachable (%r); retrying in %.1fs", what, exc, delay)
        if await stopped_within(stop, delay):
            raise SystemExit(0)


async def connect_broker(
    settings: Settings, *, name: str, stop: asyncio.Event
) -> AbstractRobustConnection:
    """A robust RabbitMQ connection, waiting for the broker as long as it takes to answer;
    each attempt tries the next node of the list."""
    attempts = itertools.count()
    return await retry(
        lambda: topology.connect(settings, name=name, first=next(attempts)),
        what="RabbitMQ",
        stop=stop,
        backoff=Backoff.of(settings),
    )


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile; whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def setup(name: str, *, serves: Sequence[Route] = ()) -> Settings:
    """Settings from the environment and logging for process ``name``, which ``serves`` these
    routes; exit code 2 with one line on stderr when the configuration is wrong, or would open
    a guarded route to the network without its token."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None
    if settings.tenants_file:
        # Read once here, so that a file that cannot be used stops the start in one line.
        try:
            tenants.Tenancy(
                path=settings.tenants_file,
                publish_token=settings.publish_token,
                read_token=settings.read_token,
                retention=settings.retention,
            )
        except tenants.TenantsError as exc:
            sys.stderr.write(f"configuration error: PUBSUB_TENANTS_FILE={exc}\n")
            raise SystemExit(2) from None
    # With a tenants file every guarded route asks for a token of it: no door is open.
    refusal = (
        None
        if settings.tenants_file
        else tokens.open_doors(
            serves,
            routes.tokens(settings),
            host=settings.http_host,
            allow_anonymous=settings.allow_anonymous,
        )
    )
    if refusal:
        sys.stderr.write(f"configuration error: {name}: {refusal}\n")
        raise SystemExit(2)
    logs.setup(service=name, level=settings.log_level, fmt=settings.log_format)
    if settings.unknown_variables == "warn":  # else from_env refused them already
        for line in unknown_variables(os.environ):
            log.warning("%s; starting anyway (%s=warn)", line, env_name("unknown_variables"))
    # What this process runs with, tokens and passwords masked: the first thing to compare
    # when two processes behave differently.
    log.info("%s starting", name, extra={"settings": settings.redacted()})
    return settings


def command(
    main: Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]],
    *,
    name: str,
    doc: str | None,
    serves: Sequence[Route] = (),
    argv: Sequence[str] | None = None,
) -> None:
    """A service's command line: ``--help`` says what it is; it takes no options of its own,
    the ``PUBSUB_*`` variables configure it (see docs/operations.md)."""
    argparse.ArgumentParser(
        prog=f"pubsub-aggregator {name}",
        description=doc,
        epilog="Configured by PUBSUB_* environment variables: see docs/operations.md.",
    ).parse_args(argv)
    run(main, name=name, serves=serves)


def run(
    main: Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]],
    *,
    name: str,
    serves: Sequence[Route] = (),
) -> None:
    """Run service ``name``: ``main(settings, stop)`` until it returns; SIGTERM and SIGINT set
    ``stop``.

    A server the service must not use (:class:`Unusable`) ends it with one log line and exit
    code 3, not a traceback."""
    settings = setup(name, serves=serves)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(settings, stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at heart
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    # Everything imported so far lives as long as the process: out of the collector's sight,
    # a full collection no longer walks it, which keeps the pauses short under load. Each
    # request in flight holds a few dozen objects: with the default threshold (700) a few
    # dozen concurrent requests set off a young collection every few requests.
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        runner(_main())
    except Unusable as exc:
        log.critical("refusing to run: %s", exc)
        raise SystemExit(3) from None
