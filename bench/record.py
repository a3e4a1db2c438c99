"""Measurements written by the tools that made them: ``docs/measurements/<name>.md``.

Every bench and the soak print their table and write it, with when, on what machine, by which
command and at which commit it was measured, into a file the docs link to. Nobody pastes
numbers by hand, and a number always says where it came from.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ROOT / "docs" / "measurements"


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def commit() -> str:
    """The checked-out commit, ``+changes`` when the tree differs from it."""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" +changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores{f' ({cpu})' if cpu else ''}, {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def command() -> str:
    """How the running tool was started, as a person would type it (the interpreter's own
    command line: ``python -m bench.soak ...`` or ``pubsub-aggregator soak ...``)."""
    argv = sys.orig_argv[1:]
    if argv and Path(argv[0]).name == "pubsub-aggregator":
        return shlex.join(["pubsub-aggregator", *argv[1:]])
    return shlex.join(["python", *argv])


def write(name: str, *, title: str, body: str, path: Path | None = None) -> Path:
    """Write ``body`` (Markdown: tables and notes) as measurement ``name``; the path."""
    target = path or MEASUREMENTS / f"{name}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# {title}\n\n"
        "Written by the tool that measured it; run the command again to replace it.\n\n"
        f"- date: {when}\n"
        f"- machine: {machine()}\n"
        f"- command: `{command()}`\n"
        f"- commit: {commit()}\n\n"
    )
    target.write_text(header + body.rstrip() + "\n")
    print(f"written: {target}", file=sys.stderr)
    return target


class Output:
    """A tool's result lines: printed as they come, and kept to be written as its record."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def write(self, name: str, *, title: str) -> Path:
        return write(name, title=title, body="\n".join(self.lines))
