"""``python -m stack``: run the whole system on this machine (RabbitMQ and PostgreSQL reachable).

Creates the schema and the queues, starts the read API, ingest and ``--consumers`` consumers as
child processes, prints where each endpoint listens, restarts a child that dies, and on Ctrl-C
or SIGTERM stops them all gracefully: ingest first, then the consumers, then the read API.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Sequence

from pubsub import api, dbschema, failover, service, topology
from pubsub.errors import Unusable
from pubsub.settings import Settings
from stack.supervisor import ChildFailed, Role, Supervisor, role_of

log = logging.getLogger("pubsub.stack")


async def prepare(settings: Settings) -> None:
    """The schema and the queues, before any service starts."""
    await dbschema.ensure(settings)
    async with await failover.connect_once(settings.amqp_urls) as conn:
        await topology.declare(await conn.channel(), settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pubsub-aggregator run", description=__doc__)
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes to run")
    args = parser.parse_args(argv)
    settings = service.setup("stack", serves=api.GATEWAY)
    try:
        asyncio.run(prepare(settings))
    except Unusable as exc:
        log.critical("refusing to run: %s", exc)
        return 3
    except Exception as exc:  # noqa: BLE001 - say what is unreachable, not a traceback
        log.error("cannot prepare RabbitMQ/PostgreSQL: %s", exc)
        log.error("check PUBSUB_AMQP_URL and PUBSUB_DATABASE_URL (see README)")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = Supervisor(settings, consumers=args.consumers, own_group=True)
    code = 0
    try:
        supervisor.start_all()
    except ChildFailed as exc:
        log.error("%s", exc)
        code = 1
    else:
        print(banner(supervisor), flush=True)
        supervisor.watch(stop)
        log.info("stopping: ingest first, then consumers (they finish their batch), then read API")
    try:
        supervisor.stop_all(timeout=15)
    except ChildFailed as exc:
        log.warning("%s", exc)
    return code


def banner(supervisor: Supervisor) -> str:
    settings = supervisor.settings
    host = settings.http_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    ingest, read = supervisor.ports["ingest"], supervisor.ports["readapi"]
    lines = ["", "pubsub-aggregator is running:"]
    lines.append(f"  POST http://{shown}:{ingest}/publish      (ingest)")
    lines.append(f"  GET  http://{shown}:{read}/events        (read API)")
    lines.append(f"  GET  http://{shown}:{read}/stats")
    lines.append(f"  docs http://{shown}:{ingest}/docs  http://{shown}:{read}/docs")
    for name, port in supervisor.ports.items():
        label = "read API" if role_of(name) is Role.READAPI else name
        lines.append(f"  {label:<11} http://{shown}:{port}/metrics  /healthz  /readyz")
    lines.append(
        "Send the demo load with: pubsub-aggregator publish   (Ctrl-C here stops everything)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
