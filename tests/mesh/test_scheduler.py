"""The placement loop on the memory transport (fake clock): a job's replicas land on distinct
nodes that every node agrees on, move when a holder goes silent, are yielded by the holder when
it comes back, and are all released on a stop; a job that fits nowhere is not placed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh._api import NodeApi
from mesh._job_events import JobEvents
from mesh._jobspec import JobSpec, spec_hash
from mesh._jobspec_load import load_spec
from mesh._membership import PeerState
from mesh._node import Node
from mesh._placement import rank
from mesh._scheduler import PlanMemo, assignment, plan, run_scheduler
from mesh._submission import STOP
from mesh._transport import MemoryNetwork
from mesh._wire_capacity import Capacity, Resources
from mesh._wire_claim import MAX_CLAIMS

from ._asgi import call
from .test_jobs_gossip import CSP, ESCROW, submission
from .test_node_memory import IDS, all_alive, mesh, until

SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml")  # 2 replicas, 64 MB each


PLANS: dict[str, int] = {}  # node -> how many plans its scheduler has made
EVENTS: dict[str, JobEvents] = {}  # node -> the job history it keeps


@asynccontextmanager
async def scheduled(network: MemoryNetwork, n: int) -> AsyncIterator[list[Node]]:
    PLANS.clear()
    EVENTS.clear()
    async with mesh(network, IDS[:n], escrow=ESCROW) as nodes, trio.open_nursery() as nursery:
        for node in nodes:
            PLANS[node.address] = 0
            EVENTS[node.address] = JobEvents()

            def count(_: object, address: str = node.address) -> None:
                PLANS[address] += 1

            await nursery.start(partial(run_scheduler, node, on_plan=count, events=EVENTS[node.address]))
        await until(lambda: all_alive(nodes))
        yield nodes
        nursery.cancel_scope.cancel()


def placed(nodes: list[Node], job_id: int = 7) -> dict[int, str] | None:
    """The assignment, if every node sees the same one."""
    views = [assignment(n, job_id) for n in nodes]
    return views[0] if all(v == views[0] for v in views) else None


def announce(node: Node, nonce: int, spec: JobSpec | None) -> None:
    node.announce_job(submission(nonce, STOP if spec is None else spec_hash(spec)), CSP, spec)


async def test_replicas_land_on_distinct_nodes_move_on_failure_and_are_yielded_on_return(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with scheduled(network, 4) as nodes:
        announce(nodes[0], 1, SPEC)
        await until(lambda: (p := placed(nodes)) is not None and len(p) == 2)
        first = placed(nodes)
        assert first is not None
        assert len(set(first.values())) == 2  # one replica per node
        gone = first[0]
        others = {i.address for i in IDS[:4]} - {gone}
        network.partition({gone}, others)
        alive = [n for n in nodes if n.address != gone]
        await until(lambda: all(n.state_of(gone) is PeerState.DEAD for n in alive))
        await until(lambda: (p := placed(alive)) is not None and len(p) == 2 and gone not in p.values())
        moved = placed(alive)
        assert moved is not None
        assert moved[1] == first[1]  # the other replica stayed where it was
        taker = moved[0]
        network.heal()
        returning = next(n for n in nodes if n.address == gone)
        await until(lambda: returning.state_of(taker) is PeerState.ALIVE)
        await until(lambda: placed(nodes) == moved)  # the returning node yields to the takeover
        await until(lambda: all(c.job_id != 7 for c in returning.claims[gone].claims))
        # a survivor's history of the job: submitted, both replicas placed, replica 0 moved to the taker
        history = [(e.what, e.replica, e.node) for e in EVENTS[taker].of(7)]
        assert history[0] == ("submitted", None, None)
        assert {("placed", 0, gone), ("placed", 1, first[1])} <= set(history)
        assert ("moved", 0, taker) in history
        assert all(e.what not in ("moved", "unplaced") or e.replica == 0 for e in EVENTS[taker].of(7))


async def test_a_stop_releases_every_replica_and_a_job_that_fits_nowhere_is_not_placed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with scheduled(MemoryNetwork(), 3) as nodes:
        huge = SPEC.model_copy(update={"resources": SPEC.resources.model_copy(update={"memory_mb": 10**6})})
        announce(nodes[1], 1, huge)
        await until(lambda: all(7 in {j for j, _ in n.jobs} for n in nodes))
        seen = dict(PLANS)
        await until(lambda: all(PLANS[a] >= seen[a] + 2 for a in seen))  # every node planned with the job known
        assert all(not held.claims for n in nodes for held in n.claims.values())
        assert await job_gauges(nodes[0]) == {"placed": 0, "partial": 0, "unplaced": 1, "stopped": 0, "twice": 0}
        announce(nodes[1], 2, SPEC)
        await until(lambda: (p := placed(nodes)) is not None and len(p) == 2)
        assert await job_gauges(nodes[0]) == {"placed": 1, "partial": 0, "unplaced": 0, "stopped": 0, "twice": 0}
        announce(nodes[2], 3, None)
        await until(lambda: all(not held.claims for n in nodes for held in n.claims.values()))
        assert placed(nodes) == {}
        assert await job_gauges(nodes[0]) == {"placed": 0, "partial": 0, "unplaced": 0, "stopped": 1, "twice": 0}


async def job_gauges(node: Node) -> dict[str, float]:
    """The placement gauges of ``node``'s ``/metrics``."""
    status, text = await call(NodeApi(node, peer_id="p", addrs=list, operator_token="t"), "GET", "/metrics")
    assert status == 200
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("deedmesh_")}
    gauges = {s: values[f'deedmesh_jobs{{state="{s}"}}'] for s in ("placed", "partial", "unplaced", "stopped")}
    return gauges | {"twice": values["deedmesh_replicas_claimed_twice"]}


def test_free_resources_are_derived_from_claims_so_a_full_node_takes_no_more() -> None:
    # two one-replica jobs of 3 GB each, two nodes of 4 GB: each node can run one of them only

    total = Resources(cpu_millis=4000, memory_mb=4096, gpus=0, disk_mb=0)
    caps = {i.address: Capacity(version=1, total=total, free=total, tags=("runner:car",)) for i in IDS[:2]}
    big = SPEC.model_copy(update={"replicas": 1, "placement": SPEC.placement.model_copy(update={"include": ()}),
                                  "resources": SPEC.resources.model_copy(update={"memory_mb": 3072})})
    jobs = {7: big, 10: big}  # the same node ranks first for both
    yes = {a: True for a in caps}
    claims: list = []
    for _ in range(3):  # rounds: each node plans on what the others claimed so far
        for address in caps:
            mine = plan(address, 1_000, jobs, claims, caps, yes, yes)
            claims = [c for c in claims if c.node != address] + mine.claims.as_claims(address)
    holders = {c.job_id: c.node for c in claims}
    assert rank(7, caps)[0] == rank(10, caps)[0]
    assert set(holders) == {7, 10}
    assert len(set(holders.values())) == 2  # not both on the better-ranked node
    assert all(len([c for c in claims if c.node == a]) == 1 for a in caps)


def test_a_node_without_the_runner_for_a_kind_never_claims_it() -> None:
    total = Resources(cpu_millis=4000, memory_mb=4096, gpus=0, disk_mb=0)
    caps = {IDS[0].address: Capacity(version=1, total=total, free=total, tags=("edge",)),  # no engine
            IDS[1].address: Capacity(version=1, total=total, free=total, tags=("edge", "runner:car"))}
    yes = {a: True for a in caps}
    one = SPEC.model_copy(update={"replicas": 1})
    assert plan(IDS[0].address, 1_000, {7: one}, [], caps, yes, yes).holding == {}
    assert plan(IDS[1].address, 1_000, {7: one}, [], caps, yes, yes).holding == {7: 0}


def test_a_node_claims_no_more_replicas_than_one_claim_set_carries() -> None:
    # MAX_CLAIMS + 22 small one-replica jobs on one roomy node: it takes MAX_CLAIMS of them (one claim set
    # carries no more); a second node joins and, seeing the first full, takes the rest
    total = Resources(cpu_millis=10**6, memory_mb=10**6, gpus=0, disk_mb=0)
    caps = {i.address: Capacity(version=1, total=total, free=total, tags=("runner:car",)) for i in IDS[:2]}
    small = SPEC.model_copy(update={"replicas": 1, "placement": SPEC.placement.model_copy(update={"include": ()})})
    jobs = {j: small for j in range(1, MAX_CLAIMS + 23)}
    yes = {a: True for a in caps}
    alone = {IDS[0].address: caps[IDS[0].address]}
    first = plan(IDS[0].address, 1_000, jobs, [], alone, yes, yes)
    assert len(first.claims.claims) == len(first.holding) == MAX_CLAIMS
    second = plan(IDS[1].address, 1_000, jobs, first.claims.as_claims(IDS[0].address), caps, yes, yes)
    assert set(second.holding) == set(jobs) - set(first.holding)
    # and the full node, planning again with the other's claims, keeps what it has and takes nothing new
    claims = first.claims.as_claims(IDS[0].address) + second.claims.as_claims(IDS[1].address)
    assert plan(IDS[0].address, 2_000, jobs, claims, caps, yes, yes).holding == first.holding


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["job", "stop", "round", "time", "die", "revive", "ban"]),
                              st.integers(0, 3), st.integers(1, 12)), min_size=1, max_size=30))
def test_a_memo_only_saves_work_every_plan_equals_one_from_scratch(ops: list[tuple[str, int, int]]) -> None:
    # a random history of a view (jobs come and stop, nodes plan in rounds, time passes, nodes die,
    # come back, lose their license); at every step each node's memoized plan equals a fresh one
    total = Resources(cpu_millis=200, memory_mb=4096, gpus=0, disk_mb=0)  # room for 2 replicas of 100 m: full nodes
    addresses = [i.address for i in IDS[:4]]
    caps = {a: Capacity(version=1, total=total, free=total, tags=("runner:car",)) for a in addresses}
    base = SPEC.model_copy(update={"placement": SPEC.placement.model_copy(update={"include": ()}),
                                   "resources": SPEC.resources.model_copy(update={"cpu_millis": 100})})
    jobs: dict[int, JobSpec | None] = {}
    held: dict[str, list] = {a: [] for a in addresses}
    eligible, alive = dict.fromkeys(addresses, True), dict.fromkeys(addresses, True)
    memos = {a: PlanMemo() for a in addresses}
    now = 1_000
    for op, who, n in ops:
        node = addresses[who]
        if op == "job":
            jobs[n] = base.model_copy(update={"replicas": 1 + n % 3})
        elif op == "stop" and n in jobs:
            jobs[n] = None
        elif op == "time":
            now += n * 2_500  # up to one lease
        elif op in ("die", "revive", "ban"):
            (alive if op != "ban" else eligible)[node] = op == "revive"
        claims = [c for a in addresses for c in held[a]]
        for a in addresses:
            fresh = plan(a, now, jobs, claims, caps, eligible, alive, lease_ms=10_000)
            memoized = plan(a, now, jobs, claims, caps, eligible, alive, lease_ms=10_000, memo=memos[a])
            assert memoized == fresh
            if op == "round":
                held[a] = fresh.claims.as_claims(a)
