"""``python -m readapi``: the read API service."""

from __future__ import annotations

import asyncio
import logging

from pubsub import dbschema, service
from pubsub.http import serve
from pubsub.settings import Settings
from readapi.app import Backend, make_app

log = logging.getLogger("pubsub.readapi")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await service.retry(lambda: dbschema.ensure(settings), what="PostgreSQL", stop=stop)
    backend = Backend(settings)
    await backend.start(stop)
    runner, port = await serve(make_app(backend), settings.http_host, settings.read_port)
    log.info("read API listening on http://%s:%d", settings.http_host, port)
    await backend.sample_queues(stop)
    log.info("read API stopping")
    await runner.shutdown()
    await runner.cleanup()
    await backend.close()


if __name__ == "__main__":
    service.run(main)
