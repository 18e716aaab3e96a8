"""ChainDist benchmark: the prime-count example over 1, 2 and 4 worker nodes (``speedup``), and
how long a crashed worker's shard takes to be given to another one (``reassign_s``). Writes
``benchmarks/chaindist.json``.

Nodes are real libp2p hosts in one process (127.0.0.1), each with its runners on the real
container engine (``scripts/engine.sh``) and one shard at a time (as a one-core node would run
them; the machine has 2 cores, so more than two workers share them). The job counts the primes
below ``--range-end`` in 8 shards by trial division in busybox awk; its answer is checked
against a sieve. The clock runs from the job's announcement to the stored result (placement, the
coordinator, every shard's container, the aggregate). For ``reassign_s``, 3 nodes run a job whose
shards pause first; a worker (not the coordinator) running a shard "crashes" (its node stops and
its containers go); the clock runs until that shard is given to another worker.
Usage: ``python scripts/bench_chaindist.py [--trials N] [--range-end N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import node_identity, percentile, project_engine, quiet_libp2p_logs, write_result

from mesh._identity import NodeIdentity
from mesh._jobspec import ChainDistJob, parse_spec_json, spec_hash
from mesh._jobspec_load import load_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._runner_car import CarRunner
from mesh._runner_chaindist import ChainDistRun
from mesh._runners import Runners
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import sign_submission
from mesh._transport_libp2p import open_libp2p_transport
from mesh._wire_capacity import Capacity, Resources

ROOT = Path(__file__).resolve().parent.parent
ESCROW = (31337, "0x" + "e5" * 20)
CSP_KEY = bytes.fromhex("c5" * 32)
SHARDS = 8


def primes_below(n: int) -> int:
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, n, i)))
    return sum(sieve)


def prime_job(range_end: int, pause_s: int = 0) -> ChainDistJob:
    """The example with this range, 8 shards, and (for the crash trials) a pause before each shard."""
    example = load_spec(ROOT / "examples" / "chaindist-primes.yaml")
    assert isinstance(example, ChainDistJob)
    data = example.model_dump(mode="json")
    data["env"] = {"RANGE_END": str(range_end), "PAUSE_S": str(pause_s),
                   "PROGRAM": example.chaindist.worker.command[1] if example.chaindist.worker.command else ""}
    data["chaindist"]["shards"] = SHARDS
    data["chaindist"]["worker"]["command"] = ["sh", "-c", 'sleep "$PAUSE_S"; awk "$PROGRAM"']
    spec = parse_spec_json(data)
    assert isinstance(spec, ChainDistJob)
    return spec


class Mesh:
    def __init__(self, engine: Any, idents: list[NodeIdentity], work: Path) -> None:
        self.engine, self.idents, self.work = engine, idents, work
        self.runners = {i.address: CarRunner(engine, i.address) for i in idents}
        self.scopes = {i.address: trio.CancelScope() for i in idents}
        self.nodes: dict[str, Node] = {}
        self.of: dict[str, Runners] = {}

    async def run(self, ident: NodeIdentity, bootstrap: list[str]) -> None:
        total = Resources(cpu_millis=2000, memory_mb=4096, gpus=0, disk_mb=0)
        cap = Capacity(version=1, total=total, free=total, tags=("runner:chaindist",))
        with self.scopes[ident.address]:
            async with AsyncExitStack() as stack:
                transport = await stack.enter_async_context(open_libp2p_transport(ident, bootstrap=bootstrap))
                node = await stack.enter_async_context(open_node(NodeConfig(), ident, transport, cap,
                                                                 lambda _: True, escrow=ESCROW))
                runners = Runners(node, self.runners[ident.address], self.work / ident.address, check_s=0.5,
                                  shards_at_once=1)
                async with trio.open_nursery() as inner:
                    await inner.start(runners.run)
                    await inner.start(lambda task_status: run_scheduler(
                        node, on_plan=runners.offer, states=runners.state_of, results=runners.results,
                        task_status=task_status))
                    self.nodes[ident.address], self.of[ident.address] = node, runners
                    await trio.sleep_forever()

    async def start(self, nursery: trio.Nursery) -> Node:
        nursery.start_soon(self.run, self.idents[0], [])
        await poll(lambda: self.idents[0].address in self.nodes, 30)
        first = self.nodes[self.idents[0].address]
        for ident in self.idents[1:]:
            nursery.start_soon(self.run, ident, first.transport.addrs()[:1])  # type: ignore[attr-defined]
        n = len(self.idents)
        await poll(lambda: len(self.nodes) == n and all(len(x.membership.alive()) == n - 1
                                                         for x in self.nodes.values()), 60)
        return first

    def run_of(self, first: Node, job_id: int) -> ChainDistRun | None:
        holder = assignment(first, job_id).get(0)
        runners = None if holder is None else self.of.get(holder)
        return None if runners is None else runners.chaindist.runs.get(job_id)

    def cleanup(self) -> None:
        for runner in self.runners.values():
            for leftover in runner.list_managed():
                self.engine.containers.get(leftover.container_id).remove(force=True)


async def poll(predicate: Any, deadline_s: float) -> None:
    with trio.fail_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)  # polling nodes and runs in this process with a deadline


def announce(first: Node, job_id: int, spec: ChainDistJob) -> None:
    from eth_account import Account
    sub = sign_submission(CSP_KEY, *ESCROW, job_id, spec_hash(spec), 1, int(time.time()) + 600)
    first.announce_job(sub, Account.from_key(CSP_KEY).address, spec)


async def timed_run(engine: Any, workers: int, k: int, spec: ChainDistJob, answer: int, work: Path) -> float:
    mesh = Mesh(engine, [node_identity(300 + 10 * workers + k, i) for i in range(workers)], work / f"w{workers}-{k}")
    job_id = 2000 + 10 * workers + k
    try:
        async with trio.open_nursery() as nursery:
            first = await mesh.start(nursery)
            began = time.monotonic()
            announce(first, job_id, spec)
            await poll(lambda: (run := mesh.run_of(first, job_id)) is not None and run.state != "running", 600)
            elapsed = time.monotonic() - began
            run = mesh.run_of(first, job_id)
            assert run is not None
            if run.state != "completed" or int(run.result["output"]) != answer:
                raise RuntimeError(f"wrong or no result: {run.result} (expected {answer})")
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup()
    return elapsed


async def reassign_trial(engine: Any, k: int, work: Path) -> float:
    mesh = Mesh(engine, [node_identity(500 + k, i) for i in range(3)], work / f"r{k}")
    job_id = 3000 + k
    try:
        async with trio.open_nursery() as nursery:
            first = await mesh.start(nursery)
            announce(first, job_id, prime_job(5000, pause_s=30))
            await poll(lambda: (run := mesh.run_of(first, job_id)) is not None and len(run.book.running) >= 2, 60)
            run = mesh.run_of(first, job_id)
            assert run is not None
            coordinator = assignment(first, job_id)[0]
            victim = next(w for w in run.book.running.values() if w != coordinator)
            shard = next(s for s, w in run.book.running.items() if w == victim)
            crashed = time.monotonic()
            mesh.scopes[victim].cancel()  # the worker's machine dies: its node and its containers
            for status in await trio.to_thread.run_sync(mesh.runners[victim].list_managed):
                await trio.to_thread.run_sync(mesh.runners[victim].remove, status.container_id, 0)
            await poll(lambda: len(run.book.tried.get(shard, [])) >= 2, 60)
            elapsed = time.monotonic() - crashed
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="runs per worker count (the median is kept)")
    parser.add_argument("--reassign-trials", type=int, default=5)
    parser.add_argument("--range-end", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "chaindist.json")
    args = parser.parse_args()
    quiet_libp2p_logs()
    answer = primes_below(args.range_end)
    spec = prime_job(args.range_end)
    times: dict[int, list[float]] = {}
    reassign: list[float] = []
    with project_engine(ROOT) as engine, tempfile.TemporaryDirectory(prefix="deedmesh-bench-cd-") as tmp:
        for workers in (1, 2, 4):
            for k in range(args.trials):
                t = trio.run(timed_run, engine, workers, k, spec, answer, Path(tmp))
                times.setdefault(workers, []).append(t)
                print(f"{workers} workers, run {k}: {t:.2f} s", file=sys.stderr, flush=True)
        for k in range(args.reassign_trials):
            reassign.append(trio.run(reassign_trial, engine, k, Path(tmp)))
            print(f"reassign trial {k}: {reassign[-1]:.2f} s", file=sys.stderr, flush=True)
    median = {w: statistics.median(ts) for w, ts in times.items()}
    out = {"speedup": {str(w): round(median[1] / median[w], 2) for w in median},
           "elapsed_s_median": {str(w): round(t, 2) for w, t in median.items()},
           "elapsed_s_runs": {str(w): [round(t, 2) for t in ts] for w, ts in times.items()},
           "reassign_s": {"p50": round(percentile(reassign, 50), 2), "p99": round(percentile(reassign, 99), 2),
                          "trials": [round(t, 2) for t in reassign]},
           "answer": answer,
           "settings": {"job": f"primes below {args.range_end}, {SHARDS} shards, busybox awk", "shards_at_once": 1,
                        "transport": "libp2p, one process", "cpus": 2, "engine": "scripts/engine.sh"}}
    write_result(args.out, out)


if __name__ == "__main__":
    main()
