"""The soak's plot: rate, p99 latency and lag, and RSS over the minutes (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.soak.sampling import Minute


def plot(rows: list[Minute], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [m.minute for m in rows]
    fig, (rate, latency, rss) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    rate.plot(minutes, [m.rate for m in rows], marker="o")
    rate.set_ylabel("events/s accepted")
    rate.set_ylim(bottom=0)
    latency.plot(minutes, [m.p99_ms for m in rows], marker="o", label="p99 HTTP (batches)")
    latency.plot(minutes, [m.lag_p99_ms for m in rows], marker="o", label="p99 lag to commit")
    latency.plot(minutes, [m.fsync_max_ms for m in rows], marker=".", linestyle=":",
                 label="disk fsync, worst (probe)")  # fmt: skip
    latency.set_ylabel("ms (log)")
    latency.set_yscale("log")  # stalls are seconds, calm minutes tens of ms
    latency.legend()
    for name in rows[0].rss_mib:
        rss.plot(minutes, [m.rss_mib.get(name, 0) for m in rows], marker="o", label=name)
    rss.set_ylabel("RSS MiB")
    rss.set_ylim(bottom=0)
    rss.set_xlabel("minute")
    rss.legend()
    fig.suptitle(f"pubsub-aggregator soak, {len(rows)} minutes, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
