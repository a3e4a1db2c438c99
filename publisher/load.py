"""Generate a load of events with a known share of duplicates, send it, and check the result."""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from publisher.watch import NotStored, auth, fetch_stats, wait_stored
from pubsub.backoff import Backoff


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    ingest_url: str = "http://127.0.0.1:8080"
    read_url: str = "http://127.0.0.1:8081"
    events: int = 5000
    duplicates: float = 0.2
    mode: str = "batch"  # "batch": arrays of batch_size events; "single": one event a request
    batch_size: int = 5000
    concurrency: int = 16
    topic: str = "stress.logs"
    payload_bytes: int = 0  # pad each payload with this many characters (large-body loads)
    duration: float | None = None  # seconds of sustained load instead of a count of events
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    seed: int = 0
    retries: int = 20
    backoff: Backoff = field(default_factory=Backoff)  # between retries; Retry-After wins
    publish_token: str = ""
    read_token: str = ""
    settle_timeout: float = 120.0
    progress: bool = False


@dataclass
class Report:
    sent: int = 0
    requests: int = 0
    retried_requests: int = 0
    failed_events: int = 0
    latencies: list[float] = field(default_factory=list)
    answers: collections.Counter[int] = field(default_factory=collections.Counter)  # 0: none
    slowest_refusal: float = 0.0  # seconds until a 503 (or no answer) came back
    send_seconds: float = 0.0
    settle_seconds: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)
    got: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed_events == 0 and self.expected == self.got

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class EventSource:
    """Events of one run, made on demand: event ``k`` repeats an earlier id exactly when
    ``floor((k + 1) * duplicates)`` steps up, so ``duplicates`` is met exactly, not on average
    (at 20% every fifth event is a duplicate, as in the seeds)."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.made = 0
        self.unique = 0
        self.now = datetime.now(UTC).isoformat()
        self.pad = "x" * cfg.payload_bytes

    def next(self) -> dict[str, Any]:
        k, d = self.made, self.cfg.duplicates
        self.made += 1
        if self.unique and int((k + 1) * d) != int(k * d):
            n = self.rng.randrange(self.unique)
        else:
            n = self.unique
            self.unique += 1
        return {
            "topic": self.cfg.topic,
            "event_id": f"{self.cfg.run_id}-{n}",
            "timestamp": self.now,
            "source": "publisher",
            "payload": {"msg": f"Event {k}", "run": self.cfg.run_id}
            | ({"pad": self.pad} if self.pad else {}),
        }

    def body(self, limit: int | None) -> tuple[bytes, int] | None:
        """The next request body and its event count; None once ``limit`` events were made."""
        size = 1 if self.cfg.mode == "single" else self.cfg.batch_size
        if limit is not None:
            size = min(size, limit - self.made)
        if size <= 0:
            return None
        if self.cfg.mode == "single":
            return orjson.dumps(self.next()), 1
        return orjson.dumps([self.next() for _ in range(size)]), size


async def send_load(
    session: aiohttp.ClientSession,
    cfg: LoadConfig,
    source: EventSource,
    report: Report,
    *,
    until: Callable[[], bool] | None = None,
) -> None:
    """Send the configured events (for ``cfg.duration`` seconds, or until ``until()`` holds);
    record into ``report``."""
    limit = None if cfg.duration or until else cfg.events
    progress = _Progress(cfg.events if limit else 0, enabled=cfg.progress)
    started = time.perf_counter()
    stop_at = started + cfg.duration if cfg.duration else None

    async def sender() -> None:
        while stop_at is None or time.perf_counter() < stop_at:
            if until is not None and until():
                return
            item = source.body(limit)
            if item is None:
                return
            body, count = item
            # One key per body, kept across its retries: a retry whose first attempt did
            # reach the broker is then not counted twice.
            key = f"{cfg.run_id}:{source.made}"
            if await send_body(session, cfg, body, report, key):
                report.sent += count
            else:
                report.failed_events += count
            progress.update(report.sent + report.failed_events)

    try:
        await asyncio.gather(*(sender() for _ in range(max(1, cfg.concurrency))))
    finally:
        progress.done()
    report.send_seconds = time.perf_counter() - started
    report.expected = {
        "received": source.made,
        "unique_processed": source.unique,
        "duplicate_dropped": source.made - source.unique,
    }


def new_session(cfg: LoadConfig) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=cfg.concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def run_load(cfg: LoadConfig) -> Report:
    """Send the configured load, wait until the system stored it, compare the counts."""
    report = Report()
    async with new_session(cfg) as session:
        before = await fetch_stats(session, cfg.read_url, cfg.read_token)
        started = time.perf_counter()
        await send_load(session, cfg, EventSource(cfg), report)
        try:
            after = await wait_stored(
                session,
                cfg.read_url,
                before["received"] + report.sent,
                timeout=cfg.settle_timeout,
                token=cfg.read_token,
            )
        except NotStored as exc:  # the report shows the mismatch
            after = exc.last or await fetch_stats(session, cfg.read_url, cfg.read_token)
        report.settle_seconds = time.perf_counter() - started
        report.got = {k: int(after[k]) - int(before[k]) for k in report.expected}
    return report


async def send_body(
    session: aiohttp.ClientSession, cfg: LoadConfig, body: bytes, report: Report, key: str
) -> bool:
    """POST one body, retrying 503s and lost answers (``cfg.retries`` times, with backoff) under
    one idempotency key; record every answer in ``report``. Whether it was accepted."""
    for attempt in range(cfg.retries + 1):
        if attempt:
            report.retried_requests += 1
        t0 = time.perf_counter()
        try:
            async with session.post(
                f"{cfg.ingest_url}/publish",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                    **auth(cfg.publish_token),
                },
            ) as resp:
                await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            status, retry_after = 0, None
        report.requests += 1
        report.answers[status] += 1
        elapsed = time.perf_counter() - t0
        if 200 <= status < 300:
            report.latencies.append(elapsed)
            return True
        report.slowest_refusal = max(report.slowest_refusal, elapsed)
        if status and status != 503 and status < 500:
            return False  # the request itself is wrong: resending cannot help
        hint = float(retry_after) if retry_after and retry_after.isdigit() else None
        await asyncio.sleep(cfg.backoff.delay(attempt, hint=hint))
    return False


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} events/s", style="progress.data.speed")


class _Progress:
    """Events sent so far, with the rate and the time left, on stderr; nothing when not
    enabled (the CLI enables it on a terminal only). ``total`` 0: sending for a duration."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.bar.add_task("events", total=total or None)
        self.bar.start()

    def update(self, n: int) -> None:
        self.bar.update(self.task, completed=n)

    def done(self) -> None:
        self.bar.stop()
