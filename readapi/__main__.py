"""``python -m readapi``: the read API service."""

from __future__ import annotations

import asyncio
import logging

from pubsub import service
from pubsub.http import serve
from pubsub.settings import Settings
from readapi.app import Sources, make_app

log = logging.getLogger("pubsub.readapi")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await service.prepare_database(settings, stop=stop)
    sources = Sources(settings)
    await sources.start(stop)
    runner, port = await serve(make_app(sources), settings.http_host, settings.read_port)
    log.info("read API listening on http://%s:%d", settings.http_host, port)
    await sources.queues.sample(stop)
    log.info("read API stopping")
    await runner.shutdown()
    await runner.cleanup()
    await sources.close()


if __name__ == "__main__":
    service.run(main, name="readapi")
