"""The system seen from outside, as the publisher, the benchmark and the tests see it:
``/stats``, one metric summed over processes, and waiting until everything sent is stored."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp

from pubsub import tokens


class NotStored(TimeoutError):
    """The events were not all stored by the deadline; ``last`` is the last ``/stats`` seen."""

    def __init__(self, message: str, last: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.last = last


def token_from_env(parser: argparse.ArgumentParser, kind: str) -> str:
    """The client's token of ``kind`` (``PUBSUB_<KIND>_TOKEN`` or its ``_FILE``); a bad file
    ends the command line with a usage error naming it."""
    try:
        return tokens.from_env(kind)
    except tokens.TokenFileError as exc:
        parser.error(str(exc))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def fetch_stats(
    session: aiohttp.ClientSession, read_url: str, token: str = ""
) -> dict[str, Any]:
    """``GET /stats``; raises unless it answers 200."""
    async with session.get(f"{read_url}/stats", headers=auth(token)) as resp:
        resp.raise_for_status()
        stats: dict[str, Any] = await resp.json()
        return stats


async def stats_if_up(
    session: aiohttp.ClientSession, read_url: str, token: str = ""
) -> dict[str, Any] | None:
    """``/stats``, or None while the read API cannot answer (restarting, database down)."""
    try:
        return await fetch_stats(session, read_url, token)
    except (aiohttp.ClientError, TimeoutError):
        return None


async def metric(session: aiohttp.ClientSession, urls: Iterable[str], name: str) -> float:
    """The sum of sample ``name`` over the ``/metrics`` of the processes at ``urls`` (base
    URLs); a process that does not answer counts 0."""
    total = 0.0
    prefix = name + " "
    for url in urls:
        try:
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            continue
        for line in text.splitlines():
            if line.startswith(prefix):
                total += float(line.split()[1])
    return total


async def wait_stored(
    session: aiohttp.ClientSession,
    read_url: str,
    target: int | Callable[[], Awaitable[int]],
    *,
    timeout: float,
    token: str = "",
) -> dict[str, Any]:
    """Poll ``/stats`` until ``received`` reaches ``target`` and no message waits in the
    queue; return those stats, or raise :class:`NotStored` after ``timeout`` seconds.

    ``target`` may be a coroutine function, asked again at each poll (a count that still
    grows, such as events a load generator gave up on and ingest accepted later). A read API
    that cannot answer for a moment counts as "not yet". Polling is fine-grained at first
    (short waits) and coarser later (long drains): it costs the machine too."""
    started = time.monotonic()
    last: dict[str, Any] | None = None
    while True:
        goal = target if isinstance(target, int) else await target()
        stats = await stats_if_up(session, read_url, token)
        if stats is not None:
            last = stats
            if stats["received"] >= goal and not stats.get("queued_messages"):
                return stats
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise NotStored(
                f"received >= {goal} with an empty queue not reached within {timeout}s;"
                f" last /stats: {last!r}",
                last,
            )
        await asyncio.sleep(min(0.05, 0.005 + elapsed / 20))
