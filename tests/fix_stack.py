"""The real services for the integration tests: ingest, two consumers and the read API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pubsub.settings import Settings
from stack.processes import Stack


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(settings, tmp_path_factory.mktemp("logs"))
    s.start_all()
    yield s
    s.stop_all()
