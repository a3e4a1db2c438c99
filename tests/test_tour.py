"""The README's tour, as written, against ``./scripts/run`` (the compose stack runs it in
``tests/containers/test_compose.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pubsub.settings import Settings
from tests import tour
from tests.fix_services import private_settings

ROOT = Path(__file__).resolve().parent.parent
STARTED_WITHIN = 90.0


@pytest.fixture
def scripts_run(amqp_url: str, database_url: str, tmp_path: Path) -> Iterator[Settings]:
    """``./scripts/run`` with a schema, queues and ports of its own, until it printed where
    it listens; stopped (its process group, which this started) afterwards."""
    with private_settings(amqp_url, database_url, prefix="tour") as settings:
        printed = tmp_path / "run.out"
        with printed.open("w") as out:
            run = subprocess.Popen(
                ["./scripts/run"],
                cwd=ROOT,
                env={**os.environ, **settings.to_env()},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + STARTED_WITHIN
            while "pubsub-aggregator is running" not in printed.read_text():
                assert run.poll() is None, f"./scripts/run exited:\n{printed.read_text()}"
                assert time.monotonic() < deadline, f"not started:\n{printed.read_text()}"
                time.sleep(0.2)
            yield settings
        finally:
            os.killpg(run.pid, signal.SIGTERM)
            assert run.wait(timeout=60) == 0, printed.read_text()


def _until(setup: str, command: str, done: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """The JSON of the tour's ``command``, run again until ``done`` holds for it: an event is
    stored a moment after its 202, as the README says."""
    deadline = time.monotonic() + timeout
    while True:
        out = json.loads(tour.run(setup, command, cwd=ROOT, env=os.environ))
        if done(out):
            return out
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {command}: {out}"
        time.sleep(0.1)


def _counts(stats: Any) -> tuple[int, int, int]:
    return stats["received"], stats["unique_processed"], stats["duplicate_dropped"]


def test_the_tour_runs_as_written_against_scripts_run(scripts_run: Settings) -> None:
    steps = tour.read()
    assert "localhost:8080" in steps.run and "localhost:8081" in steps.run
    setup = steps.run.replace("localhost:8080", f"127.0.0.1:{scripts_run.ingest_port}").replace(
        "localhost:8081", f"127.0.0.1:{scripts_run.read_port}"
    )
    publish, events, stream, stats = steps.commands
    assert json.loads(tour.run(setup, publish, cwd=ROOT, env=os.environ))["accepted"] == 1
    stored = _until(setup, events, lambda page: len(page) == 1)
    assert stored[0]["event_id"] == "evt001"
    assert stored[0]["payload"] == {"msg": "event pertama"}
    _until(setup, stats, lambda s: _counts(s) == (1, 1, 0))
    # "Send the same event again and duplicate_dropped grows while /events still holds one."
    tour.run(setup, publish, cwd=ROOT, env=os.environ)
    _until(setup, stats, lambda s: _counts(s) == (2, 1, 1))
    assert json.loads(tour.run(setup, events, cwd=ROOT, env=os.environ)) == stored
    # The live tail answers (a refused one would fail: curl --fail-with-body).
    tour.run(setup, stream, cwd=ROOT, env=os.environ)
