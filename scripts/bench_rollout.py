"""Rolling-update benchmark: how long a CAR service of 3 replicas on 3 nodes takes to move to a new
spec revision (``update_s``: from the new record's announcement until every replica serves the new
revision, healthy, as the holders report it), the time each replica takes once its turn comes
(``replica_s``), and how many requests a probe loop on every replica's front saw fail meanwhile.
Writes ``benchmarks/rollout.json``.

Nodes are real libp2p hosts in one process (127.0.0.1), each with the runners a node process has
(``mesh._runners.Runners``) on the real container engine (``scripts/engine.sh``) and the rollout
gate (``mesh._rollout``). The service is ``examples/car-web.yaml`` (busybox httpd, HTTP health
check every second from the node) with 3 replicas; each trial changes its ``env``, so every
replica starts a new container beside the serving one, one replica at a time (``max_surge: 1``).
Usage: ``python scripts/bench_rollout.py [--trials N]``.
"""

from __future__ import annotations

import argparse
import itertools
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
from eth_account import Account

from mesh._identity import NodeIdentity
from mesh._jobspec import CarJob, revision_of, spec_hash
from mesh._jobspec_load import load_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._rollout import Rollouts
from mesh._runner_car import CarRunner
from mesh._runner_war import http_ok
from mesh._runners import Runners
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import sign_submission
from mesh._transport_libp2p import open_libp2p_transport
from mesh._wire_capacity import Capacity, Resources

ROOT = Path(__file__).resolve().parent.parent
ESCROW = (31337, "0x" + "e5" * 20)
CSP_KEY = bytes.fromhex("c5" * 32)
JOB = 7
REPLICAS = 3


def service(greeting: str) -> CarJob:
    example = load_spec(ROOT / "examples" / "car-web.yaml")
    assert isinstance(example, CarJob)
    health = example.health.model_copy(update={"interval_s": 1, "timeout_s": 1}) if example.health else None
    spec = example.model_copy(update={"replicas": REPLICAS, "env": {"GREETING": greeting}, "health": health,
                                      "placement": example.placement.model_copy(update={"include": ()})})
    assert isinstance(spec, CarJob)
    return spec


class Mesh:
    def __init__(self, engine: Any, idents: list[NodeIdentity], work: Path) -> None:
        self.engine, self.idents, self.work = engine, idents, work
        self.engines = {i.address: CarRunner(engine, i.address) for i in idents}
        self.nodes: dict[str, Node] = {}
        self.runners: dict[str, Runners] = {}

    async def run(self, ident: NodeIdentity, bootstrap: list[str]) -> None:
        total = Resources(cpu_millis=2000, memory_mb=4096, gpus=0, disk_mb=0)
        cap = Capacity(version=1, total=total, free=total, tags=("runner:car",))
        async with AsyncExitStack() as stack:
            transport = await stack.enter_async_context(open_libp2p_transport(ident, bootstrap=bootstrap))
            node = await stack.enter_async_context(open_node(NodeConfig(), ident, transport, cap, lambda _: True,
                                                             escrow=ESCROW))
            runners = Runners(node, self.engines[ident.address], self.work / ident.address, check_s=0.3)
            async with trio.open_nursery() as inner:
                await inner.start(runners.run)
                await inner.start(lambda task_status: run_scheduler(
                    node, on_plan=runners.offer, states=runners.state_of,
                    rollouts=Rollouts(node, runners.revision_of), task_status=task_status))
                self.nodes[ident.address], self.runners[ident.address] = node, runners
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

    def reports(self, first: Node) -> dict[int, tuple[str, str]]:
        """Replica -> (revision, state) as its holder's runners say."""
        out: dict[int, tuple[str, str]] = {}
        for replica, holder in assignment(first, JOB).items():
            found = self.runners[holder].car.report(JOB, replica)
            if found is not None:
                out[replica] = (found.revision or "", found.state)
        return out

    def fronts(self, first: Node) -> list[int]:
        ports = []
        for replica, holder in sorted(assignment(first, JOB).items()):
            port = self.runners[holder].car.endpoints(JOB, replica).get(8080)
            if port is not None:
                ports.append(port)
        return ports

    def cleanup(self) -> None:
        for runner in self.engines.values():
            for leftover in runner.list_managed():
                self.engine.containers.get(leftover.container_id).remove(force=True)


async def poll(predicate: Any, deadline_s: float) -> None:
    with trio.fail_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)  # polling nodes in this process with a deadline


def announce(first: Node, nonce: int, spec: CarJob) -> None:
    sub = sign_submission(CSP_KEY, *ESCROW, JOB, spec_hash(spec), nonce, int(time.time()) + 600)
    first.announce_job(sub, Account.from_key(CSP_KEY).address, spec)


async def probe(port: int, counts: dict[str, int]) -> None:
    while True:
        counts["ok" if await http_ok(port, "/", 2.0) else "failed"] += 1
        await trio.sleep(0.02)


async def bench(engine: Any, trials: int, work: Path) -> dict[str, Any]:
    mesh = Mesh(engine, [node_identity(700, i) for i in range(3)], work)
    counts = {"ok": 0, "failed": 0}
    update_s: list[float] = []
    replica_s: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            first = await mesh.start(nursery)
            spec = service("v0")
            announce(first, 1, spec)
            await poll(lambda: sorted(mesh.reports(first).values()) == [(revision_of(spec), "healthy")] * REPLICAS,
                       120)
            for port in mesh.fronts(first):
                nursery.start_soon(probe, port, counts)
            for k in range(1, trials + 1):
                spec = service(f"v{k}")
                target = revision_of(spec)
                moved: dict[int, float] = {}
                began = time.monotonic()
                announce(first, k + 1, spec)
                while len(moved) < REPLICAS:
                    for replica, (revision, state) in mesh.reports(first).items():
                        if revision == target and state == "healthy" and replica not in moved:
                            moved[replica] = time.monotonic() - began
                    if time.monotonic() - began > 300:
                        raise RuntimeError(f"trial {k}: only {sorted(moved)} moved in 300 s")
                    await trio.sleep(0.02)
                update_s.append(max(moved.values()))
                done = [moved[r] for r in sorted(moved)]
                replica_s += [done[0]] + [b - a for a, b in itertools.pairwise(done)]
                print(f"trial {k}: {update_s[-1]:.2f} s (replicas done at {[round(t, 2) for t in done]})",
                      file=sys.stderr, flush=True)
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup()
    return {"update_s": {"p50": round(statistics.median(update_s), 2), "p99": round(percentile(update_s, 99), 2),
                         "trials": [round(t, 2) for t in update_s]},
            "replica_s": {"p50": round(statistics.median(replica_s), 2),
                          "p99": round(percentile(replica_s, 99), 2)},
            "probe_requests": counts["ok"] + counts["failed"], "probe_failures": counts["failed"],
            "settings": {"replicas": REPLICAS, "nodes": 3, "update": "rolling, max_surge 1",
                         "app": "examples/car-web.yaml (busybox httpd)",
                         "health": "http / every 1 s, checked from the node", "transport": "libp2p, 127.0.0.1"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "rollout.json")
    args = parser.parse_args()
    quiet_libp2p_logs()
    with project_engine(ROOT) as engine, tempfile.TemporaryDirectory(prefix="deedmesh-bench-ro-") as tmp:
        out = trio.run(bench, engine, args.trials, Path(tmp))
    write_result(args.out, out)
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
