"""The mesh runs a WAR job from a real git repository in real containers: two nodes (memory
transport, real clock) place it, the holder's WAR supervisor builds and serves it, and the other
node sees which commit serves, a broken commit's failed rollout as an event, and the log line on
it through the holder; a stop removes every container and checkout."""

from __future__ import annotations

from pathlib import Path

import docker
import trio

from mesh._identity import NodeIdentity
from mesh._job_events import JobEvents
from mesh._jobspec import spec_hash
from mesh._node import Node, NodeConfig, open_node
from mesh._runner_car import CarRunner
from mesh._runner_war import WarSupervisor
from mesh._scheduler import Plan, actions_of, assignment, run_scheduler
from mesh._submission import STOP
from mesh._transport import MemoryNetwork
from mesh._wire_capacity import Capacity, Resources
from mesh._wire_claim import ReplicaState

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from .test_war_runner import Origin, get, spec_for, until

IDS = [NodeIdentity(bytes([0xC0 + i]) * 32) for i in range(2)]


def war_capacity() -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    return Capacity(version=1, total=total, free=total, tags=("runner:war",))


async def test_the_mesh_runs_a_war_job_and_every_node_sees_its_versions(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    first = origin.push("one")
    spec = spec_for(origin)
    network = MemoryNetwork()
    runners = {i.address: CarRunner(engine, i.address) for i in IDS}
    wars: dict[str, WarSupervisor] = {}
    nodes: dict[str, Node] = {}
    events = {i.address: JobEvents() for i in IDS}

    async def run(ident: NodeIdentity) -> None:
        async with open_node(NodeConfig(), ident, network.endpoint(ident.address), war_capacity(),
                             lambda _: True, escrow=ESCROW) as node, trio.open_nursery() as inner:
            war = WarSupervisor(runners[ident.address], tmp_path / ident.address, on_change=node.notify,
                                check_s=0.5)
            nodes[ident.address], wars[ident.address] = node, war
            await inner.start(war.run)

            def states(job_id: int, replica: int) -> tuple[ReplicaState, int]:
                report = war.report(job_id, replica)
                return ("claimed", 0) if report is None else (report.state, report.restarts)

            def versions(job_id: int, replica: int) -> tuple[str, str] | None:
                report = war.report(job_id, replica)
                return None if report is None else (report.serving or "", report.failed or "")

            def on_plan(plan: Plan) -> None:
                war.offer(plan)

            await inner.start(lambda task_status: run_scheduler(
                node, on_plan=on_plan, states=states, versions=versions, events=events[ident.address],
                task_status=task_status))

    try:
        async with trio.open_nursery() as nursery:
            for ident in IDS:
                nursery.start_soon(run, ident)
            await until(lambda: len(nodes) == 2 and all(len(n.membership.alive()) == 1 for n in nodes.values()),
                        30, "two nodes alive")
            a, b = (nodes[i.address] for i in IDS)
            a.announce_job(submission(1, spec_hash(spec)), CSP, spec)
            await until(lambda: len(assignment(b, 7)) == 1, 30, "the replica placed")
            holder = assignment(b, 7)[0]
            viewer = b if holder == a.address else a

            def seen(node: Node) -> tuple[str, str] | None:
                held = node.claims.get(holder)
                return None if held is None else held.versions_of.get((7, 0))

            await until(lambda: seen(viewer) == (first, ""), 60, "the other node seeing version one serve")
            war = wars[holder].replicas.get((7, 0))
            assert war is not None
            port = war.front_port(8080)
            assert port is not None
            assert await get(port) == "<p>version one</p>\n"
            entry = next(e for e in viewer.claims[holder].claims if e.job_id == 7)
            await until(lambda: next(e for e in viewer.claims[holder].claims if e.job_id == 7).state == "healthy",
                        30, "the replica healthy in the claim set")
            assert entry.generation == 1

            broken = origin.push("fail")
            await until(lambda: seen(viewer) == (first, broken), 60, "the failed rollout seen by the other node")
            whats = [(e.what, e.node, e.detail) for e in events[viewer.address].of(7)]
            assert ("version", holder, f"serving {first}") in whats
            assert ("rollout-failed", holder, f"{broken} failed; {first} keeps serving") in whats
            log_text = await trio.to_thread.run_sync(wars[holder].logs, 7, 0, 20)
            assert log_text.startswith(f"[deedmesh] rollout of {broken} failed: build of {broken} exited 3")
            assert await get(port) == "<p>version one</p>\n"
            counters = wars[holder].counters
            assert (counters["rollouts_served"], counters["rollouts_failed"]) == (1, 1)

            viewer.announce_job(submission(2, STOP), CSP, None)
            await until(lambda: actions_of(a).get(7) == (2, True) and not wars[holder].replicas.items, 30,
                        "the stop reaching the holder")
            await until(lambda: not (tmp_path / holder / "7-0").exists(), 30, "the checkout removed")
            assert not await trio.to_thread.run_sync(runners[holder].list_managed)
            nursery.cancel_scope.cancel()
    finally:
        for runner in runners.values():  # whatever a failed run left behind, by this test's node labels
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
