"""The mesh runs a CAR job in real containers: three nodes (memory transport, real clock) place a
two-replica web app, each holder's reconciler starts its container on the real engine and it
answers HTTP; when a holder's machine goes away its replica is started on the third node; a stop
removes every container."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import docker
import trio

from mesh._identity import NodeIdentity
from mesh._jobspec import spec_hash
from mesh._jobspec_load import parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._reconciler import Reconciler
from mesh._runner_car import CarRunner
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import STOP
from mesh._transport import MemoryNetwork

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity

SPEC = parse_spec("""
kind: car
name: web
replicas: 2
resources: {cpu_millis: 100, memory_mb: 32}
ports: [{container: 8080}]
health: {type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1}
restart: {policy: always, backoff: {initial_s: 1, max_s: 5}}
car: {image: "localhost/deedmesh-busybox:1", command: [httpd, -f, -p, "8080", -h, /www], pull: never}
""")
IDS = [NodeIdentity(bytes([0xB0 + i]) * 32) for i in range(3)]


def answers(runner: CarRunner, job_id: int, replica: int) -> bool:
    """The replica's running container answers HTTP on its published port (a replica run in place
    has one container; one behind fronts, its serving version: the newest running one)."""
    running = [s for s in runner.list_managed() if (s.job_id, s.replica, s.role) == (job_id, replica, "serve")
               and s.running]
    status = max(running, key=lambda s: s.started_at, default=None)
    port = None if status is None else status.host_port(8080)
    if port is None:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return b"hello" in r.read()
    except OSError:
        return False


async def until(predicate: Callable[[], bool], deadline_s: float, what: str, *, blocking: bool = False) -> None:
    """Poll ``predicate`` (in a worker thread if it calls the engine or HTTP) until it holds."""
    with trio.move_on_after(deadline_s):
        while not (await trio.to_thread.run_sync(predicate) if blocking else predicate()):  # noqa: ASYNC110
            await trio.sleep(0.2)  # polling real containers and nodes with a deadline
        return
    raise AssertionError(f"{what} within {deadline_s} s")


async def test_the_mesh_runs_a_car_job_fails_it_over_and_stops_it(engine: docker.DockerClient) -> None:
    network = MemoryNetwork()
    runners = {i.address: CarRunner(engine, i.address) for i in IDS}
    scopes = {i.address: trio.CancelScope() for i in IDS}
    nodes: dict[str, Node] = {}

    async def run(ident: NodeIdentity) -> None:
        with scopes[ident.address]:
            async with open_node(NodeConfig(), ident, network.endpoint(ident.address), capacity(),
                                 lambda _: True, escrow=ESCROW) as node, trio.open_nursery() as inner:
                reconciler = Reconciler(runners[ident.address], check_s=0.5, on_change=node.notify)
                nodes[ident.address] = node
                await inner.start(reconciler.run)
                await inner.start(lambda task_status: run_scheduler(node, on_plan=reconciler.offer,
                                                                      states=reconciler.state_of,
                                                                      task_status=task_status))

    try:
        async with trio.open_nursery() as nursery:
            for ident in IDS:
                nursery.start_soon(run, ident)
            await until(lambda: len(nodes) == 3 and all(len(n.membership.alive()) == 2 for n in nodes.values()),
                        30, "three nodes alive")
            first = nodes[IDS[0].address]
            first.announce_job(submission(1, spec_hash(SPEC)), CSP, SPEC)
            await until(lambda: len(assignment(first, 7)) == 2, 30, "two replicas placed")
            placed = assignment(first, 7)
            await until(lambda: all(answers(runners[node], 7, r) for r, node in placed.items()), 60,
                        "both replicas answering", blocking=True)
            # every node sees both replicas healthy: their state travels in the holders' claim sets
            def seen_healthy(viewer: Node) -> bool:
                entries = [e for holder in placed.values() if holder in viewer.claims
                           for e in viewer.claims[holder].claims if e.job_id == 7]
                return len(entries) == 2 and all(e.state == "healthy" and e.restarts == 0 for e in entries)

            await until(lambda: all(seen_healthy(n) for n in nodes.values()), 30, "replicas healthy everywhere")
            # replica 0's machine goes away: its node and its container are gone
            lost = placed[0]
            scopes[lost].cancel()
            await trio.to_thread.run_sync(runners[lost].stop, 7, 0)
            survivor = nodes[next(a for a in placed.values() if a != lost)]
            await until(lambda: assignment(survivor, 7).get(0) not in (None, lost), 30, "replica 0 moved")
            taker = assignment(survivor, 7)[0]
            assert taker not in placed.values()  # the third node, not the holder of replica 1
            await until(lambda: answers(runners[taker], 7, 0), 60, "replica 0 answering on the third node",
                        blocking=True)
            survivor.announce_job(submission(2, STOP), CSP, None)
            await until(lambda: not any(r.list_managed() for r in runners.values()), 60, "every container removed",
                        blocking=True)
            nursery.cancel_scope.cancel()
    finally:
        for runner in runners.values():  # whatever a failed run left behind, by this test's node labels
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
