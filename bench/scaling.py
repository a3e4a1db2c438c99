"""``python -m bench.scaling``: events/s with 1, 2, 4 and 8 consumers and with 1 and 2 ingest
processes, and the CPU each kind of process spends per million events.

- **Consumers**: a backlog of ``--backlog`` events (batches of 1,000) is queued with every
  consumer stopped, then drained by 1, 2, 4 and 8 consumers in turn; events/s from the
  consumers' start until all is stored, the counts checked exactly.
- **Ingest**: batched load (wrk, batches of 100) for ``--duration`` seconds against 1 and then 2
  ingest processes sharing the port, the consumers stopped meanwhile (the queue takes it and
  is drained afterwards): events/s accepted.

CPU seconds per million events, per kind of process (ingest, consumers, PostgreSQL's
processes, RabbitMQ's), carry over to other machines where events/s do not: a machine with
more cores runs more of each. The README's capacity rule is computed from them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from bench import record
from bench.cpu import CpuMeter
from bench.system import private_system
from bench.workloads import LUA, Bench, launch, run_wrk
from publisher import watch
from stack.supervisor import Supervisor


@dataclass
class Row:
    name: str
    events: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def per_million(self, kind: str) -> float:
        return self.cpu.get(kind, 0.0) / self.events * 1e6 if self.events else 0.0


KINDS = ("ingest", "consumer", "postgresql", "rabbitmq")


async def consumers(args: argparse.Namespace, bench: Bench, stack: Supervisor) -> list[Row]:
    rows = []
    for n in (1, 2, 4, 8):
        print(f"drain of {args.backlog:,} with {n} consumer(s) ...", file=sys.stderr)
        meter = CpuMeter(stack)
        names = [f"consumer-{i}" for i in range(1, n + 1)]
        # The meter starts once the backlog is queued: a row counts the drain alone.
        result = await bench.drain(
            f"drain, {n} consumer(s)", args.backlog, names, queued=meter.start
        )
        rows.append(Row(result.name, result.events, result.seconds, meter.stop(), result.problems))
    return rows


async def ingests(
    args: argparse.Namespace, bench: Bench, stack: Supervisor, http: aiohttp.ClientSession
) -> list[Row]:
    rows = []
    extra = stack.add_ingest()
    for n in (1, 2):
        for name in stack.consumers:
            if stack.running(name):
                stack.stop(name)
        if n == 2:
            stack.start(extra)
        print(f"batched load against {n} ingest process(es) ...", file=sys.stderr)
        meter = CpuMeter(stack)
        meter.start()
        summary = await run_wrk(
            LUA, stack.ingest_url, threads=2, connections=16, seconds=args.duration,
            env={"BENCH_RUN": uuid.uuid4().hex[:8], "BENCH_BATCH": "100",
                 "BENCH_TOPIC": f"scaling-ingest-{n}", "BENCH_DUP": "0.2"},
        )  # fmt: skip
        cpu = meter.stop()
        seconds = summary["duration_us"] / 1e6
        rows.append(Row(f"{n} ingest process(es), batches of 100", summary["requests"] * 100,
                        seconds, cpu))  # fmt: skip
        # Drain what the load queued before the next row.
        stack.start_all(["consumer-1", "consumer-2"])
        await _drained(http, stack)
    stack.stop(extra)
    return rows


async def _drained(http: aiohttp.ClientSession, stack: Supervisor) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if (await watch.fetch_stats(http, stack.read_url)).get("queued_messages") == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the queue did not drain within 600 s")


def _table(rows: list[Row]) -> str:
    head = "| workload | events | events/s | CPU s per million events: " + " / ".join(KINDS)
    lines = [head + " | check |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cpu = " / ".join(f"{r.per_million(k):.1f}" for k in KINDS)
        check = "exact" if not r.problems else "FAIL: " + "; ".join(r.problems)
        lines.append(f"| {r.name} | {r.events:,} | {r.rate:,.0f} | {cpu} | {check} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    async with (
        private_system("scaling", consumers=8) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        stack.start_all(["readapi", "ingest", "consumer-1", "consumer-2"])
        bench = Bench(stack.settings, stack, http)
        rows = await consumers(args, bench, stack)
        rows += await ingests(args, bench, stack, http)
        bench.db.close()
    out = record.Output()
    out(_table(rows))
    drains = [r for r in rows if r.name.startswith("drain")]
    loads = [r for r in rows if not r.name.startswith("drain")]

    def mean(of: list[Row], kind: str) -> float:
        return sum(r.per_million(kind) for r in of) / len(of)

    # RabbitMQ's share: taking messages in while ingest publishes, handing them out while
    # consumers drain; an event costs both.
    broker = mean(loads, "rabbitmq") + mean(drains, "rabbitmq")
    out(
        f"per stored event: PostgreSQL {mean(drains, 'postgresql'):.1f} µs of CPU, consumer"
        f" {mean(drains, 'consumer'):.1f} µs; per accepted event (batches of 100): ingest"
        f" {loads[0].per_million('ingest'):.1f} µs; RabbitMQ {broker:.1f} µs in and out"
    )
    out.write("scaling", title="Scale-out: consumers and ingest processes, CPU per event")
    return 1 if any(r.problems for r in rows) else 0


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    p.add_argument("--backlog", type=int, default=400_000, help="events of each drain")
    p.add_argument("--duration", type=float, default=20, help="seconds of each ingest load")
    launch(main, p.parse_args())


if __name__ == "__main__":
    cli()
