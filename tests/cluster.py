"""A RabbitMQ cluster of three nodes on this host, for the cluster fault test (test
infrastructure, not product code).

Each node has its own node name, AMQP port, distribution port, data and log directories and
config file (the machine's ``/etc/rabbitmq/rabbitmq.conf`` pins port 5672, so a node cannot be
moved by environment variables alone), and runs as the ``rabbitmq`` user so that it shares the
Erlang cookie of ``rabbitmqctl``. The machine's own node (``rabbit@localhost``) is left alone.
Every node started here is stopped again, by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_PORT = 5682  # nodes at 5682, 5692, 5702 (distribution ports 20000 higher)
QUEUE_TIMEOUT = 120.0


def _missing() -> str | None:
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: the cluster test needs RabbitMQ's server package"
    if os.geteuid() != 0:
        return "the cluster test starts RabbitMQ nodes as the rabbitmq user: run it as root"
    return None


@dataclass
class Node:
    name: str  # Erlang node name, e.g. pubsub1@localhost
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq"),  # .conf is appended
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # No management or prometheus listener: they would need ports of their own.
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
        }


class Cluster:
    """Three nodes joined into one cluster; ``start()`` boots them, ``stop()`` ends them."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pubsub-cluster-"))
        shutil.chown(self.root, "rabbitmq", "rabbitmq")
        self.nodes = [
            Node(f"pubsub{i + 1}@localhost", BASE_PORT + 10 * i, self.root / f"n{i + 1}")
            for i in range(size)
        ]

    # --- commands ------------------------------------------------------------------------

    def ctl(self, node: Node, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> ...`` (as the rabbitmq user, which the wrapper arranges)."""
        out = subprocess.run(
            ["rabbitmqctl", "-n", node.name, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {out.stderr}")
        return out.stdout

    def launch(self, node: Node) -> None:
        """Start ``node`` detached; it returns at once (:meth:`wait` for it)."""
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=node.env(), check=True, timeout=60,
            capture_output=True,
        )  # fmt: skip

    def wait(self, node: Node) -> None:
        """Wait until a launched node runs its applications."""
        self.ctl(node, "wait", "--timeout", "90", str(node.pid_file), timeout=100)

    def boot(self, node: Node) -> None:
        """Start ``node`` and wait until it runs its applications."""
        self.launch(node)
        self.wait(node)

    def start(self) -> None:
        for node in self.nodes:
            (node.home / "mnesia").mkdir(parents=True)
            (node.home / "log").mkdir()
            (node.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{node.port}\nloopback_users = none\n"
            )
            (node.home / "enabled_plugins").write_text("[].\n")
            for path in (node.home, *node.home.iterdir()):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        # Boot them side by side, then wait for each.
        for node in self.nodes:
            self.launch(node)
        for node in self.nodes:
            self.wait(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = json.loads(self.ctl(first, "cluster_status", "--formatter", "json"))
        if len(running.get("running_nodes", [])) != len(self.nodes):
            raise RuntimeError(f"cluster did not form: {running}")

    def kill(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM: a crash, not a shutdown."""
        pid = node.pid()
        if pid is None:
            raise RuntimeError(f"{node.name} has no PID file")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    def stop_node(self, node: Node) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``), as an operator's restart would."""
        pid = node.pid()
        self.ctl(node, "stop")
        if pid is not None:
            _wait_gone(pid)

    def restart(self, node: Node) -> None:
        """Boot a stopped or killed node again; it rejoins the cluster by itself."""
        self.boot(node)

    def stop(self) -> None:
        for node in self.nodes:
            pid = node.pid()
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node in self.nodes:
            pid = node.pid()
            if pid is not None:
                try:
                    _wait_gone(pid, timeout=30)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- what the cluster says -------------------------------------------------------------

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if (pid := n.pid()) is not None and _exists(pid)]

    def queue(self, name: str) -> dict[str, object]:
        """Leader, members and online members of a quorum queue, asked of a live node."""
        node = self.alive()[0]
        rows = json.loads(
            self.ctl(
                node, "list_queues", "name", "leader", "members", "online", "messages",
                "--formatter", "json",
            )
        )  # fmt: skip
        for row in rows:
            if row.get("name") == name:
                return dict(row)
        raise LookupError(f"no queue {name} on {node.name}")

    def node_named(self, erlang_name: str) -> Node:
        return next(n for n in self.nodes if n.name == erlang_name)

    def node_of_connection(self, connection_name: str) -> Node:
        """The node a client's connection (by its ``connection_name``) is attached to: the
        connection's own name ends with that node's ``host:port``."""
        node = self.alive()[0]
        rows = json.loads(
            self.ctl(node, "list_connections", "name", "client_properties", "--formatter", "json")
        )
        for row in rows:
            props = {p[0]: p[2] for p in row.get("client_properties", []) if len(p) == 3}
            if props.get("connection_name") == connection_name:
                port = int(str(row["name"]).rsplit(":", 1)[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no connection named {connection_name!r}")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _exists(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still runs after {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Three fresh nodes joined as one cluster, stopped and removed afterwards; a test that
    cannot have them fails with the reason (it is never skipped)."""
    reason = _missing()
    if reason:
        pytest.fail(reason)
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
