"""``python -m consumer``: one competing consumer, with ``/metrics`` and health endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from consumer.merge import Merger
from consumer.retention import Sweeper
from consumer.worker import Worker
from pubsub import dbschema, health, http, service
from pubsub.settings import Settings

log = logging.getLogger("pubsub.consumer")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await dbschema.prepare(settings, stop=stop)
    worker = Worker(settings)
    await worker.start(stop)

    async def ready() -> Mapping[str, bool]:
        return worker.connected

    app = http.new_app()
    health.add_health(app, ready, settings)
    host, port = settings.http_host, settings.consumer_port
    # The health endpoints answer until the worker has stored what it held.
    tasks = []
    if settings.retention_seconds is not None or settings.tenants_file:
        tasks.append(asyncio.create_task(Sweeper(settings).run(stop)))
    if settings.merge_interval > 0:
        tasks.append(asyncio.create_task(Merger(settings).run(stop)))
    async with http.serving(app, host, port, what="consumer (metrics, health)"):
        try:
            await worker.run(stop)
        finally:
            log.info("consumer stopping")
            # Each batch of a sweep, and each merge, is a transaction of its own: cancelling
            # one rolls back at most that, which the next round does again.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await worker.close()


def cli(argv: Sequence[str] | None = None) -> None:
    service.command(main, name="consumer", doc=__doc__, argv=argv)


if __name__ == "__main__":
    cli()
