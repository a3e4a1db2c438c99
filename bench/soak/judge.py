"""The soak's verdict on its minutes: memory flat, latency and lag flat, with notes on the
disk's own stalls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.soak.sampling import Minute

RSS_GROWTH = 0.10
FLAT = 1.5
LATENCY_FLOOR_MS, LAG_FLOOR_MS = 5.0, 50.0
FLAT_JUDGED_FROM = 10  # minutes: shorter runs report latency and lag trends without judging


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(rows: list[Minute]) -> Verdict:
    verdict = Verdict()
    n = len(rows)
    window = max(1, n // 6)
    warm = window
    if n < warm + 2 * window:
        verdict.problems.append(f"{n} minute(s) are too few to judge")
        return verdict
    base, last = rows[warm : warm + window], rows[-window:]
    for name, after_warmup in rows[warm - 1].rss_mib.items():
        end = rows[-1].rss_mib.get(name, 0.0)
        if after_warmup and end > after_warmup * (1 + RSS_GROWTH):
            verdict.problems.append(
                f"{name} RSS grew {end / after_warmup - 1:.0%} after the warm-up"
                f" ({after_warmup:.0f} -> {end:.0f} MiB)"
            )
    series: tuple[tuple[str, float, Callable[[Minute], float]], ...] = (
        ("p99 HTTP latency", LATENCY_FLOOR_MS, lambda m: m.p99_ms),
        ("p99 lag", LAG_FLOOR_MS, lambda m: m.lag_p99_ms),
    )
    for what, floor, get in series:
        early = sum(get(m) for m in base) / len(base)
        late = sum(get(m) for m in last) / len(last)
        if late <= max(FLAT * early, early + floor):
            continue
        change = f"{what} rose from {early:.1f} to {late:.1f} ms (allowed: {FLAT}x or +{floor:g})"
        if n < FLAT_JUDGED_FROM:
            # Windows of a minute right after start-up measure the tables filling from empty.
            verdict.notes.append(f"{change}; not judged under {FLAT_JUDGED_FROM} minutes")
        else:
            verdict.problems.append(change)
    if any(m.fsync_max_ms for m in rows):
        # Whose stall was it: the probe writes next to nothing, so a slow fsync there is the
        # disk's, not the system's load alone.
        verdict.notes.append(
            "the disk's own 8 KiB fdatasync, probed 4 times a second beside the system, took at"
            f" worst {max(m.fsync_max_ms for m in base):.0f} ms in {_span(base)} and"
            f" {max(m.fsync_max_ms for m in last):.0f} ms in {_span(last)};"
            f" the median minute's worst was {_median_worst(rows):.0f} ms"
        )
    return verdict


def _span(rows: list[Minute]) -> str:
    if len(rows) == 1:
        return f"minute {rows[0].minute}"
    return f"minutes {rows[0].minute}-{rows[-1].minute}"


def _median_worst(rows: list[Minute]) -> float:
    worst = sorted(m.fsync_max_ms for m in rows)
    return worst[len(worst) // 2]
