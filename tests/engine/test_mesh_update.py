"""Rolling updates of a CAR job on the real engine: three nodes (memory transport, real clock) run a
three-replica web app, each replica run in place by the ``Reconciler`` (as a job with a UDP port
is); a new spec moves one replica at a time, in index order, each once the one below is healthy
on it, so at most one replica is ever down; a spec whose image does not exist is refused by the
runner of replica 0 before it stops anything, and the update is rolled back at once (well before
its progress deadline) with no replica down."""

from __future__ import annotations

import docker
import trio

from mesh._identity import NodeIdentity
from mesh._jobspec import CarJob, RollingUpdate, revision_of, spec_hash
from mesh._jobspec_load import parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._reconciler import Reconciler
from mesh._rollout import Rollouts
from mesh._runner_car import CarRunner
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import STOP
from mesh._transport import MemoryNetwork

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from .test_mesh_car import answers, until

OLD = parse_spec("""
kind: car
name: web
replicas: 3
resources: {cpu_millis: 100, memory_mb: 32}
ports: [{container: 8080}]
env: {GREETING: one}
health: {type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1}
restart: {policy: always, backoff: {initial_s: 1, max_s: 5}}
car: {image: "localhost/deedmesh-busybox:1", command: [httpd, -f, -p, "8080", -h, /www], pull: never}
""")
assert isinstance(OLD, CarJob)
NEW = OLD.model_copy(update={"env": {"GREETING": "two"}})
# the default progress deadline (300 s): a missing image is reported by the runner at once
BROKEN = NEW.model_copy(update={"car": NEW.car.model_copy(update={"image": "localhost/deedmesh-missing:1"}),
                                "update": RollingUpdate()})
IDS = [NodeIdentity(bytes([0xC0 + i]) * 32) for i in range(3)]


def reports(nodes: dict[str, Node]) -> dict[int, tuple[str, str, str]]:
    """Each replica of job 7 as its holder's own claim set says: (revision, state, failed revision)."""
    out = {}
    for address, node in nodes.items():
        own = node.claims.get(address)
        for entry in () if own is None else own.claims:
            if entry.job_id == 7:
                running, failed = own.revisions_of.get((7, entry.replica), ("", ""))
                out[entry.replica] = (running, entry.state, failed)
    return out


async def test_a_car_update_moves_one_replica_at_a_time_and_a_broken_one_is_rolled_back(
        engine: docker.DockerClient) -> None:
    network = MemoryNetwork()
    runners = {i.address: CarRunner(engine, i.address) for i in IDS}
    nodes: dict[str, Node] = {}
    samples: list[dict[int, tuple[str, str, str]]] = []

    async def run(ident: NodeIdentity) -> None:
        async with open_node(NodeConfig(), ident, network.endpoint(ident.address), capacity(), lambda _: True,
                             escrow=ESCROW) as node, trio.open_nursery() as inner:
            reconciler = Reconciler(runners[ident.address], check_s=0.3, on_change=node.notify)
            nodes[ident.address] = node
            await inner.start(reconciler.run)
            await inner.start(lambda task_status: run_scheduler(
                node, on_plan=reconciler.offer, states=reconciler.state_of,
                rollouts=Rollouts(node, reconciler.revision_of), task_status=task_status))

    async def sample() -> None:
        while True:
            samples.append(reports(nodes))
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            for ident in IDS:
                nursery.start_soon(run, ident)
            await until(lambda: len(nodes) == 3 and all(len(n.membership.alive()) == 2 for n in nodes.values()),
                        30, "three nodes alive")
            first = nodes[IDS[0].address]
            first.announce_job(submission(1, spec_hash(OLD)), CSP, OLD)
            await until(lambda: len(assignment(first, 7)) == 3, 30, "three replicas placed")
            placed = assignment(first, 7)
            await until(lambda: all(answers(runners[node], 7, r) for r, node in placed.items()), 60,
                        "every replica answering", blocking=True)
            await until(lambda: [s for _, s, _ in reports(nodes).values()] == ["healthy"] * 3, 30, "all healthy")
            nursery.start_soon(sample)

            first.announce_job(submission(2, spec_hash(NEW)), CSP, NEW)
            new = revision_of(NEW)
            await until(lambda: all(r == (new, "healthy", "") for r in reports(nodes).values())
                        and len(reports(nodes)) == 3, 90, "every replica healthy on the new revision")
            update = list(samples)
            # at most one replica was ever not healthy, and replicas moved in index order
            assert max(sum(1 for _, state, _ in s.values() if state != "healthy") for s in update) <= 1
            moved_at = {r: next(i for i, s in enumerate(update) if s.get(r, ("",))[0] == new) for r in range(3)}
            assert moved_at[0] <= moved_at[1] <= moved_at[2]
            for r, node in placed.items():  # the containers themselves run the new revision
                status = runners[node].status(7, r)
                assert status is not None
                assert (status.revision, status.running) == (new, True)
            assert placed == assignment(first, 7)  # an update moves no replica to another node

            samples.clear()
            first.announce_job(submission(3, spec_hash(BROKEN)), CSP, BROKEN)
            broken = revision_of(BROKEN)
            await until(lambda: reports(nodes).get(0, ("", "", ""))[2] == broken, 60, "the failure marked")
            await until(lambda: all(r[:2] == (new, "healthy") for r in reports(nodes).values()), 60,
                        "every replica healthy on the previous revision again")
            assert all(s.get(r, (new,))[0] == new for s in samples for r in range(3))  # nobody left it
            # the image is checked before the running container is given up: no replica was ever down
            assert max(sum(1 for _, state, _ in s.values() if state != "healthy") for s in samples) == 0
            first.announce_job(submission(4, STOP), CSP, None)
            await until(lambda: not any(r.list_managed() for r in runners.values()), 60, "every container removed",
                        blocking=True)
            nursery.cancel_scope.cancel()
    finally:
        for runner in runners.values():
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
