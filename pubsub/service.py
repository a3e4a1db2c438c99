"""Process entry point shared by the services: logging, event loop, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pubsub import logs
from pubsub.errors import Unusable
from pubsub.settings import Settings

log = logging.getLogger("pubsub.service")


T = TypeVar("T")


async def retry(
    attempt: Callable[[], Awaitable[T]], *, what: str, stop: asyncio.Event, cap: float = 5.0
) -> T:
    """``attempt()`` until it succeeds, with capped backoff, so that a service can start before
    RabbitMQ or PostgreSQL does. Exits quietly if ``stop`` is set meanwhile."""
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Unusable:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, reset, handshake cut, bad login...
            # ...all mean "not yet" at start-up; the log line says which, every attempt.
            log.warning("%s unreachable (%r); retrying in %.1fs", what, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise SystemExit(0)
        delay = min(delay * 2, cap)


def run(main: Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(settings, stop)`` until it returns; SIGTERM and SIGINT set ``stop``.

    A server the service must not use (:class:`Unusable`) ends it with one log line and exit
    code 3, not a traceback."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None
    service = sys.argv[0].rsplit("/", 2)[-2] if "/" in sys.argv[0] else "pubsub"
    logs.setup(service=service, level=settings.log_level, fmt=settings.log_format)

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
    try:
        runner(_main())
    except Unusable as exc:
        log.critical("refusing to run: %s", exc)
        raise SystemExit(3) from None
