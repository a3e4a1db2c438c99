"""The ingest HTTP service: every route a :class:`~ingest.receiver.Receiver` of one protocol
(body -> validate -> broker, confirmed -> answer)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ingest import deadletters, elastic, inflate, loki, native, otlp
from ingest.broker import BrokerClient
from ingest.budget import Budget
from ingest.intake import BROKER, BUDGET, INFLATING, RATES, SETTINGS
from ingest.limits import Rates
from pubsub import access, api, health, http, openapi, routes
from pubsub.settings import Settings

TITLE = "pubsub ingest"


def make_app(settings: Settings, broker: BrokerClient) -> web.Application:
    # aiohttp itself refuses chunked bodies past client_max_size with 413; bodies arrive as
    # sent, and ingest.receiver inflates them off the event loop.
    app = http.new_app(max_body_bytes=settings.max_body_bytes, raw_bodies=True)
    access.guard(
        app,
        api.INGEST,
        access.tenancy(settings),
        reload_interval=settings.tenants_reload_interval,
    )
    app[SETTINGS] = settings
    app[BROKER] = broker
    app[BUDGET] = Budget(
        settings.ingest_memory_budget,
        largest=settings.max_body_bytes,
        # One tenant's share is bounded only where there are tenants to share with.
        tenant_share=settings.tenant_memory_share if settings.tenants_file else 1.0,
    )
    app[INFLATING] = inflate.gate()
    app[RATES] = Rates()

    async def ready() -> Mapping[str, bool]:
        return {"broker": broker.connected}

    # GET / also answers the probe of Elasticsearch clients (ingest.elastic.PROBE).
    http.add_index(app, TITLE, health.endpoints(api.INGEST), extra=elastic.PROBE)
    bulk = elastic.Bulk().handler()
    handlers = {
        api.PUBLISH: native.Publish().handler(),
        api.OTLP_LOGS: otlp.Export().handler(),
        api.LOKI_PUSH: loki.Push().handler(),
        api.BULK: bulk,
        api.INDEX_BULK: bulk,
        api.PUT_BULK: bulk,
        api.PUT_INDEX_BULK: bulk,
        api.DEAD_LETTERS: deadletters.list_dead,
        api.REPLAY_DEAD_LETTERS: deadletters.replay,
    }
    routes.mount(app, api.INGEST, handlers, settings)
    health.add_health(app, ready, settings)
    openapi.add_docs(app, openapi.document(TITLE, [*api.INGEST, *api.HEALTH], settings))
    return app
