"""The real services for the integration tests, as child processes of a :class:`Supervisor`.

``stack`` is the session's system (ingest, two consumers, the read API); ``own_stack`` builds
further ones for tests that need services configured their own way, and stops them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pubsub.settings import Settings
from stack.supervisor import Supervisor, free_port

StackFactory = Callable[..., Supervisor]


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    s = Supervisor(settings, logdir=tmp_path_factory.mktemp("logs"))
    s.start_all()
    yield s
    s.stop_all()


@pytest.fixture
def own_stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackFactory]:
    """``own_stack(consumers=1, **settings_changes)``: a system of its own, on ports of its
    own, started by the test as it needs (``start``, ``start_all``) and stopped at teardown."""
    made: list[Supervisor] = []

    def make(*, consumers: int = 2, **changes: Any) -> Supervisor:
        own = settings.replace(**{"ingest_port": free_port(), "read_port": free_port(), **changes})
        supervisor = Supervisor(
            own, logdir=tmp_path_factory.mktemp("own-logs"), consumers=consumers
        )
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop_all()
