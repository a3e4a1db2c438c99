"""The ``pubsub-aggregator`` command: every subcommand is listed, and each hands its options
to the module that ``python -m`` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stack.cli import COMMANDS

COMMAND = Path(sys.executable).parent / "pubsub-aggregator"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_every_subcommand() -> None:
    done = run(str(COMMAND), "--help")
    assert done.returncode == 0, done.stderr
    names = {"run", "ingest", "consumer", "readapi", "publish", "tail", "dead-letters", "bench",
             "soak"}  # fmt: skip
    assert names == {c.name for c in COMMANDS}
    for name in names:
        assert f"\n    {name}" in done.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["publish"], "--duplicates"),
        (["tail"], "--topic"),
        (["dead-letters"], "{list,replay}"),
        (["run"], "--consumers"),
        (["ingest"], "PUBSUB_"),
        (["bench"], "--backlog"),
        (["soak"], "--minutes"),
    ],
)
def test_each_subcommand_answers_help_with_its_own_options(words: list[str], expected: str) -> None:
    done = run(str(COMMAND), *words, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: pubsub-aggregator {words[0]}" in done.stdout
    assert expected in done.stdout


def test_python_dash_m_still_works() -> None:
    done = run(sys.executable, "-m", "publisher", "--help")
    assert done.returncode == 0 and "--duplicates" in done.stdout


def test_an_unknown_subcommand_is_refused_with_the_list() -> None:
    done = run(str(COMMAND), "frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
