"""Rolling updates (``_rollout``): the pure gate, and the whole leaderless protocol on the memory
mesh with a fake runner (the real runners are exercised in tests/engine/test_mesh_update.py):
replicas move in index order, never more than the batch at once, and a revision that does not get
healthy is rolled back on every replica."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh._jobspec import Port, RecreateUpdate, RollingUpdate, revision_of
from mesh._node import Node
from mesh._rollout import ALL_AT_ONCE, ReplicaRevision, Rollouts, batch_of, choose
from mesh._scheduler import Plan, run_scheduler
from mesh._transport import MemoryNetwork
from mesh._wire_claim import ReplicaState

from .test_jobs_gossip import ESCROW
from .test_node_memory import IDS, all_alive, mesh, until
from .test_scheduler import SPEC, announce

OLD = SPEC.model_copy(update={"replicas": 3})
NEW = OLD.model_copy(update={"env": {"GREETING": "v2"}})
P, T = revision_of(OLD), revision_of(NEW)


def test_revision_ignores_the_replica_count_and_the_update_strategy_only() -> None:
    assert revision_of(OLD) == revision_of(OLD.model_copy(update={"replicas": 7, "update": RecreateUpdate(
        strategy="recreate")}))
    assert P != T
    assert batch_of(OLD) == 1  # the default: max_unavailable 0, max_surge 1
    # behind fronts a moving replica stays available: max_surge of them at once, at least one
    assert batch_of(OLD.model_copy(update={"update": RollingUpdate(max_unavailable=2, max_surge=0)})) == 1
    assert batch_of(OLD.model_copy(update={"update": RollingUpdate(max_unavailable=0, max_surge=3)})) == 3
    # in place (a udp port) a moving replica is down: max_unavailable of them
    udp = OLD.model_copy(update={"ports": (Port(container=53, protocol="udp"),),
                                 "update": RollingUpdate(max_unavailable=2, max_surge=3)})
    assert batch_of(udp) == 2
    assert batch_of(OLD.model_copy(update={"update": RecreateUpdate(strategy="recreate")})) == ALL_AT_ONCE


def test_choose() -> None:
    healthy_p = {r: ReplicaRevision(P, "healthy") for r in range(3)}
    assert choose(0, NEW, None, P, healthy_p).why == "current"  # nothing to gate without a previous spec
    assert choose(0, NEW, OLD, P, healthy_p).why == "updating"  # replica 0 goes first
    assert choose(1, NEW, OLD, P, healthy_p).spec is OLD  # ... and 1 waits for it
    on_t = healthy_p | {0: ReplicaRevision(T, "healthy")}
    assert choose(1, NEW, OLD, P, on_t).why == "updating"
    assert choose(2, NEW, OLD, P, on_t).why == "waiting"
    assert choose(1, NEW, OLD, P, healthy_p | {0: ReplicaRevision(T, "starting")}).why == "waiting"
    assert choose(2, NEW, OLD, "", healthy_p).why == "new"  # nothing running: straight to the target
    assert choose(2, NEW, OLD, T, healthy_p).why == "updated"
    failed = on_t | {1: ReplicaRevision(P, "healthy", failed=T)}
    assert all(choose(r, NEW, OLD, run, failed).spec is OLD for r, run in ((0, T), (2, P), (2, "")))
    assert choose(0, NEW, OLD, P, healthy_p | {2: ReplicaRevision(P, "healthy", failed="0badc0de")}).spec is NEW


@settings(max_examples=200, deadline=None)
@given(replicas=st.integers(1, 8), budget=st.integers(0, 3), surge=st.integers(0, 3), data=st.data())
def test_at_most_a_batch_of_replicas_leave_the_old_revision_before_they_are_done(
        replicas: int, budget: int, surge: int, data: st.DataObject) -> None:
    if budget == surge == 0:
        surge = 1
    target = NEW.model_copy(update={"replicas": replicas, "update": RollingUpdate(max_unavailable=budget,
                                                                                  max_surge=surge)})
    batch = batch_of(target)
    view = {r: ReplicaRevision(P, "healthy") for r in range(replicas)}
    for _ in range(4 * replicas + 4):  # holders act one at a time, in any order; updates end at random
        r = data.draw(st.integers(0, replicas - 1))
        if choose(r, target, OLD, view[r].revision, view).spec is target and view[r].revision == P:
            view[r] = ReplicaRevision(T, "starting")
        elif view[r].revision == T and data.draw(st.booleans()):
            view[r] = ReplicaRevision(T, "healthy")
        in_flight = [x for x, seen in view.items() if seen.revision == T and not seen.done]
        assert len(in_flight) <= batch
        # every replica in flight has fewer than a batch of unfinished replicas below it
        assert all(sum(1 for y in range(x) if not (view[y].revision == T and view[y].done)) < batch
                   or view[x].done for x in in_flight)
    for _ in range(replicas):  # left alone, the update finishes
        for r in range(replicas):
            if choose(r, target, OLD, view[r].revision, view).spec is target:
                view[r] = ReplicaRevision(T, "healthy")
    assert all(seen == ReplicaRevision(T, "healthy") for seen in view.values())


class FakeRunner:
    """Runs plans the way a runner would, on the fake clock: a replica offered a revision is
    "starting" for ``start_s`` and then "healthy", unless its spec's env says BROKEN (it never gets
    healthy). ``history`` records (time, replica, revision, state) on every change."""

    def __init__(self, node: Node, start_s: float, history: list[tuple[float, int, str, str]]) -> None:
        self.node, self.start_s, self.history = node, start_s, history
        self.running: dict[tuple[int, int], tuple[str, float, bool]] = {}  # -> (revision, since, broken)

    def offer(self, plan: Plan) -> None:
        for job_id, replica in plan.holding.items():
            spec = plan.specs[job_id]
            revision = revision_of(spec)
            if self.running.get((job_id, replica), ("",))[0] != revision:
                self.running[(job_id, replica)] = (revision, trio.current_time(), "BROKEN" in spec.env)
                self.history.append((trio.current_time(), replica, revision, "starting"))
        for gone in set(self.running) - set(plan.holding.items()):
            del self.running[gone]

    def revision_of(self, job_id: int, replica: int) -> tuple[str, ReplicaState, str] | None:
        found = self.running.get((job_id, replica))
        if found is None:
            return None
        revision, since, broken = found
        return revision, "starting" if broken or trio.current_time() < since + self.start_s else "healthy", ""

    def state_of(self, job_id: int, replica: int) -> tuple[ReplicaState, int]:
        found = self.revision_of(job_id, replica)
        return ("claimed" if found is None else found[1]), 0

    async def tick(self) -> None:  # a runner tells the scheduler when a replica's state changes
        while True:
            await trio.sleep(0.5)
            self.node.notify()


@asynccontextmanager
async def rolled(n: int, history: list[tuple[float, int, str, str]]) -> AsyncIterator[list[Node]]:
    async with mesh(MemoryNetwork(), IDS[:n], escrow=ESCROW) as nodes, trio.open_nursery() as nursery:
        for node in nodes:
            runner = FakeRunner(node, 3.0, history)
            nursery.start_soon(runner.tick)
            await nursery.start(partial(run_scheduler, node, on_plan=runner.offer, states=runner.state_of,
                                        rollouts=Rollouts(node, runner.revision_of)))
        await until(lambda: all_alive(nodes))
        yield nodes
        nursery.cancel_scope.cancel()


def replicas_on(nodes: list[Node], revision: str, state: str = "healthy") -> set[int]:
    """The replicas whose holder says it runs ``revision`` in ``state``, as every node sees it."""
    seen = []
    for viewer in nodes:
        on = set()
        for held in viewer.claims.values():
            for c in held.claims:
                if held.revisions_of.get((c.job_id, c.replica), ("",))[0] == revision and c.state == state:
                    on.add(c.replica)
        seen.append(on)
    return seen[0] if all(s == seen[0] for s in seen) else set()


async def test_an_update_moves_one_replica_at_a_time_in_index_order(autojump_clock: trio.testing.MockClock) -> None:
    history: list[tuple[float, int, str, str]] = []
    async with rolled(3, history) as nodes:
        announce(nodes[0], 1, OLD)
        await until(lambda: len([h for h in history if h[2] == P]) == 3)
        await trio.sleep(5)  # every replica healthy on the old revision
        began = len(history)
        announce(nodes[1], 2, NEW)
        await until(lambda: replicas_on(nodes, T) == {0, 1, 2}, deadline_s=120)
        moves = [h for h in history[began:] if h[2] == T]
        assert [m[1] for m in moves] == [0, 1, 2]  # in index order, each once
        # each replica started only after the one below it was healthy (3 s after it started)
        assert all(later[0] >= earlier[0] + 3.0 for earlier, later in itertools.pairwise(moves))
        assert not [h for h in history[began:] if h[2] == P]  # nobody went back


async def test_a_revision_that_never_gets_healthy_is_rolled_back_everywhere(
        autojump_clock: trio.testing.MockClock) -> None:
    history: list[tuple[float, int, str, str]] = []
    broken = NEW.model_copy(update={"env": {"BROKEN": "1"}, "update": RollingUpdate(progress_deadline_s=20)})
    async with rolled(3, history) as nodes:
        announce(nodes[0], 1, OLD)
        await until(lambda: replicas_on(nodes, P, "healthy") | replicas_on(nodes, "", "healthy") == {0, 1, 2}
                    or len([h for h in history if h[2] == P]) == 3)
        await trio.sleep(5)
        began = trio.current_time()
        announce(nodes[2], 2, broken)
        await until(lambda: replicas_on(nodes, P) == {0, 1, 2} and trio.current_time() > began + 20, deadline_s=120)
        tried = [h for h in history if h[2] == revision_of(broken)]
        assert [h[1] for h in tried] == [0]  # only replica 0 tried it; the others never left the old one
        failed = {held.revisions_of[(7, 0)][1] for n in nodes for held in n.claims.values() if (7, 0) in
                  held.revisions_of}
        assert failed == {revision_of(broken)}  # its holder says so, and every node sees it
        back = [h for h in history if h[1] == 0 and h[0] > tried[0][0]]
        assert back
        assert back[0][2] == P
        assert back[0][0] >= tried[0][0] + 20  # back after the deadline
