"""A PostgreSQL server of one's own on this host: a new cluster made by ``initdb`` in a directory
and on a port of its own, run as the ``postgres`` user, stopped by its PID and removed.

The soak runs against one configured as the README recommends for production
(:data:`RECOMMENDED`); the replica test (``tests/replica.py``) builds its pair from the same
pieces. Needs root (to run as ``postgres``) and the server binaries (``initdb``, ``pg_ctl``).
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# What the README recommends for a server that takes the consumers' writes (see "Soak"): room
# for the indexes' hot pages, checkpoints minutes apart rather than at every GB of WAL (each one
# makes the next write of every page a full-page image), compressed full-page images, and
# autovacuum on. Durability stays as it is: fsync and synchronous_commit on.
RECOMMENDED: Mapping[str, str] = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_compression": "on",
    "autovacuum": "on",
}


def server_binary(tool: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or [shutil.which(tool) or ""]
    return found[-1] or None


def as_postgres(*cmd: str, timeout: float = 120) -> None:
    out = subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stdout}{out.stderr}")


def can_run() -> bool:
    return os.geteuid() == 0 and server_binary("initdb") is not None


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

    def configure(self, sockets: Path, settings: Mapping[str, str], *, hba: str = "") -> None:
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{sockets}'",
            **settings,
        }
        (self.data / "postgresql.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n" + hba
        )
        for name in ("postgresql.conf", "pg_hba.conf"):
            shutil.chown(self.data / name, "postgres", "postgres")

    def initdb(self) -> None:
        initdb = server_binary("initdb")
        if not initdb:
            raise RuntimeError("initdb not found: install PostgreSQL's server package")
        as_postgres(
            initdb, "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8",
            "-A", "trust",
        )  # fmt: skip

    def start(self, log: Path) -> None:
        as_postgres(server_binary("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", str(log),
                    "-w", "start")  # fmt: skip

    def stop(self, timeout: float = 60) -> None:
        """A fast shutdown by the postmaster's PID; wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def new_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(root, "postgres", "postgres")
    return root


@contextlib.contextmanager
def own_server(
    port: int, settings: Mapping[str, str] = RECOMMENDED, *, database: str = "test"
) -> Iterator[str]:
    """A running server with ``settings`` and an empty UTF8 ``database``; its URL. Stopped
    and removed on leaving."""
    if not can_run():
        raise RuntimeError("a server of one's own needs root and PostgreSQL's initdb")
    root = new_root("pubsub-pg-")
    inst = Instance(port, root / "data")
    try:
        inst.initdb()
        inst.configure(root, settings)
        inst.start(root / "server.log")
        as_postgres(server_binary("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port),
                    "-U", "postgres", database)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        inst.stop()
        shutil.rmtree(root, ignore_errors=True)
