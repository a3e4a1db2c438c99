"""``python -m readapi``: the read API service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pubsub import api, dbschema, http, service
from pubsub.settings import Settings
from readapi.app import Sources, make_app

log = logging.getLogger("pubsub.readapi")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await dbschema.prepare(settings, stop=stop)
    sources = Sources(settings)
    await sources.start(stop)
    app = make_app(sources, stop)
    async with http.serving(app, settings.http_host, settings.read_port, what="read API"):
        await sources.queues.sample(stop)
        log.info("read API stopping")
    await sources.close()


def cli(argv: Sequence[str] | None = None) -> None:
    service.command(main, name="readapi", doc=__doc__, serves=api.READ, argv=argv)


if __name__ == "__main__":
    cli()
