"""Process entry point shared by the services: logging, event loop, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pubsub import logs
from pubsub.settings import Settings

log = logging.getLogger("pubsub.service")


def run(main: Callable[[Settings, asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(settings, stop)`` until it returns; SIGTERM and SIGINT set ``stop``."""
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
        asyncio.run(_main())
    else:
        uvloop.run(_main())
