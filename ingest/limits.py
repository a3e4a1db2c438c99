"""Each tenant's ingest rates: events and bytes per second, by token buckets (see
:mod:`pubsub.tenants` for where the limits are declared).

A bucket holds up to ``rate * burst_seconds`` and refills at ``rate``. A request is let in
while its tenant's buckets are not in debt, and takes what it carries, which may put them in
debt: a batch larger than the burst passes once, and the tenant then waits until it is repaid.
So a tenant's average rate is bounded, and no batch is too large to ever pass. A request of a
tenant in debt is answered ``429`` with ``Retry-After`` (the seconds until the debt is repaid)
twice: before its body is read, so that a flood costs ingest little, and once its events are
counted, before anything is published, so that nothing answered ``429`` was taken.

The buckets live in each ingest process: with N ingest processes behind one gateway, a
tenant's limit is N times what the file says, as with Loki's local rate strategy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pubsub.http import Refusal
from pubsub.tenants import Access


@dataclass
class _Bucket:
    rate: float
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until the bucket is out of debt (0: it is not)."""
        return 0.0 if self.level > 0 else -self.level / self.rate + 1e-3


class Rates:
    """The buckets of every tenant that sent something, in one ingest process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def admit(self, access: Access) -> None:
        """Refuse (429) a request of a tenant in debt, before its body is read."""
        self._settle(access, events=0, size=0)

    def take(self, access: Access, *, events: int, size: int) -> None:
        """Refuse (429) the request if its tenant is in debt; else take ``events`` and
        ``size`` bytes from its buckets."""
        self._settle(access, events=events, size=size)

    def _settle(self, access: Access, *, events: int, size: int) -> None:
        limits = access.limits
        tenant = access.tenant or ""
        now = self._clock()
        taken: list[tuple[_Bucket, int]] = []
        for kind, rate, amount, unit in (
            ("events", limits.events_per_second, events, "events"),
            ("bytes", limits.bytes_per_second, size, "bytes"),
        ):
            if rate is None:
                continue
            bucket = self._bucket(tenant, kind, rate, limits.burst_seconds, now)
            wait = bucket.wait()
            if wait > 0:
                raise Refusal(
                    429,
                    f"tenant {tenant!r} is over its rate of {rate:g} {unit}/s (burst "
                    f"{limits.burst_seconds:g} s); retry after {math.ceil(wait)} s",
                    headers=(("Retry-After", str(math.ceil(wait))),),
                )
            taken.append((bucket, amount))
        # Only once every bucket let the request in: a refused one takes nothing.
        for bucket, amount in taken:
            bucket.level -= amount

    def _bucket(self, tenant: str, kind: str, rate: float, burst: float, now: float) -> _Bucket:
        capacity = rate * burst
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            bucket = self._buckets[(tenant, kind)] = _Bucket(rate, capacity, capacity, now)
        elif bucket.rate != rate or bucket.capacity != capacity:
            # The tenants file changed its limits: the new ones from now on.
            bucket.refill(now)
            bucket.rate, bucket.capacity = rate, capacity
            bucket.level = min(bucket.level, capacity)
        bucket.refill(now)
        return bucket
