"""Search: what ``q=`` matches, as SQL, and the optional index that speeds it up.

A query is words (or ``"quoted phrases"``), each of which must occur, case-insensitively, in
the event's topic, its source or its payload's JSON text: ``timeout``, an order id, an IP,
``"connection reset"``. It is one SQL condition per word over one expression, the same with
or without an index. Events lie in blocks (see :mod:`pubsub.layout`): a block whose text
lacks a word (without spaces) is skipped before its events are matched.

- ``PUBSUB_SEARCH=scan`` (the default) keeps no index: a search reads the blocks its other
  filters (``topic``, ``since``, ``until``) narrow it to, which is fast within a time window
  and slow over a big table (bounded by ``PUBSUB_READ_STATEMENT_TIMEOUT``).
- ``PUBSUB_SEARCH=trigram`` keeps a ``pg_trgm`` GIN index on the blocks' text: the blocks
  that hold a rare word are found among millions of events in milliseconds, at a cost to
  every insert (the measured trade-off is in docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

# Bounds of a query: every word is a condition on every row it reads.
MAX_CHARS = 256
MAX_WORDS = 8

# What a word is matched against, in an event.
TEXT = "(topic || ' ' || source || ' ' || payload::text)"
# The same words in a block (see pubsub.layout): its topic and its lines, which hold each
# event's source and payload. A word without white space that is in an event is in its block;
# a block without it is skipped unopened. The trigram index is on exactly this expression.
BLOCK_TEXT = "(topic || ' ' || events)"
INDEX = "events_search"

_WORD = re.compile(r'"([^"]*)"?|(\S+)')


class BadQuery(ValueError):
    """A ``q`` that cannot be searched for."""


def words(q: str) -> list[str]:
    """The words of a query: whitespace separates them, double quotes keep a phrase together.

    >>> words('timeout "connection reset" 10.0.0.7')
    ['timeout', 'connection reset', '10.0.0.7']
    """
    if len(q) > MAX_CHARS:
        raise BadQuery(f"q must be at most {MAX_CHARS} characters")
    if "\x00" in q:
        raise BadQuery("q must not contain NUL")
    found = [m[1] if m[1] is not None else m[2] for m in _WORD.finditer(q)]
    found = [w for w in (f.strip() for f in found) if w]
    if len(found) > MAX_WORDS:
        raise BadQuery(f"q must have at most {MAX_WORDS} words")
    return found


def pattern(word: str) -> str:
    """The ``ILIKE`` pattern of a word: as it appears inside a JSON string (a quote as ``\\"``),
    with LIKE's wildcards taken literally."""
    escaped = json_form(word).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def json_form(word: str) -> str:
    """A word as it appears inside a JSON string: a quote as ``\\"``."""
    return orjson.dumps(word).decode()[1:-1]


def matches(query_words: Sequence[str], topic: str, source: str, payload: str) -> bool:
    """What :func:`condition` selects, for one event at hand (the live stream's shared feed
    filters the events it read with this)."""
    text = f"{topic} {source} {payload}".lower()
    return all(json_form(word).lower() in text for word in query_words)


def condition(query_words: list[str], where: list[str], params: list[Any]) -> None:
    """Add one condition per word (all must match)."""
    for word in query_words:
        where.append(f"{TEXT} ILIKE %s")
        params.append(pattern(word))


def block_condition(query_words: list[str], where: list[str], params: list[Any]) -> None:
    """Add the conditions a block must meet to hold a match: one per word without white space
    (a phrase may span the fields an event's text joins with spaces)."""
    for word in query_words:
        if not any(c.isspace() for c in word):
            where.append(f"{BLOCK_TEXT} ILIKE %s")
            params.append(pattern(word))


# --- the index --------------------------------------------------------------------------------

_OPCLASS = """
SELECT n.nspname FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
WHERE c.opcname = 'gin_trgm_ops' LIMIT 1
"""


async def indexed(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    """Whether ``schema``'s blocks have the search index."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{INDEX}",))
    row = await cur.fetchone()
    return bool(row and row[0])


async def build(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create the trigram index (and the ``pg_trgm`` extension, in ``schema``, if the database
    has none). It locks the blocks against writes while it is built."""
    cur = await conn.execute(_OPCLASS)
    row = await cur.fetchone()
    if row is None:
        await conn.execute(
            sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA {}").format(
                sql.Identifier(schema)
            )
        )
        cur = await conn.execute(_OPCLASS)
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("the pg_trgm extension was created but has no gin_trgm_ops")
    await conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin ({} {})").format(
            sql.Identifier(INDEX),
            sql.Identifier(schema, "blocks"),
            sql.SQL(BLOCK_TEXT),
            sql.Identifier(row[0], "gin_trgm_ops"),
        )
    )


async def drop(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(schema, INDEX)))
