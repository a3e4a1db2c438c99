"""``pubsub-aggregator``: one command for the system, its services and its tools.

Each subcommand hands the rest of the command line to the module that does the work, the
same module ``python -m …`` runs, so both spellings keep working and say the same in
``--help``. The tools (``bench``, ``soak``) live in the repository's ``bench`` package, which
a runtime image does not install: there the subcommands say so instead of failing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str
    function: str
    # Words put before the rest of the command line (``dead-letters`` -> ``list``...).
    prefix: tuple[str, ...] = ()
    tool: bool = False

    def run(self, argv: list[str]) -> Any:
        if self.tool:
            _find_the_tools()
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if not self.tool:
                raise
            sys.exit(
                f"pubsub-aggregator {self.name}: the tools are not installed here ({exc.name}); "
                "run it from a checkout of the repository (pip install -e '.[tools]')"
            )
        entry: Callable[[list[str]], Any] = getattr(module, self.function)
        return entry([*self.prefix, *argv])


def _find_the_tools() -> None:
    """Make the checkout's ``bench`` importable: an editable install maps only the product's
    packages, and a console script does not run from the checkout."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "bench" / "__init__.py").exists() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))


COMMANDS = (
    Command("run", "the whole system on this machine: ingest, consumers, read API",
            "stack.__main__", "main"),
    Command("ingest", "the ingest service alone (POST /publish)", "ingest.__main__", "cli"),
    Command("consumer", "one competing consumer", "consumer.__main__", "cli"),
    Command("readapi", "the read API alone (/events, /events/stream, /stats, the page)",
            "readapi.__main__", "cli"),
    Command("publish", "send events with duplicates, wait until stored, compare the counts",
            "publisher.__main__", "main"),
    Command("tail", "follow stored events in the terminal, like tail -f",
            "publisher.tail", "main"),
    Command("dead-letters", "list or replay the messages in the dead-letter queue",
            "consumer.deadletters", "main"),
    Command("bench", "ceilings and workloads in one run, one table (needs wrk)",
            "bench.__main__", "cli", tool=True),
    Command("soak", "steady load for minutes, one row a minute, judged by itself",
            "bench.soak.__main__", "cli", tool=True),
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pubsub-aggregator",
        description="Event aggregator: HTTP ingest -> RabbitMQ -> deduplicating consumers -> "
        "PostgreSQL -> read API.",
        epilog="`pubsub-aggregator COMMAND --help` describes a command. Every service reads "
        "its settings from PUBSUB_* environment variables (docs/operations.md).",
    )
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        # No help of their own: --help after a command goes to that command.
        commands.add_parser(command.name, help=command.help, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    command = next(c for c in COMMANDS if c.name == args.command)
    result = command.run(rest)
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
