"""The soak's own verdict (``bench.soak.judge``) on made-up runs: what it passes, what it fails."""

from __future__ import annotations

from bench.soak.judge import judge
from bench.soak.sampling import Minute


def run(minutes: int, *, lag: float = 100.0, late_lag: float | None = None,
        rss: float = 70.0, end_rss: float | None = None, fsync: float = 5.0,
        late_fsync: float | None = None) -> list[Minute]:  # fmt: skip
    late_from = minutes - max(1, minutes // 6)
    rows = []
    for n in range(1, minutes + 1):
        late = n > late_from
        rows.append(Minute(
            minute=n, rate=10_000, p99_ms=50.0,
            lag_p99_ms=late_lag if late and late_lag is not None else lag,
            rss_mib={"ingest": 57.0, "consumer-1": end_rss if n == minutes and end_rss else rss},
            table_mib=100.0 * n, queued=0,
            fsync_max_ms=late_fsync if late and late_fsync is not None else fsync,
        ))  # fmt: skip
    return rows


def test_a_flat_run_passes() -> None:
    verdict = judge(run(30))
    assert verdict.ok, verdict.problems


def test_rss_growth_past_ten_percent_fails() -> None:
    verdict = judge(run(30, rss=70.0, end_rss=78.0))
    assert not verdict.ok
    assert any("consumer-1 RSS grew 11%" in p for p in verdict.problems), verdict.problems


def test_a_lag_rise_fails_and_the_disk_probe_says_whose_stall_it_was() -> None:
    verdict = judge(run(30, lag=100.0, late_lag=400.0, fsync=5.0, late_fsync=2500.0))
    assert any("p99 lag rose from 100.0 to 400.0 ms" in p for p in verdict.problems)
    assert any("took at worst 5 ms in minutes 6-10 and 2500 ms in minutes 26-30" in n
               for n in verdict.notes), verdict.notes  # fmt: skip


def test_a_short_run_reports_the_trend_without_judging_it() -> None:
    verdict = judge(run(3, lag=100.0, late_lag=400.0))
    assert verdict.ok
    assert any("not judged under 10 minutes" in n for n in verdict.notes), verdict.notes
