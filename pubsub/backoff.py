"""How long to wait before trying again: the one retry policy of every loop in the project.

Capped exponential backoff with jitter, as aio-pika's robust connection and arq's
``conn_retries`` do it: each wait doubles up to ``cap``, and the jitter keeps processes that
failed together from retrying in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pubsub.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Backoff:
    first: float = 0.1
    cap: float = 5.0
    jitter: bool = True

    @classmethod
    def of(cls, settings: Settings) -> Backoff:
        """The policy the services use for RabbitMQ and PostgreSQL (``PUBSUB_RETRY_*``)."""
        return cls(first=settings.retry_first_delay, cap=settings.retry_max_delay)

    def delay(self, attempt: int, *, hint: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 0). ``hint``, a
        server's ``Retry-After``, replaces the exponential step (still within the cap)."""
        step = self.first * 2 ** min(attempt, 32) if hint is None else hint
        base = min(step, self.cap)
        return base * (0.5 + random.random()) if self.jitter else base
