"""``python -m bench.protocols``: the log protocols' throughput next to ``POST /publish``.

Runs the services as separate processes (ingest, two consumers, the read API) and sends the same
load, batches of 100 events with 20% repeated, for ``--duration`` seconds in each protocol:
``POST /publish`` (native), OTLP/HTTP logs (``POST /v1/logs``, in protobuf as the SDKs send it,
and in OTLP JSON), the Loki push API (JSON) and Elasticsearch bulk (NDJSON). Each workload is
timed until everything ingest accepted is stored, with the counts checked exactly, after a
``CHECKPOINT`` (the writes of one run must not be paid for in the next). Each protocol runs
between two native runs and its rate is compared with their mean: the machine's speed drifts
within minutes, so only neighbours compare. The rounds alternate the order of the protocols,
and the table gives the median of each protocol's ratios. A control row sends native events
whose payloads are what the OTLP rows store (body, severity, attributes, times, resource): its
rate against native's is what the bigger records cost, whatever the protocol; the OTLP rows
against it are what the protocol's own decoding costs. A last table gives the CPU time each
kind of process spent per stored event (the median of the runs): where a protocol's events
cost more than native ones, and what wrk spent building the requests (it shares the cores).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import uuid

import aiohttp

from bench import record
from bench.cpu import CpuMeter
from bench.system import private_system
from bench.workloads import Bench, Result, launch, table

PROTOCOLS = {
    "publish": "POST /publish (native)",
    "publish-otlp-shape": "POST /publish, the OTLP records' payloads (control)",
    "otlp-protobuf": "POST /v1/logs (OTLP protobuf)",
    "otlp": "POST /v1/logs (OTLP JSON)",
    "loki": "POST /loki/api/v1/push (JSON)",
    "bulk": "POST /_bulk (NDJSON)",
}
_NATIVE = "publish"
_CONTROL = "publish-otlp-shape"
_KINDS = ("ingest", "consumer", "postgresql", "rabbitmq")


def _children_cpu() -> float:
    """CPU seconds of this process's children that ended: wrk, the only one that ends while a
    workload runs. Its CPU comes off the cores the system runs on, so it is reported too."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def main(args: argparse.Namespace) -> int:
    runs: list[Result] = []
    rates: dict[str, list[float]] = {protocol: [] for protocol in PROTOCOLS}
    cpu: dict[str, list[dict[str, float]]] = {protocol: [] for protocol in PROTOCOLS}
    # Per round, each protocol's rate against the mean of the native runs just before and
    # just after it: the machine's speed drifts within minutes, so only neighbours compare.
    ratios: list[dict[str, float]] = []
    async with (
        private_system("bench_protocols", consumers=2) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        stack.start_all(["readapi", "ingest", "consumer-1", "consumer-2"])
        bench = Bench(stack.settings, stack, http)

        async def measure(protocol: str, n: int) -> float:
            topic = f"bench-{protocol}-{uuid.uuid4().hex[:6]}"
            print(f"round {n + 1}: {protocol} ...", file=sys.stderr)
            drive = bench.wrk(
                topic, batch=100, connections=16, seconds=args.duration, protocol=protocol
            )
            bench.checkpoint()
            meter = CpuMeter(stack)
            meter.start()
            load = _children_cpu()
            result = await bench.run(f"{PROTOCOLS[protocol]}, round {n + 1}", topic, drive)
            spent = meter.stop()
            spent["wrk"] = _children_cpu() - load
            cpu[protocol].append({k: v / max(result.events, 1) * 1e6 for k, v in spent.items()})
            runs.append(result)
            rates[protocol].append(result.rate)
            return result.rate

        others = [protocol for protocol in PROTOCOLS if protocol != _NATIVE]
        for n in range(args.rounds):
            before = await measure(_NATIVE, n)
            ratio = {_NATIVE: 1.0}
            for protocol in others if n % 2 == 0 else others[::-1]:
                rate = await measure(protocol, n)
                after = await measure(_NATIVE, n)
                ratio[protocol] = rate / ((before + after) / 2)
                before = after
            ratios.append(ratio)
        bench.db.close()
    out = record.Output()
    out(
        f"Batches of 100 events (20% repeated), 16 connections, {args.duration:g} s each; each "
        "protocol run between two native runs."
    )
    out()
    out(table(runs))
    out()
    out(
        "| protocol | events/s (median of runs) | vs native, the runs either side (median)"
        " | rounds | vs the control, same round (median) |"
    )
    out("| --- | --- | --- | --- | --- |")
    for protocol, name in PROTOCOLS.items():
        each = [r[protocol] for r in ratios]
        control = [r[protocol] / r[_CONTROL] for r in ratios]
        out(
            f"| {name} | {statistics.median(rates[protocol]):,.0f} "
            f"| {statistics.median(each):.2f} | {', '.join(f'{r:.2f}' for r in each)} "
            f"| {statistics.median(control):.2f} |"
        )
    out()
    out("CPU per stored event, µs (median of runs), while the workload ran and was stored:")
    out()
    out("| protocol | " + " | ".join(_KINDS) + " | all | wrk (the load, not counted in all) |")
    out("| --- | " + " | ".join("---" for _ in _KINDS) + " | --- | --- |")
    for protocol, name in PROTOCOLS.items():
        each_kind = [statistics.median(r.get(k, 0.0) for r in cpu[protocol]) for k in _KINDS]
        total = statistics.median(sum(r.get(k, 0.0) for k in _KINDS) for r in cpu[protocol])
        wrk = statistics.median(r["wrk"] for r in cpu[protocol])
        out(
            f"| {name} | " + " | ".join(f"{v:.1f}" for v in each_kind)
            + f" | {total:.1f} | {wrk:.1f} |"
        )  # fmt: skip
    out.write("bench-protocols", title="Benchmark: the log protocols next to POST /publish")
    failed = [r for r in runs if r.problems]
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    p.add_argument("--duration", type=float, default=20, help="seconds of each workload")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the protocols")
    launch(main, p.parse_args(argv))


if __name__ == "__main__":
    cli()
