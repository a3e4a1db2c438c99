"""The README's tour as written: its setup for each way of running, and its commands, run in
bash the way a reader pastes them.

What the tests add to a reader's shell, and only this: ``curl`` answers an HTTP error with a
non-zero exit (``--fail-with-body``), every command is bounded in time, and the live tail
(``curl -sN``, which a reader ends with Ctrl-C) ends after a few seconds instead.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

# Wraps curl as described above; exit 28 is curl's "the time ran out", a tail's normal end.
_CURL = r"""
curl() {
    if [[ " $* " =~ \ -[a-zA-Z]*N[a-zA-Z]*\  ]]; then
        command curl --fail-with-body --max-time 3 "$@" || [ $? = 28 ]
    else
        command curl --fail-with-body --max-time 30 "$@"
    fi
}
"""


@dataclass(frozen=True)
class Tour:
    run: str  # the setup after ./scripts/run
    docker: str  # the setup after docker compose up
    commands: list[str]  # each curl command, continuation lines included


def read(readme: Path = README) -> Tour:
    text = readme.read_text()
    section = text.split("## A tour of the API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, "the tour: a setup for each way of running, then its commands"
    # A command starts at the line's beginning; its continuation lines are indented.
    commands = re.split(r"\n(?=\S)", blocks[2].strip())
    assert all(c.startswith("curl ") for c in commands), commands
    return Tour(blocks[0], blocks[1], commands)


def run(setup: str, command: str, *, cwd: Path, env: Mapping[str, str]) -> str:
    """Stdout of ``command`` after ``setup``, in one bash with ``set -e``; raises with its
    output when it fails."""
    script = f"set -euo pipefail\n{_CURL}\n{setup}\n{command}\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        raise AssertionError(
            f"the tour's command failed (exit {done.returncode}):\n{setup}\n{command}\n"
            f"stdout: {done.stdout}\nstderr: {done.stderr}"
        )
    return done.stdout
