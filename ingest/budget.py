"""A memory budget for the request bodies one ingest process holds at once.

A request costs several times its body while it is validated and encoded (the body, the
parsed events, the encoded message), and it holds its encoded events until the broker
confirmed them. Without a bound, a burst of large batches takes the process past any container
memory limit. Each request reserves its declared length before a byte is read, and grows its
reservation as its body arrives, counted after any ``Content-Encoding`` is undone: a gzip body
of 80 KB that inflates to 15 MB holds 15 MB. Past the budget it is refused with a ``503``.

A second after a burst, when nothing is reserved any more, the freed memory goes back to the
system (:mod:`pubsub.memory`).
"""

from __future__ import annotations

import asyncio
import logging

from ingest import metrics
from pubsub import memory

log = logging.getLogger("pubsub.ingest.budget")

# Trimming costs a few milliseconds: worth it after a burst, not after each request.
_TRIM_AFTER_BYTES = 16 * 1024 * 1024  # released since the last trim
_TRIM_WHEN_IDLE_FOR = 1.0  # seconds with nothing reserved


class OverBudget(Exception):
    """Reserving would exceed the budget."""


class TenantOverBudget(OverBudget):
    """Reserving would exceed the share of the budget one tenant may hold."""


class Held:
    """What one request holds of the budget; it grows as its body arrives. Used as a context
    manager, it gives everything back at the end of the block (a class, not a generator: it
    is entered once per request)."""

    __slots__ = ("_budget", "large", "size", "tenant")

    def __init__(self, budget: Budget, tenant: str = "") -> None:
        self._budget = budget
        self.size = 0
        self.large = False  # shares the large requests' part whatever its size
        self.tenant = tenant

    def count_as_large(self) -> None:
        """Share the large requests' part from now on: a compressed body, whose inflated size
        is not known until it is inflated, so that many of them inflating at once do not
        take the room kept for small requests."""
        if not self.large:
            size = self.size
            self._budget.take(self, 0)
            self.large = True
            self._budget.take(self, size)

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all; :class:`OverBudget` if they do not fit."""
        if size > self.size:
            self._budget.take(self, size)

    def shrink_to(self, size: int) -> None:
        """Hold ``size`` bytes in all, fewer than now: what the request let go of."""
        if size < self.size:
            self._budget.take(self, size)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_: object) -> None:
        self._budget.release(self)


class Budget:
    """Bytes held by the requests in flight, at most ``limit``.

    A fair share: requests past ``limit // 32`` bytes ("large") hold together at most
    ``limit`` less a share kept for the small ones (a quarter of the budget, or what is left
    after the largest body when that is less). However many huge bodies arrive at once, small
    requests still find room. With ``tenant_share``, the requests of one tenant hold at most
    that part of ``limit`` together, so that one tenant's flood leaves room for the others.
    """

    def __init__(
        self, limit: int, *, largest: int | None = None, tenant_share: float = 1.0
    ) -> None:
        self.limit = limit
        self.tenant_limit = max(int(limit * tenant_share), 1)
        self.by_tenant: dict[str, int] = {}
        self.small = max(limit // 32, 1)
        largest = limit if largest is None else largest
        self.large_limit = limit - min(limit - largest, limit // 4)
        self.used = 0
        self.used_large = 0
        self._released_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None
        # Read when scraped, not set on every change: a request changes it three times.
        metrics.BYTES_IN_FLIGHT.set_function(lambda: self.used)

    def reserve(self, size: int = 0, *, tenant: str = "") -> Held:
        """``size`` bytes held for ``tenant`` until the ``with`` block of the :class:`Held`
        ends, and more as :meth:`Held.grow_to` asks; :class:`OverBudget` when they do not fit
        next to what other requests hold."""
        held = Held(self, tenant)
        held.grow_to(size)
        return held

    def take(self, held: Held, size: int) -> None:
        """Grow ``held`` to ``size`` bytes, or raise :class:`OverBudget`."""
        added = size - held.size
        large_before = held.size if held.size > self.small or held.large else 0
        large_after = size if size > self.small or held.large else 0
        if self.used + added > self.limit or (
            large_after and self.used_large - large_before + large_after > self.large_limit
        ):
            metrics.OVER_BUDGET.inc()
            raise OverBudget(
                f"{self.used} of {self.limit} bytes are held by requests in flight"
                + (f", {self.used_large} by large ones" if large_after else "")
            )
        tenant = held.tenant
        own = self.by_tenant.get(tenant, 0)
        if added > 0 and own + added > self.tenant_limit:
            metrics.OVER_BUDGET.inc()
            raise TenantOverBudget(
                f"tenant {tenant!r} holds {own} of the {self.tenant_limit} bytes of ingest's "
                "memory one tenant may hold (PUBSUB_TENANT_MEMORY_SHARE)"
            )
        if own + added:
            self.by_tenant[tenant] = own + added
        else:
            self.by_tenant.pop(tenant, None)
        self.used += added
        self.used_large += large_after - large_before
        held.size = size

    def release(self, held: Held) -> None:
        """Give back everything ``held`` holds."""
        size = held.size
        own = self.by_tenant.get(held.tenant, 0) - size
        if own:
            self.by_tenant[held.tenant] = own
        else:
            self.by_tenant.pop(held.tenant, None)
        self.used -= size
        if size > self.small or held.large:
            self.used_large -= size
        held.size = 0
        self._released_since_trim += size
        if not self.used and self._released_since_trim >= _TRIM_AFTER_BYTES:
            self._trim_when_idle()

    def _trim_when_idle(self) -> None:
        if not memory.CAN_GIVE_BACK or self._trim is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used outside a service (tests, tools): nothing to schedule on
            return
        self._trim = loop.call_later(_TRIM_WHEN_IDLE_FOR, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim = None
        if self.used:  # busy again: the next idle moment trims
            return
        self._released_since_trim = 0
        memory.give_back()
