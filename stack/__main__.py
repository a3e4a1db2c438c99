"""``python -m stack``: run the whole system on this machine (RabbitMQ and PostgreSQL reachable).

Creates the schema and the queues, starts the read API, ingest and ``--consumers`` consumers as
child processes, prints where each endpoint listens, restarts a child that dies, and on Ctrl-C
or SIGTERM stops them all gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import aio_pika
import aiohttp

from pubsub import dbschema, service, topology
from pubsub.settings import Settings

log = logging.getLogger("pubsub.stack")


@dataclass
class Child:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, env={**os.environ, **self.env}
        )

    async def stop(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, grace)
            proc.kill()
            await proc.wait()


async def _wait_healthy(session: aiohttp.ClientSession, child: Child, host: str) -> None:
    deadline = time.monotonic() + 30
    url = f"http://{host}:{child.port}/healthz"
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with code {child.proc.returncode}")
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer {url} within 30s")


async def main(settings: Settings, stop: asyncio.Event, consumers: int) -> None:
    try:
        await dbschema.ensure(settings)
        async with await aio_pika.connect(settings.amqp_url) as conn:
            await topology.declare(await conn.channel(), settings)
    except Exception as exc:  # noqa: BLE001 - say what is unreachable, not a traceback
        log.error("cannot prepare RabbitMQ/PostgreSQL: %s", exc)
        log.error("check PUBSUB_AMQP_URL and PUBSUB_DATABASE_URL (see README)")
        raise SystemExit(1) from None
    children = [
        Child("read API", "readapi", settings.read_port),
        Child("ingest", "ingest", settings.ingest_port),
    ]
    for i in range(consumers):
        port = settings.consumer_port + i if settings.consumer_port else 0
        children.append(
            Child(f"consumer {i + 1}", "consumer", port, {"PUBSUB_CONSUMER_PORT": str(port)})
        )
    for child in children:
        await child.start()
    host = settings.http_host
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        try:
            await asyncio.gather(*(_wait_healthy(session, c, host) for c in children if c.port))
        except RuntimeError as exc:
            log.error("%s", exc)
            await asyncio.gather(*(c.stop(5) for c in children))
            raise SystemExit(1) from None
    print(_banner(settings, children), flush=True)

    async def supervise(child: Child) -> None:
        while not stop.is_set():
            assert child.proc is not None
            waiter = asyncio.ensure_future(child.proc.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                waiter.cancel()
                return
            child.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
            log.error(
                "%s exited with code %s; restarting in %.1fs",
                child.name,
                child.proc.returncode,
                delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                await child.start()

    await asyncio.gather(*(supervise(c) for c in children))
    log.info("stopping: ingest first, then consumers (they finish their batch), then read API")
    await children[1].stop(15)
    await asyncio.gather(*(c.stop(15) for c in children[2:]))
    await children[0].stop(15)


def _banner(settings: Settings, children: list[Child]) -> str:
    host = settings.http_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    lines = ["", "pubsub-aggregator is running:"]
    lines.append(f"  POST http://{shown}:{settings.ingest_port}/publish      (ingest)")
    lines.append(f"  GET  http://{shown}:{settings.read_port}/events        (read API)")
    lines.append(f"  GET  http://{shown}:{settings.read_port}/stats")
    lines.append(
        f"  docs http://{shown}:{settings.ingest_port}/docs  http://{shown}:{settings.read_port}/docs"
    )
    for child in children:
        if child.port:
            lines.append(
                f"  {child.name:<11} http://{shown}:{child.port}/metrics  /healthz  /readyz"
            )
    lines.append("Send the demo load with: python -m publisher   (Ctrl-C here stops everything)")
    return "\n".join(lines)


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes to run")
    args = parser.parse_args()
    service.run(lambda settings, stop: main(settings, stop, args.consumers))


if __name__ == "__main__":
    run()
