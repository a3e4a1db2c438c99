"""Schemathesis against each service's own OpenAPI document: no input makes a server error,
and every answer matches what the document promises.

Driven through hypothesis directly: schemathesis' pytest plugin does not run on pytest 9. One
check is left out: "schema-valid data is accepted". The validator refuses what JSON Schema
cannot say (a NUL character anywhere in a payload, numbers overflowing a double), with 422.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import given
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from stack.supervisor import Supervisor
from tests.support import fuzzing

FUZZ = fuzzing(50)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_: Any, value: Any) -> bytes:
    """A body the document declares as a string (the bulk API's lines), sent as it is."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else orjson.dumps(value)


@pytest.mark.parametrize("service", ["ingest", "readapi"])
def test_api_fuzz(stack: Supervisor, service: str) -> None:
    schema = schemathesis.openapi.from_url(stack.url(service) + "/openapi.json")
    operations = [
        op
        for r in schema.get_all_operations()
        if isinstance(r, Ok)
        # A stream that is accepted never ends: tests/test_stream.py covers its refusals.
        and (op := r.ok()).path != "/events/stream"
    ]
    assert len(operations) >= 4
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        fuzz()
