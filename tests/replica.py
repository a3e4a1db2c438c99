"""A PostgreSQL primary and its streaming replica on this host, for the read-replica test (test
infrastructure, not product code; the servers are :mod:`bench.postgres` instances).

Both are new clusters of our own, on ports and in directories of their own, run as the
``postgres`` user: the primary made by ``initdb``, the replica by ``pg_basebackup -R`` from it.
The machine's own server is left alone (its ``pg_hba.conf`` admits no replication
connections). Both are stopped again, by their PIDs, and removed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import psycopg
import pytest

from bench.postgres import Instance, as_postgres, can_run, new_root, server_binary

PRIMARY_PORT, REPLICA_PORT = 5442, 5443


class Pair:
    """A primary and a streaming replica of it."""

    def __init__(self) -> None:
        self.root = new_root("pubsub-replica-")
        self.primary = Instance(PRIMARY_PORT, self.root / "primary")
        self.replica = Instance(REPLICA_PORT, self.root / "replica")

    def _conf(self, inst: Instance) -> None:
        inst.configure(
            self.root,
            {"wal_level": "replica", "max_wal_senders": "4", "hot_standby": "on",
             "fsync": "off"},  # a test's data: nothing to keep across a crash of the host
            hba="host replication all 127.0.0.1/32 trust\n",
        )  # fmt: skip

    def _start(self, inst: Instance) -> None:
        inst.start(self.root / f"{inst.data.name}.log")

    def start(self) -> None:
        basebackup = server_binary("pg_basebackup")
        if not basebackup:
            raise RuntimeError("pg_basebackup not found")
        self.primary.initdb()
        self._conf(self.primary)
        self._start(self.primary)
        as_postgres(
            basebackup, "-h", "127.0.0.1", "-p", str(PRIMARY_PORT), "-U", "postgres",
            "-D", str(self.replica.data), "-R", "-X", "stream",
        )  # fmt: skip
        self._conf(self.replica)
        self._start(self.replica)
        with psycopg.connect(self.replica.url) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if not row or row[0] is not True:
            raise RuntimeError("the replica is not in recovery")

    def stop(self) -> None:
        for inst in (self.replica, self.primary):
            inst.stop(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def primary_and_replica() -> Iterator[Pair]:
    """A running primary and streaming replica, stopped and removed afterwards; a test that
    cannot have them fails with the reason (it is never skipped)."""
    if not can_run():
        pytest.fail("the replica test needs root and PostgreSQL's server binaries (initdb)")
    pair = Pair()
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
