"""A PostgreSQL primary and its streaming replica on this host, for the read-replica test (test
infrastructure, not product code).

Both are new clusters of our own, on ports and in directories of their own, run as the
``postgres`` user: the primary made by ``initdb``, the replica by ``pg_basebackup -R`` from it.
The machine's own server is left alone (its ``pg_hba.conf`` admits no replication
connections). Both are stopped again, by their PIDs, and removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PRIMARY_PORT, REPLICA_PORT = 5442, 5443


def _bin(tool: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or [shutil.which(tool) or ""]
    return found[-1] or None


def _as_postgres(*cmd: str, timeout: float = 120) -> None:
    out = subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stdout}{out.stderr}")


@dataclass
class Instance:
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


class Pair:
    """A primary and a streaming replica of it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pubsub-replica-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.primary = Instance(PRIMARY_PORT, self.root / "primary")
        self.replica = Instance(REPLICA_PORT, self.root / "replica")

    def _conf(self, inst: Instance) -> None:
        (inst.data / "postgresql.conf").write_text(
            f"port = {inst.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\n"
            "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
            "fsync = off\n"  # a test's data: nothing to keep across a crash of the host
        )
        (inst.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        shutil.chown(inst.data / "postgresql.conf", "postgres", "postgres")
        shutil.chown(inst.data / "pg_hba.conf", "postgres", "postgres")

    def _start(self, inst: Instance) -> None:
        pg_ctl = _bin("pg_ctl") or "pg_ctl"
        log = self.root / f"{inst.data.name}.log"
        _as_postgres(pg_ctl, "-D", str(inst.data), "-l", str(log), "-w", "start")

    def start(self) -> None:
        initdb, basebackup = _bin("initdb"), _bin("pg_basebackup")
        if not initdb or not basebackup:
            raise RuntimeError("initdb / pg_basebackup not found")
        _as_postgres(
            initdb, "-D", str(self.primary.data), "-U", "postgres", "-E", "UTF8",
            "--locale=C.UTF-8", "-A", "trust",
        )  # fmt: skip
        self._conf(self.primary)
        self._start(self.primary)
        _as_postgres(
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
            pid = inst.pid()
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # "fast" shutdown
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def primary_and_replica() -> Iterator[Pair]:
    """A running primary and streaming replica, stopped and removed afterwards; a test that
    cannot have them fails with the reason (it is never skipped)."""
    if os.geteuid() != 0 or not _bin("initdb"):
        pytest.fail("the replica test needs root and PostgreSQL's server binaries (initdb)")
    pair = Pair()
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
