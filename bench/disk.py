"""The disk's own commit latency, measured beside the system: a thread writes one 8 KiB page
and waits for ``fdatasync`` four times a second, as a database commit does.

A soak's lag spikes can come from the system (its writes filling the disk) or from the disk
(another tenant of a shared virtual disk, the kernel writing back other files). This probe
writes next to nothing itself, so its latency says what a commit of any program would have
waited at that moment.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

PAGE = b"\0" * 8192
EVERY = 0.25  # seconds between probes


class FsyncProbe:
    """Latencies of an 8 KiB write + ``fdatasync`` in ``directory``, gathered in a thread
    between :meth:`start` and :meth:`stop`; :meth:`take` returns and forgets them."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or Path(tempfile.gettempdir())
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def take(self) -> list[float]:
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def _run(self) -> None:
        fd, name = tempfile.mkstemp(prefix="pubsub-fsync-probe-", dir=self.directory)
        try:
            # Rewriting one page in place, as a WAL page is rewritten, keeps the file at 8 KiB.
            while not self._stop.wait(EVERY):
                started = time.perf_counter()
                os.pwrite(fd, PAGE, 0)
                os.fdatasync(fd)
                with self._lock:
                    self._samples.append(time.perf_counter() - started)
        finally:
            os.close(fd)
            os.unlink(name)
