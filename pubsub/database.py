"""Connecting to PostgreSQL, and the kinds of failure every service tells apart.

Every connection goes through :func:`connect`, so each one is refused the same way when the
database cannot be used (see :func:`check_encoding`) and finds the tables in the project's
schema.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pubsub.errors import Unusable
from pubsub.settings import Settings

# The server is down, restarting or unreachable: the same statement may succeed later.
UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)
# The server refused these rows: storing the same data would fail forever, so the message
# that holds them is dead-lettered. Only errors about the data itself belong here (a value
# out of range, a row too large for an index); check for them before UNAVAILABLE, which
# holds ProgramLimitExceeded's parent class.
REFUSED: tuple[type[Exception], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)
# The server refuses the statement whatever the data: a privilege revoked (42501), a table
# dropped (42P01), a read-only server after a failover (25006). Every message would fail the
# same way until an operator acts: retry with backoff, and say so loudly, rather than
# dead-letter everything that arrives meanwhile.
MISCONFIGURED: tuple[type[Exception], ...] = (
    psycopg.ProgrammingError,
    psycopg.InternalError,
    psycopg.NotSupportedError,
)


def connect_kwargs(settings: Settings, *, statement_timeout: float | None = None) -> dict[str, Any]:
    """Connection options that point unqualified table names at the project's schema, and
    cancel any statement that runs longer than ``statement_timeout`` seconds when given."""
    # No JIT: its compile time (tens of ms per statement, past a cost the planner's guesses about
    # blocks exceed easily) is more than any statement of this project takes without it.
    options = f"-c search_path={settings.db_schema} -c jit=off"
    if statement_timeout is not None:
        options += f" -c statement_timeout={max(1, round(statement_timeout * 1000))}"
    return {"options": options, "application_name": "pubsub"}


async def connect(
    settings: Settings, *, autocommit: bool = False
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """A connection to the project's schema; :class:`Unusable` if the database is not UTF8."""
    conn = await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=autocommit, **connect_kwargs(settings)
    )
    try:
        check_encoding(conn)
    except Unusable:
        await conn.close()
        raise
    return conn


def check_encoding(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Refuse a database whose encoding is not UTF8.

    Under ``SQL_ASCII`` psycopg hands text back as ``bytes``: nothing would match what was
    sent, so events could be acknowledged without being stored. The server reports its
    encoding at connection time: checking costs no round trip.
    """
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        raise Unusable(
            f"database {conn.info.dbname!r} on {conn.info.host}:{conn.info.port} uses encoding "
            f"{encoding or 'unknown'}, and pubsub-aggregator needs UTF8 (text would come back "
            "undecoded and events could not be stored): create the database with "
            "ENCODING 'UTF8' TEMPLATE template0 (or initdb -E UTF8) and point "
            "PUBSUB_DATABASE_URL at it"
        )
