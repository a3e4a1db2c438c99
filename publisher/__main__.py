"""``python -m publisher``: send events with duplicates, wait until stored, compare counts.

``python -m publisher tail --topic X`` follows the stored events instead, like ``tail -f``.

Bearer tokens, when the services require them, come from PUBSUB_PUBLISH_TOKEN and
PUBSUB_READ_TOKEN, or the files named by PUBSUB_PUBLISH_TOKEN_FILE and PUBSUB_READ_TOKEN_FILE
(the same variables the services read).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from publisher.load import LoadConfig, Report, run_load
from publisher.watch import token_from_env


def parse_args(argv: list[str] | None = None) -> LoadConfig:
    d = LoadConfig()
    p = argparse.ArgumentParser(prog="pubsub-aggregator publish", description=__doc__)
    p.add_argument("--ingest-url", default=d.ingest_url, help="where POST /publish is")
    p.add_argument("--read-url", default=d.read_url, help="where GET /stats is")
    p.add_argument("-n", "--events", type=int, default=d.events, help="events to send")
    p.add_argument(
        "-d",
        "--duplicates",
        type=float,
        default=d.duplicates,
        help="share of duplicate events, 0 to 1",
    )
    p.add_argument(
        "--mode",
        choices=("batch", "single"),
        default=d.mode,
        help="JSON arrays of --batch-size events, or one event per request",
    )
    p.add_argument("-b", "--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "-c", "--concurrency", type=int, default=d.concurrency, help="requests in flight at once"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="send for this many seconds instead of --events",
    )
    p.add_argument("--topic", default=d.topic)
    p.add_argument(
        "--run-id",
        default=d.run_id,
        help="prefix of the event ids; reuse one to resend the same events",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=d.settle_timeout,
        help="seconds to wait for the consumers to store everything",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not 0 <= a.duplicates < 1:
        p.error("--duplicates must be at least 0 and below 1")
    if a.events < 1 or a.batch_size < 1 or a.concurrency < 1:
        p.error("--events, --batch-size and --concurrency must be positive")
    return LoadConfig(
        ingest_url=a.ingest_url.rstrip("/"),
        read_url=a.read_url.rstrip("/"),
        events=a.events,
        duplicates=a.duplicates,
        mode=a.mode,
        batch_size=a.batch_size,
        concurrency=a.concurrency,
        topic=a.topic,
        duration=a.duration,
        publish_token=token_from_env(p, "publish"),
        read_token=token_from_env(p, "read"),
        run_id=a.run_id,
        settle_timeout=a.settle_timeout,
        progress=not a.no_progress and sys.stderr.isatty(),
    )


def render(cfg: LoadConfig, r: Report) -> str:
    rate = r.expected["received"] / r.settle_seconds if r.settle_seconds else 0.0
    lines = [
        f"run {cfg.run_id}: {r.expected['received']} events, {cfg.duplicates:.0%} duplicates, mode "
        f"{cfg.mode}"
        + (f" (batches of {cfg.batch_size})" if cfg.mode == "batch" else "")
        + f", concurrency {cfg.concurrency}",
        f"sent in {r.send_seconds:.3f}s; all stored after {r.settle_seconds:.3f}s "
        f"({rate:,.0f} events/s end to end)",
        f"requests {r.requests} (retried {r.retried_requests}); HTTP latency "
        f"p50 {r.percentile(50) * 1000:.1f} ms, p99 {r.percentile(99) * 1000:.1f} ms",
        f"{'counter':<20}{'expected':>10}{'got':>10}",
    ]
    for key, want in r.expected.items():
        got = r.got.get(key)
        mark = "" if got == want else "  <-- mismatch"
        lines.append(f"{key:<20}{want:>10}{got!s:>10}{mark}")
    if r.failed_events:
        lines.append(f"{r.failed_events} event(s) were never accepted")
    lines.append("OK" if r.ok else "MISMATCH")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tail"]:
        from publisher import tail

        tail.main(args[1:])
    cfg = parse_args(args)
    report = asyncio.run(run_load(cfg))
    print(render(cfg, report))
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
