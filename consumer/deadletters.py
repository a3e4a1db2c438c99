"""``python -m consumer.deadletters list|replay``: inspect and replay the dead-letter queue
(see :mod:`pubsub.deadletters`). ``list`` shows them and leaves them in place; ``replay``
moves them back to the events queue, after the cause was fixed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pubsub.deadletters import list_dead, replay
from pubsub.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pubsub-aggregator dead-letters", description=__doc__)
    parser.add_argument("command", choices=("list", "replay"))
    parser.add_argument("--limit", type=int, default=100, help="most messages to handle")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "list":
        letters = asyncio.run(list_dead(settings, limit=args.limit))
        for d in letters:
            print(f"{d['message_id']}  {d['reason']:<10} {d['size']:>9} B  {d['preview']}")
        print(f"{len(letters)} dead letter(s) shown", file=sys.stderr)
    else:
        moved = asyncio.run(replay(settings, limit=args.limit))
        print(f"{moved} dead letter(s) moved back to {settings.queue}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
