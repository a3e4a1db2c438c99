"""``python -m ingest``: the HTTP ingest service."""

from __future__ import annotations

import asyncio
import logging

from ingest.app import make_app
from ingest.broker import BrokerClient
from pubsub import service
from pubsub.http import serve
from pubsub.settings import Settings

log = logging.getLogger("pubsub.ingest")


async def main(settings: Settings, stop: asyncio.Event) -> None:
    broker = BrokerClient(settings)
    await broker.start(stop)
    app = make_app(settings, broker)
    runner, port = await serve(app, settings.http_host, settings.ingest_port, reuse_port=True)
    log.info("ingest listening on http://%s:%d", settings.http_host, port)
    await stop.wait()
    log.info("ingest stopping: refusing new requests, finishing confirms in flight")
    # Closes the listener, then waits for in-flight handlers (each bounded by publish_timeout).
    await runner.shutdown()
    await runner.cleanup()
    await broker.close()


if __name__ == "__main__":
    service.run(main, name="ingest")
