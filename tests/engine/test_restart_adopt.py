"""A node that restarts adopts its running containers instead of duplicating or replacing them.

Three nodes (memory transport, real clock, real engine) place a CAR job. A holder then crashes:
its node and reconciler tasks end without stopping anything, so its container keeps running. It
comes back with the same identity, a new CarRunner and a new Reconciler, before the others judge
it dead, and its links come up a moment after it starts (a libp2p node dials its peers within a
discovery round), so its first reconcile rounds see an empty view. It must keep the same container
(same id, same start, no restart counted, no second container anywhere) under the same claim
(replica and generation), and remove a container of a replica it does not hold."""

from __future__ import annotations

import docker
import trio

from mesh._identity import NodeIdentity
from mesh._jobspec import JobSpec, spec_hash
from mesh._jobspec_load import parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._placement import rank
from mesh._reconciler import Reconciler, container_request
from mesh._runner_car import CarRunner
from mesh._scheduler import assignment, run_scheduler
from mesh._transport import MemoryNetwork
from mesh._wire_claim import TOPIC as CLAIMS_TOPIC
from mesh._wire_claim import ClaimEntry

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from .test_mesh_car import until

JOB = 7  # the job id test_jobs_gossip.submission signs
WEB = """
kind: car
name: adopt
replicas: {replicas}
resources: {{cpu_millis: 100, memory_mb: 32}}
restart: {{policy: always, backoff: {{initial_s: 1, max_s: 5}}}}
car: {{image: "localhost/deedmesh-busybox:1", command: [sleep, "600"], pull: never}}
"""
IDS = {i.address: i for i in (NodeIdentity(bytes([0xC0 + n]) * 32) for n in range(3))}
# a restarted node keeps what it finds for this long: its links stay down for two reconcile rounds
# (0.6 s), then the memory transport syncs it at once
ADOPT_GRACE_S = 3.0


class Mesh:
    """Three nodes on one memory network; every start of a node is a new life with a new runner
    and reconciler (``lives``), on the same identity."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.nursery: trio.Nursery  # set by the test, inside its nursery
        self.network = MemoryNetwork()
        self.nodes: dict[str, Node] = {}
        self.lives: dict[str, list[Reconciler]] = {address: [] for address in IDS}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._ended: dict[str, trio.Event] = {}

    def start(self, address: str) -> None:
        self.nursery.start_soon(self._life, IDS[address])

    async def crash(self, address: str) -> None:
        """End the node's tasks as a crash would: nothing stops its containers."""
        self._scopes[address].cancel()
        await self._ended[address].wait()

    async def restart(self, address: str) -> Reconciler:
        """Start the node again, unreachable until its new reconciler has done two rounds."""
        lives = len(self.lives[address])
        self.network.partition({address}, set(IDS) - {address})
        self.start(address)
        await until(lambda: len(self.lives[address]) > lives, 10, "the node back")
        reconciler = self.lives[address][-1]
        await until(lambda: reconciler.rounds >= 2, 10, "two rounds on an empty view")
        self.network.heal()
        return reconciler

    async def start_all_with(self, spec: JobSpec) -> None:
        """Every node started, all of them alive to each other, then ``spec`` announced."""
        for address in IDS:
            self.start(address)
        await self.all_alive()
        announce(self, spec)

    async def all_alive(self) -> None:
        await until(lambda: len(self.nodes) == 3 and all(len(n.membership.alive()) == 2 for n in self.nodes.values()),
                    30, "three nodes alive")

    def agreed(self) -> dict[int, str] | None:
        """The job's assignment if every node sees the same non-empty one."""
        seen = [assignment(n, JOB) for n in self.nodes.values()]
        return seen[0] if seen[0] and all(s == seen[0] for s in seen) else None

    def remove_all(self) -> None:
        for address in IDS:  # whatever a failed run left behind, by this test's node labels
            for left in CarRunner(self.engine, address).list_managed():
                self.engine.containers.get(left.container_id).remove(force=True)

    async def _life(self, ident: NodeIdentity) -> None:
        self._scopes[ident.address] = scope = trio.CancelScope()
        self._ended[ident.address] = done = trio.Event()
        try:
            with scope:
                async with open_node(NodeConfig(), ident, self.network.endpoint(ident.address), capacity(),
                                     lambda _: True, escrow=ESCROW) as node, trio.open_nursery() as inner:
                    reconciler = Reconciler(CarRunner(self.engine, ident.address), check_s=0.3,
                                            on_change=node.notify, adopt_grace_s=ADOPT_GRACE_S)
                    await inner.start(reconciler.run)
                    await inner.start(lambda task_status: run_scheduler(node, on_plan=reconciler.offer,
                                                                          states=reconciler.state_of,
                                                                          task_status=task_status))
                    self.nodes[ident.address] = node
                    self.lives[ident.address].append(reconciler)
        finally:
            done.set()


def entry(viewer: Node, holder: str, replica: int) -> ClaimEntry | None:
    held = viewer.claims.get(holder)
    return None if held is None else next((e for e in held.claims if (e.job_id, e.replica) == (JOB, replica)), None)


def announce(mesh: Mesh, spec: JobSpec) -> None:
    next(iter(mesh.nodes.values())).announce_job(submission(1, spec_hash(spec)), CSP, spec)


async def test_a_restarted_node_adopts_its_container_and_removes_a_leftover(engine: docker.DockerClient) -> None:
    spec = parse_spec(WEB.format(replicas=2))
    mesh = Mesh(engine)
    try:
        async with trio.open_nursery() as nursery:
            mesh.nursery = nursery
            await mesh.start_all_with(spec)
            await until(lambda: mesh.agreed() is not None and len(mesh.agreed() or {}) == 2, 30, "two replicas placed")
            placed = mesh.agreed()
            assert placed is not None
            holder, other = placed[0], placed[1]
            observer = mesh.nodes[other]

            def published_running() -> bool:
                e = entry(observer, holder, 0)
                return e is not None and e.state == "running"

            await until(published_running, 30, "replica 0 running, as another node sees it")
            first_life = mesh.lives[holder][0]
            before = first_life.statuses[(JOB, 0)]
            claim_before = entry(observer, holder, 0)
            seq_before = observer.store.seq_of(CLAIMS_TOPIC, holder)

            await mesh.crash(holder)
            assert await trio.to_thread.run_sync(first_life.runner.status, JOB, 0) == before  # still running
            # a leftover: a container of a replica the node does not hold (as one it lost while down)
            await trio.to_thread.run_sync(first_life.runner.start, container_request(JOB, 1, spec))
            assert [(s.job_id, s.replica) for s in first_life.runner.list_managed()] == [(JOB, 0), (JOB, 1)]

            second_life = await mesh.restart(holder)
            assert second_life.runner is not first_life.runner
            await until(lambda: [(s.job_id, s.replica) for s in second_life.runner.list_managed()] == [(JOB, 0)],
                        ADOPT_GRACE_S + 15, "the leftover removed and replica 0 kept", blocking=True)
            await until(lambda: second_life.state_of(JOB, 0) == ("running", 0), 10, "replica 0 adopted")
            await until(lambda: observer.store.seq_of(CLAIMS_TOPIC, holder) > seq_before and published_running(),
                        10, "the restarted holder's claim set, re-signed, with replica 0 running")

            after = await trio.to_thread.run_sync(second_life.runner.status, JOB, 0)
            assert after is not None
            assert (after.container_id, after.started_at, after.restarts) == \
                (before.container_id, before.started_at, before.restarts)
            # the same claim (replica, generation), and the mesh never moved it
            assert mesh.agreed() == {0: holder, 1: other}
            claim_after = entry(observer, holder, 0)
            assert claim_before is not None
            assert claim_after is not None
            assert (claim_after.generation, claim_after.restarts) == (claim_before.generation, 0)
            # one container per replica across the three nodes
            everywhere = sorted((life[-1].runner.node_address, s.job_id, s.replica) for life in mesh.lives.values()
                                for s in life[-1].runner.list_managed())
            assert everywhere == sorted([(holder, JOB, 0), (other, JOB, 1)])
            nursery.cancel_scope.cancel()
    finally:
        # outside the nursery: an await in a cancelled scope would raise Cancelled over a failure
        mesh.remove_all()


async def test_a_replica_held_after_a_takeover_stays_through_its_holders_restart(engine: docker.DockerClient) -> None:
    spec = parse_spec(WEB.format(replicas=1))
    first, second, _ = rank(JOB, list(IDS))
    mesh = Mesh(engine)
    try:
        async with trio.open_nursery() as nursery:
            mesh.nursery = nursery
            await mesh.start_all_with(spec)
            await until(lambda: mesh.agreed() == {0: first}, 30, "the replica on the best-ranked node")
            await mesh.crash(first)
            survivors = [n for a, n in mesh.nodes.items() if a != first]
            await until(lambda: all(assignment(n, JOB) == {0: second} for n in survivors), 30, "the takeover")
            await until(lambda: mesh.lives[second][-1].state_of(JOB, 0) == ("running", 0), 30, "it running there")
            mesh.start(first)  # back, but placement is sticky: it does not pre-empt the live holder
            await until(lambda: len(mesh.lives[first]) == 2, 10, "the first node back")
            await mesh.all_alive()
            before = mesh.lives[second][-1].statuses[(JOB, 0)]
            generation = entry(mesh.nodes[first], second, 0)
            assert generation is not None
            assert generation.generation == 2

            await mesh.crash(second)
            await mesh.restart(second)
            await until(lambda: mesh.agreed() is not None, 10, "the nodes agreeing again")
            assert mesh.agreed() == {0: second}
            await until(lambda: mesh.lives[second][-1].state_of(JOB, 0) == ("running", 0), 10, "replica adopted")
            assert mesh.lives[second][-1].statuses[(JOB, 0)].container_id == before.container_id
            nursery.cancel_scope.cancel()
    finally:
        # outside the nursery: an await in a cancelled scope would raise Cancelled over a failure
        mesh.remove_all()
