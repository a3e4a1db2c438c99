"""``python -m publisher tail``: print stored events as they arrive, like ``tail -f``.

Reads the read API's live stream (``GET /events/stream``). When the connection drops, or the
read API ends the stream (shutting down, or this client fell behind), it reconnects with
``Last-Event-ID`` and goes on exactly where it was: no event missed, none printed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

import aiohttp
import orjson

from publisher.watch import token_from_env
from pubsub.backoff import Backoff


@dataclass(frozen=True, kw_only=True)
class TailConfig:
    read_url: str = "http://127.0.0.1:8081"
    topic: str = ""
    source: str = ""
    since: str = ""
    read_token: str = ""
    count: int = 0  # stop after this many events; 0: never
    json: bool = False


@dataclass
class Message:
    """One SSE event."""

    event: str = "message"
    data: str = ""
    id: str | None = None


async def messages(resp: aiohttp.ClientResponse) -> AsyncIterator[Message]:
    """The SSE events of a response (comments, i.e. heartbeats, skipped)."""
    current, data = Message(), list[str]()
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                current.data = "\n".join(data)
                yield current
            current, data = Message(), list[str]()
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            current.event = value
        elif field == "id":
            current.id = value


def line(data: str, *, as_json: bool) -> str:
    if as_json:
        return data
    e = orjson.loads(data)
    # The payload as stored: cut out of the event's text, not re-serialised (see readapi).
    payload = data[data.index('"payload":') + len('"payload":') : -1]
    return f"{e['timestamp']}  {e['topic']}  {e['event_id']}  {e['source']}  {payload}"


async def tail(cfg: TailConfig, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print events until ``cfg.count`` were printed or the task is cancelled; exit code."""
    params = {k: v for k, v in (("topic", cfg.topic), ("source", cfg.source)) if v}
    headers = {"Accept": "text/event-stream"}
    if cfg.read_token:
        headers["Authorization"] = f"Bearer {cfg.read_token}"
    last: str | None = None
    printed, failures, backoff = 0, 0, Backoff(first=0.5, cap=5.0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            query = dict(params)
            if last:
                headers["Last-Event-ID"] = last
            elif cfg.since:
                query["since"] = cfg.since
            why = ""
            try:
                async with http.get(
                    f"{cfg.read_url}/events/stream", params=query, headers=headers
                ) as resp:
                    if resp.status in (400, 401, 404):
                        print(f"tail: {resp.status}: {await _error(resp)}", file=err)
                        return 2
                    if resp.status != 200:
                        why = f"{resp.status}: {await _error(resp)}"
                    else:
                        failures = 0
                        async for msg in messages(resp):
                            if msg.event != "message":
                                why = _reason(msg.data)
                                continue
                            last = msg.id or last
                            print(line(msg.data, as_json=cfg.json), file=out, flush=True)
                            printed += 1
                            if cfg.count and printed >= cfg.count:
                                return 0
                        why = why or "the stream ended"
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"connection lost ({exc.__class__.__name__})"
            delay = backoff.delay(failures)
            failures += 1
            print(f"tail: {why}; reconnecting in {delay:.1f} s", file=err, flush=True)
            await asyncio.sleep(delay)


async def _error(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    return _reason(text)


def _reason(text: str) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(orjson.loads(text)["error"])
    return text.strip()[:200]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="pubsub-aggregator tail", description=__doc__)
    p.add_argument("--read-url", default="http://127.0.0.1:8081", help="where the read API is")
    p.add_argument("--topic", default="", help="only this topic")
    p.add_argument("--source", default="", help="only this source")
    p.add_argument("--since", default="", help="start at events received since (RFC 3339)")
    p.add_argument("-n", "--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--json", action="store_true", help="print each event as a JSON line")
    a = p.parse_args(argv)
    cfg = TailConfig(
        read_url=a.read_url.rstrip("/"), topic=a.topic, source=a.source, since=a.since,
        read_token=token_from_env(p, "read"), count=a.count, json=a.json,
    )  # fmt: skip

    async def run() -> int:
        task = asyncio.ensure_future(tail(cfg))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return 0

    raise SystemExit(asyncio.run(run()))
