"""The soak's table, one Markdown row a minute, and the record it writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bench import record

if TYPE_CHECKING:  # the sampler imports this module to print its rows
    from bench.soak.judge import Verdict
    from bench.soak.sampling import Minute

HEAD = (
    "| minute | events/s | p99 HTTP ms | p99 lag ms | RSS MiB ingest / consumers / read API"
    " | tables MiB | queued | CPU µs/event | machine busy | I/O stalled"
    " | checkpoints, autovacuums | disk fsync max ms |"
    "\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def row_line(m: Minute) -> str:
    consumers = " + ".join(f"{v:.0f}" for k, v in m.rss_mib.items() if k.startswith("consumer"))
    rss = f"{m.rss_mib.get('ingest', 0):.0f} / {consumers} / {m.rss_mib.get('readapi', 0):.0f}"
    return (
        f"| {m.minute} | {m.rate:,.0f} | {m.p99_ms:.1f} | {m.lag_p99_ms:.0f} | {rss}"
        f" | {m.table_mib:,.0f} | {m.queued} | {m.cpu_us:.0f} | {m.busy:.0%} | {m.io_stall:.0%}"
        f" | {m.checkpoints}, {m.vacuums} | {m.fsync_max_ms:.0f} |"
    )


def render(rows: list[Minute], verdict: Verdict, *, minutes: int, rate: float, peak: float) -> str:
    """The run's table, its notes and its verdict."""
    share = f"half of {peak:,.0f}, the steady maximum" if peak else "given"
    lines = [
        f"soak: {minutes} min at {rate:,.0f} events/s ({share}), {os.cpu_count()} cores",
        "",
        HEAD,
        *(row_line(row) for row in rows),
        "",
        *(f"note: {note}" for note in verdict.notes),
        "verdict: " + ("OK" if verdict.ok else "FAIL: " + "; ".join(verdict.problems)),
    ]
    return "\n".join(lines)


def link(plot: Path) -> str:
    """The plot's path as the record in docs/measurements/ links to it."""
    return os.path.relpath(plot.resolve(), record.MEASUREMENTS)
