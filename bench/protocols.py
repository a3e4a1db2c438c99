"""``python -m bench.protocols``: the log protocols' throughput next to ``POST /publish``.

Runs the services as separate processes (ingest, two consumers, the read API) and sends the same
load, batches of 100 events with 20% repeated, for ``--duration`` seconds in each protocol:
``POST /publish`` (native), OTLP/HTTP logs (``POST /v1/logs``, in protobuf as the SDKs send it,
and in OTLP JSON), the Loki push API (JSON) and Elasticsearch bulk (NDJSON). Each workload is
timed until everything ingest accepted is stored, with the counts checked exactly. The rounds
alternate the order of the protocols; each protocol's rate is compared with native's of the
same round, and the table gives the median of those ratios. A control row sends native events
whose payloads are what the OTLP rows store (body, severity, attributes, times, resource): its
rate against native's is what the bigger records cost, whatever the protocol; the OTLP rows
against it are what the protocol's own decoding costs. A last table gives the CPU time
each kind of process spent per stored event (the median of the rounds): where a protocol's
events cost more than native ones, and what wrk spent building the requests (it shares the
cores).
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
_CONTROL = "publish-otlp-shape"
_KINDS = ("ingest", "consumer", "postgresql", "rabbitmq")


def _children_cpu() -> float:
    """CPU seconds of this process's children that ended: wrk, the only one that ends while a
    workload runs. Its CPU comes off the cores the system runs on, so it is reported too."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def main(args: argparse.Namespace) -> int:
    rounds: list[dict[str, Result]] = []
    cpu: dict[str, list[dict[str, float]]] = {protocol: [] for protocol in PROTOCOLS}
    async with (
        private_system("bench_protocols", consumers=2) as stack,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        stack.start_all(["readapi", "ingest", "consumer-1", "consumer-2"])
        bench = Bench(stack.settings, stack, http)
        order = list(PROTOCOLS)
        for n in range(args.rounds):
            results: dict[str, Result] = {}
            for protocol in order if n % 2 == 0 else order[::-1]:
                topic = f"bench-{protocol}-{uuid.uuid4().hex[:6]}"
                print(f"round {n + 1}: {protocol} ...", file=sys.stderr)
                drive = bench.wrk(
                    topic, batch=100, connections=16, seconds=args.duration, protocol=protocol
                )
                meter = CpuMeter(stack)
                meter.start()
                load = _children_cpu()
                result = await bench.run(f"{PROTOCOLS[protocol]}, round {n + 1}", topic, drive)
                spent = meter.stop()
                spent["wrk"] = _children_cpu() - load
                cpu[protocol].append({k: v / max(result.events, 1) * 1e6 for k, v in spent.items()})
                results[protocol] = result
            rounds.append(results)
        bench.db.close()
    out = record.Output()
    out(f"Batches of 100 events (20% repeated), 16 connections, {args.duration:g} s each.")
    out()
    out(table([r for results in rounds for r in results.values()]))
    out()
    out(
        "| protocol | events/s (median of rounds) | vs native, same round (median) | rounds"
        " | vs the control, same round (median) |"
    )
    out("| --- | --- | --- | --- | --- |")
    for protocol, name in PROTOCOLS.items():
        rates = [results[protocol].rate for results in rounds]
        ratios = [results[protocol].rate / results["publish"].rate for results in rounds]
        control = [results[protocol].rate / results[_CONTROL].rate for results in rounds]
        out(
            f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(ratios):.2f} "
            f"| {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(control):.2f} |"
        )
    out()
    out("CPU per stored event, µs (median of rounds), while the workload ran and was stored:")
    out()
    out("| protocol | " + " | ".join(_KINDS) + " | all | wrk (the load, not counted in all) |")
    out("| --- | " + " | ".join("---" for _ in _KINDS) + " | --- | --- |")
    for protocol, name in PROTOCOLS.items():
        each = [statistics.median(r.get(k, 0.0) for r in cpu[protocol]) for k in _KINDS]
        total = statistics.median(sum(r.get(k, 0.0) for k in _KINDS) for r in cpu[protocol])
        wrk = statistics.median(r["wrk"] for r in cpu[protocol])
        out(f"| {name} | " + " | ".join(f"{v:.1f}" for v in each) + f" | {total:.1f} | {wrk:.1f} |")
    out.write("bench-protocols", title="Benchmark: the log protocols next to POST /publish")
    failed = [r for results in rounds for r in results.values() if r.problems]
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    p.add_argument("--duration", type=float, default=20, help="seconds of each workload")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the protocols")
    launch(main, p.parse_args(argv))


if __name__ == "__main__":
    cli()
