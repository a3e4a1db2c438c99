"""``python -m bench.ab --base REV``: the benchmark of two commits, alternated in one run.

Absolute numbers on a shared machine drift from one hour to the next; a ratio measured in one
run does not. This checks out ``--base`` and ``--head`` (default ``HEAD``) into temporary git
worktrees, runs ``python -m bench`` of each in turn, ``--rounds`` times (base, head, base,
head...), with the same arguments (after ``--``), in this environment, and prints per workload
the events/s of each run and the ratio of the heads' median to the bases'.

Throughput on a shared 2-core machine swings by a third from one run to the next; the CPU a
run spends per event swings far less. So each run's CPU seconds are counted too, up to the
end of its workloads (the fairness runs after them are paced by the clock): the bench's whole
process tree (services and load generators, those it reaped and those still running),
PostgreSQL's server (the postmaster with the backends it reaped, and those still running) and
RabbitMQ's, divided by the events of all its workloads.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psutil

from bench import record
from bench.cpu import server_cpu_seconds

# A row of the bench's table: | workload | events | events/s | ...
_ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<events>[\d,]+) \| (?P<rate>[\d,]+) \|")
# The run's CPU per event, by where it was spent: not workloads, never in the rates' table.
_CPU = ("CPU µs/event: all", "CPU µs/event: PostgreSQL")


# What the bench prints (on stderr) as its workloads end and its fairness runs begin: those
# are paced by the clock, not by the machine, so the CPU per event is counted before them.
_WORKLOADS_END = "fairness between tenants"


def _tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid``, the children it reaped, and those still running."""
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
    except psutil.Error:
        return 0.0
    return total


class _Cpu:
    """The CPU a bench run spends on its workloads: its process tree, PostgreSQL, RabbitMQ."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = server_cpu_seconds()
        self.spent: dict[str, float] = {}

    def stop(self) -> None:
        if not self.spent:
            now = server_cpu_seconds()
            self.spent = {k: v - self.before.get(k, 0.0) for k, v in now.items()}
            self.spent["bench"] = _tree_cpu(self.pid)


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
    # From the tree's own directory: its packages come first on the path, for the bench and
    # for the services it starts (python -m ingest..., in the same directory).
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cpu = _Cpu(bench.pid)
    assert bench.stdout is not None and bench.stderr is not None

    def relay(stream: IO[str]) -> None:
        for line in stream:
            if line.startswith(_WORKLOADS_END):
                cpu.stop()
            sys.stderr.write(line)

    relaying = threading.Thread(target=relay, args=(bench.stderr,), daemon=True)
    relaying.start()
    stdout = bench.stdout.read()
    cpu.stop()  # a bench without fairness runs: at its end
    returncode = bench.wait()
    relaying.join()
    # Each run's table as it ends: a long comparison shows its figures before the last run.
    print(stdout, file=sys.stderr, flush=True)
    rates = {}
    events = 0
    for line in stdout.splitlines():
        if line.startswith("Fairness between tenants"):
            break
        if (m := _ROW.match(line)) and "FAIL" not in line:
            rates[m["name"]] = float(m["rate"].replace(",", ""))
            events += int(m["events"].replace(",", ""))
    if events:
        rates[_CPU[0]] = sum(cpu.spent.values()) / events * 1e6
        rates[_CPU[1]] = cpu.spent["postgresql"] / events * 1e6
    if not rates:
        raise SystemExit(f"the bench of {tree} failed (exit {returncode})")
    if returncode != 0:
        # A workload whose counts did not agree has no rate; the others still compare.
        print(f"the bench of {tree} failed a check (exit {returncode}): its FAIL rows "
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
