"""``python -m bench.ab --base REV``: the benchmark of two commits, alternated in one run.

Absolute numbers on a shared machine drift from one hour to the next; a ratio measured in one
run does not. This checks out ``--base`` and ``--head`` (default ``HEAD``) into temporary git
worktrees, runs ``python -m bench`` of each in turn, ``--rounds`` times (base, head, base,
head...), with the same arguments (after ``--``), in this environment, and prints per workload
the events/s of each run and the ratio of the heads' median to the bases'.

Throughput on a shared 2-core machine swings by a third from one run to the next; the CPU a
run spends per event swings far less. So each run's CPU seconds are counted too: the bench's
whole process tree (services, load generators; every child is waited for, so its time is in
this process's children's), PostgreSQL's server (the postmaster with the backends it reaped,
and those still running) and RabbitMQ's, divided by the events of all its workloads.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import record
from bench.cpu import server_cpu_seconds

# A row of the bench's table: | workload | events | events/s | ...
_ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<events>[\d,]+) \| (?P<rate>[\d,]+) \|")
# The run's CPU per event, by where it was spent: not workloads, never in the rates' table.
_CPU = ("CPU µs/event: all", "CPU µs/event: PostgreSQL")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(record.ROOT), "worktree", "add", "--detach", str(path), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(record.ROOT), "worktree", "remove", "--force", str(path)],
                check=False,
                capture_output=True,
            )


def _short(rev: str) -> str:
    return record.git("rev-parse", "--short", rev) or rev


def run_bench(tree: Path, args: list[str]) -> dict[str, float]:
    """Events/s per workload of one ``python -m bench`` run of the code in ``tree``."""
    servers = server_cpu_seconds()
    children = _children_cpu()
    # From the tree's own directory: its packages come first on the path, for the bench and
    # for the services it starts (python -m ingest..., in the same directory).
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=tree,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    # Each run's table as it ends: a long comparison shows its figures before the last run.
    print(done.stdout, file=sys.stderr, flush=True)
    spent = {k: v - servers.get(k, 0.0) for k, v in server_cpu_seconds().items()}
    spent["bench"] = _children_cpu() - children
    rates = {}
    events = 0
    for line in done.stdout.splitlines():
        if (m := _ROW.match(line)) and "FAIL" not in line:
            rates[m["name"]] = float(m["rate"].replace(",", ""))
            events += int(m["events"].replace(",", ""))
    if events:
        rates[_CPU[0]] = sum(spent.values()) / events * 1e6
        rates[_CPU[1]] = spent["postgresql"] / events * 1e6
    if not rates:
        raise SystemExit(f"the bench of {tree} failed (exit {done.returncode})")
    if done.returncode != 0:
        # A workload whose counts did not agree has no rate; the others still compare.
        print(f"the bench of {tree} failed a check (exit {done.returncode}): its FAIL rows "
              "are left out of the comparison", file=sys.stderr, flush=True)  # fmt: skip
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--head", default="HEAD", help="the commit to measure (default HEAD)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    p.add_argument(
        "--name",
        default="bench-ab",
        help="the measurement file written (docs/measurements/NAME.md)",
    )
    p.add_argument("bench_args", nargs="*", help="arguments of python -m bench (after --)")
    args = p.parse_args(argv)
    base_rev, head_rev = (_short(args.base), _short(args.head))
    runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    with worktree(args.base) as base, worktree(args.head) as head:
        for r in range(args.rounds):
            for side, tree in (("base", base), ("head", head)):
                print(f"round {r + 1}: {side} ...", file=sys.stderr, flush=True)
                runs[side].append(run_bench(tree, args.bench_args))
    out = record.Output()
    out(
        f"base {base_rev}, head {head_rev}; {args.rounds} runs of each, alternated;"
        f" `python -m bench {' '.join(args.bench_args)}`"
    )
    out()
    out("| workload | base events/s | head events/s | head / base (medians) |")
    out("| --- | --- | --- | --- |")
    ratios = []
    for name in [n for n in runs["base"][0] if n not in _CPU]:
        base_rates = [run[name] for run in runs["base"] if name in run]
        head_rates = [run[name] for run in runs["head"] if name in run]
        if not base_rates or not head_rates:
            continue
        ratio = statistics.median(head_rates) / statistics.median(base_rates)
        ratios.append(ratio)
        each = [", ".join(f"{v:,.0f}" for v in rates) for rates in (base_rates, head_rates)]
        out(f"| {name} | {each[0]} | {each[1]} | {ratio:.2f} |")
    out()
    out(f"median ratio over the workloads: {statistics.median(ratios):.2f}")
    out()
    out("CPU per event over each whole run (every workload's events; the bench's processes,")
    out("PostgreSQL and RabbitMQ), lower is better:")
    out()
    out("| CPU | base µs/event | head µs/event | head / base (medians) |")
    out("| --- | --- | --- | --- |")
    for name in _CPU:
        base_cpu = [run[name] for run in runs["base"] if name in run]
        head_cpu = [run[name] for run in runs["head"] if name in run]
        if base_cpu and head_cpu:
            ratio = statistics.median(head_cpu) / statistics.median(base_cpu)
            each = [", ".join(f"{v:,.1f}" for v in cpu) for cpu in (base_cpu, head_cpu)]
            out(f"| {name.split(': ')[1]} | {each[0]} | {each[1]} | {ratio:.2f} |")
    out.write(args.name, title="Benchmark, A/B: two commits alternated in one run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
