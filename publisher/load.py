"""Generate a load of events with a known share of duplicates, send it, and check the result."""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson


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
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    seed: int = 0
    retries: int = 20
    settle_timeout: float = 120.0
    progress: bool = False


@dataclass
class Report:
    sent: int = 0
    requests: int = 0
    retried_requests: int = 0
    failed_events: int = 0
    latencies: list[float] = field(default_factory=list)
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


def make_events(cfg: LoadConfig) -> tuple[list[dict[str, Any]], int]:
    """The events to send and how many of them are unique."""
    rng = random.Random(cfg.seed)
    unique = max(1, round(cfg.events * (1 - cfg.duplicates))) if cfg.events else 0
    ids = [f"{cfg.run_id}-{i}" for i in range(unique)]
    ids += rng.choices(ids, k=cfg.events - unique) if ids else []
    rng.shuffle(ids)
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "topic": cfg.topic,
            "event_id": event_id,
            "timestamp": now,
            "source": "publisher",
            "payload": {"msg": f"Event {n}", "run": cfg.run_id},
        }
        for n, event_id in enumerate(ids)
    ]
    return events, unique


async def fetch_stats(session: aiohttp.ClientSession, read_url: str) -> dict[str, Any]:
    async with session.get(f"{read_url}/stats") as resp:
        resp.raise_for_status()
        stats: dict[str, Any] = await resp.json()
        return stats


def _chunks(events: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


async def run_load(cfg: LoadConfig) -> Report:
    events, unique = make_events(cfg)
    report = Report(
        expected={
            "received": len(events),
            "unique_processed": unique,
            "duplicate_dropped": len(events) - unique,
        }
    )
    connector = aiohttp.TCPConnector(limit=cfg.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        before = await fetch_stats(session, cfg.read_url)
        if cfg.mode == "single":
            bodies = [orjson.dumps(e) for e in events]
        else:
            bodies = [orjson.dumps(list(c)) for c in _chunks(events, cfg.batch_size)]
        per_body = 1 if cfg.mode == "single" else cfg.batch_size
        queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        for i, body in enumerate(bodies):
            queue.put_nowait((body, min(per_body, len(events) - i * per_body)))
        progress = _Progress(len(events), enabled=cfg.progress)
        started = time.perf_counter()

        async def sender() -> None:
            while not queue.empty():
                body, count = queue.get_nowait()
                if await _send(session, cfg, body, report):
                    report.sent += count
                else:
                    report.failed_events += count
                progress.update(report.sent + report.failed_events)

        await asyncio.gather(*(sender() for _ in range(max(1, cfg.concurrency))))
        report.send_seconds = time.perf_counter() - started
        progress.done()
        deadline = time.monotonic() + cfg.settle_timeout
        target = before["received"] + report.sent
        while True:
            after = await fetch_stats(session, cfg.read_url)
            settled = after["received"] >= target and not after.get("queued_messages")
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        report.settle_seconds = time.perf_counter() - started
        report.got = {k: int(after[k]) - int(before[k]) for k in report.expected}
    return report


async def _send(
    session: aiohttp.ClientSession, cfg: LoadConfig, body: bytes, report: Report
) -> bool:
    delay = 0.1
    for attempt in range(cfg.retries + 1):
        if attempt:
            report.retried_requests += 1
        t0 = time.perf_counter()
        try:
            async with session.post(
                f"{cfg.ingest_url}/publish",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            status, retry_after = 0, None
        report.requests += 1
        if 200 <= status < 300:
            report.latencies.append(time.perf_counter() - t0)
            return True
        if status and status != 503 and status < 500:
            return False  # the request itself is wrong: resending cannot help
        wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
        await asyncio.sleep(min(wait, 5.0) * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)
    return False


class _Progress:
    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.enabled, self.last = total, enabled, 0.0

    def update(self, n: int) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or n == self.total):
            self.last = now
            width = 30
            filled = width * n // max(1, self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {n}/{self.total}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
