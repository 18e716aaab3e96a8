"""A CAR service updated and scaled with no failed request (real engine, three nodes on the memory
transport, each with the runners a node process has): each replica's port is held by its node
(``_runner_car_fronted``), a probe loop hammers replica 0's front through a rolling update (every
replica moves to the new revision beside the old one), a scale up (the running replicas are left
alone) and a scale down (the replicas above the new count stop); an update whose image does not
exist is rolled back on the replica that tried it, which kept serving all along."""

from __future__ import annotations

from pathlib import Path

import docker
import trio

from mesh._identity import NodeIdentity
from mesh._jobspec import CarJob, revision_of, spec_hash
from mesh._jobspec_load import parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._rollout import Rollouts
from mesh._runner_car import CarRunner
from mesh._runner_car_fronted import CarReplica
from mesh._runners import Runners
from mesh._scheduler import assignment, run_scheduler
from mesh._submission import STOP
from mesh._transport import MemoryNetwork

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from .conftest import BUSYBOX_IMAGE
from .test_mesh_car import until
from .test_war_runner import Probe

OLD = parse_spec(f"""
kind: car
name: web
replicas: 2
resources: {{cpu_millis: 100, memory_mb: 32}}
ports: [{{container: 8080}}]
env: {{GREETING: one}}
health: {{type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1}}
restart: {{policy: always, backoff: {{initial_s: 1, max_s: 5}}}}
car: {{image: "{BUSYBOX_IMAGE}", command: [httpd, -f, -p, "8080", -h, /www], pull: never}}
""")
assert isinstance(OLD, CarJob)
NEW = OLD.model_copy(update={"env": {"GREETING": "two"}})
UP, DOWN = NEW.model_copy(update={"replicas": 3}), NEW.model_copy(update={"replicas": 1})
BROKEN = DOWN.model_copy(update={"car": NEW.car.model_copy(update={"image": "localhost/deedmesh-missing:1"})})
IDS = [NodeIdentity(bytes([0xD0 + i]) * 32) for i in range(3)]


class Mesh:
    def __init__(self, engine: docker.DockerClient, tmp: Path) -> None:
        self.network = MemoryNetwork()
        self.engines = {i.address: CarRunner(engine, i.address) for i in IDS}
        self.nodes: dict[str, Node] = {}
        self.runners: dict[str, Runners] = {}
        self.tmp = tmp

    async def run(self, ident: NodeIdentity) -> None:
        async with open_node(NodeConfig(), ident, self.network.endpoint(ident.address), capacity(), lambda _: True,
                             escrow=ESCROW) as node, trio.open_nursery() as inner:
            runners = Runners(node, self.engines[ident.address], self.tmp / ident.address, check_s=0.3)
            self.nodes[ident.address], self.runners[ident.address] = node, runners
            await inner.start(runners.run)
            await inner.start(lambda task_status: run_scheduler(
                node, on_plan=runners.offer, states=runners.state_of, rollouts=Rollouts(node, runners.revision_of),
                task_status=task_status))

    def replica(self, index: int) -> CarReplica | None:
        holder = assignment(next(iter(self.nodes.values())), 7).get(index)
        return None if holder is None else self.runners[holder].car.replicas.get((7, index))

    def on(self, spec: CarJob, replicas: int) -> bool:
        """Every replica below ``replicas`` serves ``spec``'s revision, healthy, and none above runs."""
        wanted = revision_of(spec)
        for index in range(replicas):
            found = self.replica(index)
            if found is None or found.report().revision != wanted or found.report().state != "healthy":
                return False
        return not any(s.replica >= replicas for e in self.engines.values() for s in e.list_managed() if s.job_id == 7)


async def test_a_car_service_is_updated_and_scaled_with_no_failed_request(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    mesh = Mesh(engine, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            for ident in IDS:
                nursery.start_soon(mesh.run, ident)
            await until(lambda: len(mesh.nodes) == 3
                        and all(len(n.membership.alive()) == 2 for n in mesh.nodes.values()), 30, "nodes alive")
            first = mesh.nodes[IDS[0].address]
            first.announce_job(submission(1, spec_hash(OLD)), CSP, OLD)
            await until(lambda: mesh.on(OLD, 2), 60, "two replicas healthy on the first revision", blocking=True)
            zero = mesh.replica(0)
            assert zero is not None
            port = zero.front_port(8080)
            assert port is not None
            probe = Probe(port)
            nursery.start_soon(probe.run)
            await until(lambda: len(probe.seen) > 5, 10, "the probe answered")
            before = {i: r.serving.container_id for i in (0, 1) if (r := mesh.replica(i)) and r.serving}

            first.announce_job(submission(2, spec_hash(NEW)), CSP, NEW)  # a rolling update
            await until(lambda: mesh.on(NEW, 2), 90, "both replicas on the new revision", blocking=True)
            moved = {i: r.serving.container_id for i in (0, 1) if (r := mesh.replica(i)) and r.serving}
            assert set(moved) == {0, 1}
            assert all(moved[i] != before[i] for i in (0, 1))  # new containers ...
            assert mesh.replica(0) is zero  # ... behind the same replica and front
            assert zero.front_port(8080) == port

            first.announce_job(submission(3, spec_hash(UP)), CSP, UP)  # scale up: replica 2 starts
            await until(lambda: mesh.on(UP, 3), 60, "three replicas", blocking=True)
            kept = {i: r.serving.container_id for i in (0, 1) if (r := mesh.replica(i)) and r.serving}
            assert kept == moved  # a scale rolls nothing

            first.announce_job(submission(4, spec_hash(DOWN)), CSP, DOWN)  # scale down: replicas 1 and 2 stop
            await until(lambda: mesh.on(DOWN, 1), 60, "one replica left", blocking=True)
            assert zero.serving is not None
            assert zero.serving.container_id == moved[0]

            first.announce_job(submission(5, spec_hash(BROKEN)), CSP, BROKEN)  # its image does not exist
            broken = revision_of(BROKEN)
            await until(lambda: zero.report().failed_revision == broken, 60, "the broken revision given up")
            holder = assignment(first, 7)[0]
            await until(lambda: all(n.claims.get(holder) is not None
                                    and n.claims[holder].revisions_of.get((7, 0)) == (revision_of(NEW), broken)
                                    for n in mesh.nodes.values()), 30, "every node sees the rollback")
            assert zero.serving.container_id == moved[0]  # it served all along
            await until(lambda: len(probe.seen) > 20, 10, "more probes")
            failures, answered = list(probe.failures), len(probe.seen)
            first.announce_job(submission(6, STOP), CSP, None)
            await until(lambda: not any(e.list_managed() for e in mesh.engines.values()), 60, "every container gone",
                        blocking=True)
            nursery.cancel_scope.cancel()
    finally:
        for runner in mesh.engines.values():
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
    assert failures == [], f"{len(failures)} failed requests of {answered + len(failures)}"
