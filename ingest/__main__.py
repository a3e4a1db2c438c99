"""``python -m ingest``: the HTTP ingest service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ingest.app import make_app
from ingest.broker import BrokerClient
from pubsub import api, http, service
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    broker = BrokerClient(settings)
    await broker.start(stop)
    app = make_app(settings, broker)
    host, port = settings.http_host, settings.ingest_port
    async with http.serving(app, host, port, what="ingest", reuse_port=True):
        await stop.wait()
        log.info("ingest stopping: refusing new requests, finishing confirms in flight")
    await broker.close()


def cli(argv: Sequence[str] | None = None) -> None:
    service.command(main, name="ingest", doc=__doc__, serves=api.INGEST, argv=argv)


if __name__ == "__main__":
    cli()
