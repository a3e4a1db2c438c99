"""A memory budget for the request bodies one ingest process holds at once.

A request costs several times its body while it is validated and encoded (the body, the
parsed events, the encoded message), and it holds its encoded events until the broker
confirmed them. Without a bound, a burst of large batches takes the process past any container
memory limit. Each request reserves its declared length (or the largest body allowed, when it
declares none) before a byte is read; past the budget it is refused at once with a ``503``.

A second after a burst, when nothing is reserved any more, the freed memory goes back to the
system (:mod:`pubsub.memory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from ingest import metrics
from pubsub import memory

log = logging.getLogger("pubsub.ingest.budget")

# Trimming costs a few milliseconds: worth it after a burst, not after each request.
_TRIM_AFTER_BYTES = 16 * 1024 * 1024  # released since the last trim
_TRIM_WHEN_IDLE_FOR = 1.0  # seconds with nothing reserved


class OverBudget(Exception):
    """Reserving would exceed the budget."""


class Budget:
    """Bytes reserved by the requests in flight, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._released_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes for the ``with`` block; :class:`OverBudget` if they do not fit
        next to what other requests hold."""
        if self.used + size > self.limit:
            metrics.OVER_BUDGET.inc()
            raise OverBudget(f"{self.used} of {self.limit} bytes are held by requests in flight")
        self.used += size
        metrics.BYTES_IN_FLIGHT.set(self.used)
        try:
            yield
        finally:
            self.used -= size
            metrics.BYTES_IN_FLIGHT.set(self.used)
            self._released_since_trim += size
            if not self.used and self._released_since_trim >= _TRIM_AFTER_BYTES:
                self._trim_when_idle()

    def _trim_when_idle(self) -> None:
        if not memory.CAN_GIVE_BACK or self._trim is not None:
            return
        loop = asyncio.get_running_loop()
        self._trim = loop.call_later(_TRIM_WHEN_IDLE_FOR, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim = None
        if self.used:  # busy again: the next idle moment trims
            return
        self._released_since_trim = 0
        memory.give_back()
