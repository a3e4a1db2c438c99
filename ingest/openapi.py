"""The OpenAPI document of the ingest service: ``POST /publish`` and the health endpoints."""

from __future__ import annotations

from typing import Any

from pubsub import openapi
from pubsub.openapi import ErrorReply


def document() -> dict[str, Any]:
    return openapi.document(
        "pubsub ingest",
        {"/publish": openapi.publish_path(), **openapi.HEALTH},
        openapi.schemas(*openapi.PUBLISH_SCHEMAS, ErrorReply),
    )
