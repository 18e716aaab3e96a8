"""Failover benchmark: a node holding a replica crashes; how long until the replica answers HTTP
on another node. Writes ``benchmarks/failover.json`` with ``failover_s`` (p50, p99) over trials.

Each trial: three nodes on real libp2p hosts (one process, 127.0.0.1), each with its placement
loop and a reconciler on the real container engine (``scripts/engine.sh``); a one-replica
busybox web app is placed and answers; then, at a random phase of the heartbeat, its holder
"crashes": its node stops (host closed) and its container is removed, as when a machine dies. The
clock runs from the crash until the replica answers HTTP on another node. Liveness interval 1 s
(dead 2.75 s after the last beat, so detection takes 1.75-2.75 s after a crash, plus a tick).
Usage: ``python scripts/bench_failover.py [--trials N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import node_identity, percentile, project_engine, quiet_libp2p_logs, write_result

from mesh._identity import NodeIdentity
from mesh._jobspec import spec_hash
from mesh._jobspec_load import parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._reconciler import Reconciler
from mesh._runner_car import CarRunner
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import sign_submission
from mesh._transport_libp2p import open_libp2p_transport
from mesh._wire_capacity import Capacity, Resources

ROOT = Path(__file__).resolve().parent.parent
ESCROW = (31337, "0x" + "e5" * 20)
CSP_KEY = bytes.fromhex("c5" * 32)
SPEC = parse_spec("""
kind: car
name: web
replicas: 1
resources: {cpu_millis: 100, memory_mb: 32}
ports: [{container: 8080}]
car: {image: "localhost/deedmesh-busybox:1", command: [httpd, -f, -p, "8080", -h, /www], pull: never}
""")


def answers(runner: CarRunner, job_id: int) -> bool:
    status = runner.status(job_id, 0)
    port = None if status is None or not status.running else status.host_port(8080)
    if port is None:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def poll(predicate: Any, deadline_s: float, blocking: bool = False) -> None:
    with trio.fail_after(deadline_s):
        while not (await trio.to_thread.run_sync(predicate) if blocking else predicate()):  # noqa: ASYNC110
            await trio.sleep(0.02)


async def trial(k: int, engine: Any) -> float:
    from eth_account import Account
    csp = Account.from_key(CSP_KEY).address
    idents = [node_identity(100 + k, i) for i in range(3)]
    runners = {i.address: CarRunner(engine, i.address) for i in idents}
    total = Resources(cpu_millis=2000, memory_mb=4096, gpus=0, disk_mb=0)
    cap = Capacity(version=1, total=total, free=total, tags=("runner:car",))
    nodes: dict[str, Node] = {}
    scopes = {i.address: trio.CancelScope() for i in idents}
    job_id = 1000 + k

    async def run(ident: NodeIdentity, bootstrap: list[str]) -> None:
        with scopes[ident.address]:
            async with AsyncExitStack() as stack:
                transport = await stack.enter_async_context(open_libp2p_transport(ident, bootstrap=bootstrap))
                node = await stack.enter_async_context(open_node(NodeConfig(), ident, transport, cap,
                                                                 lambda _: True, escrow=ESCROW))
                reconciler = Reconciler(runners[ident.address], check_s=0.5)
                async with trio.open_nursery() as inner:
                    await inner.start(reconciler.run)
                    await inner.start(lambda task_status: run_scheduler(node, on_plan=reconciler.offer,
                                                                          task_status=task_status))
                    nodes[ident.address] = node
                    await trio.sleep_forever()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, idents[0], [])
            await poll(lambda: idents[0].address in nodes, 30)
            first = nodes[idents[0].address]
            for ident in idents[1:]:
                nursery.start_soon(run, ident, first.transport.addrs()[:1])  # type: ignore[attr-defined]
            await poll(lambda: len(nodes) == 3 and all(len(n.membership.alive()) == 2 for n in nodes.values()), 60)
            sub = sign_submission(CSP_KEY, *ESCROW, job_id, spec_hash(SPEC), 1, int(time.time()) + 600)
            first.announce_job(sub, csp, SPEC)
            await poll(lambda: len(assignment(first, job_id)) == 1, 30)
            holder = assignment(first, job_id)[0]
            await poll(lambda: answers(runners[holder], job_id), 60, blocking=True)
            await trio.sleep(random.Random(k).uniform(0, 1))  # crash at any phase of the 1 s heartbeat
            crashed = time.monotonic()
            scopes[holder].cancel()  # the machine dies: its node and its container
            await trio.to_thread.run_sync(runners[holder].stop, job_id, 0, 0)
            others = [runners[a] for a in runners if a != holder]
            # the replica answers on another node (which one may settle a moment later: two nodes
            # that claim at once resolve by rank, and the loser stops its copy)
            await poll(lambda: any(answers(r, job_id) for r in others), 60, blocking=True)
            elapsed = time.monotonic() - crashed
            nursery.cancel_scope.cancel()
    finally:
        for runner in runners.values():
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "failover.json")
    args = parser.parse_args()
    quiet_libp2p_logs()
    times = []
    with project_engine(ROOT) as engine:
        for k in range(args.trials):
            times.append(trio.run(trial, k, engine))
            print(f"trial {k}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    out = {"failover_s": {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2),
                          "trials": [round(t, 2) for t in times]},
           "settings": {"heartbeat_interval_s": 1.0, "dead_after_intervals": 2.75, "nodes": 3,
                        "transport": "libp2p, one process", "engine": "dockerd (scripts/engine.sh)"}}
    write_result(args.out, out)


if __name__ == "__main__":
    main()
