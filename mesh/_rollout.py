"""Rolling updates with no leader: which spec each held replica runs while a job changes.

A CSP updates a job by signing a new submission with a new spec (``job update``); every node keeps
the action before it (``KnownJob.previous``). A job's *revision* is a short hash of its spec
without ``replicas`` and ``update``: a scale alone changes no replica, anything else does.

While the target revision T (the newest spec) differs from the previous one P, the holder of
replica r decides alone, from its view of the job's claim sets (each holder publishes the
revision its replica runs and a revision it failed to reach, ``Claims.revisions``):

- a replica that runs nothing yet (just placed) starts on T, and one already on T stays there;
- a replica on P moves to T once fewer than ``batch`` of the replicas below it are not yet done
  (running T and healthy, or running with no health check): replicas move in index order, at
  most ``batch`` at a time (``batch_of``: ``max_surge`` behind fronts, at least 1;
  ``max_unavailable`` in place; a ``recreate`` update moves every replica at once). Views lag by a sync wave, so a
  holder may start a moment before a lower replica's "done" is seen, never after it is undone;
- a replica that is not done on T within ``progress_deadline_s`` of starting on it (or whose
  runner gave up on T: a replica behind fronts knows when T never got healthy) marks T as
  failed in its claim set and goes back to P; every holder that sees a failed T goes back to P
  too (the update is rolled back everywhere, replicas never placed on T included). The marker
  lasts as long as that submission: a new one (even of the same spec) tries again.

How one replica moves is its runner's part: a replica behind the node's fronts (WAR, and CAR with
TCP ports only: ``_fronted``) starts the new revision beside the old and switches once it is
healthy, so no request fails; a CAR replica with a UDP port is recreated in place, so each one
that moves is unavailable until its new container is up (``batch`` of them at most).
``choose`` is pure; ``Rollouts`` keeps the little state a node needs (when each of its replicas
started on T, which ones failed) and applies the choice to each plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import trio

from ._jobspec import JobSpec, RecreateUpdate, revision_of, updated_in_place
from ._node import KnownJob, Node
from ._placement import Claim
from ._scheduler import Plan
from ._wire_claim import ReplicaState

log = logging.getLogger("deedmesh.rollout")

DONE: frozenset[str] = frozenset({"healthy", "running"})  # "running": a replica with no health check
ALL_AT_ONCE = 64  # a job has at most 64 replicas

# (job, replica) -> (revision running here, its state, a revision its runner failed to roll out),
# or None when nothing runs for it here
RunningRevision = Callable[[int, int], tuple[str, ReplicaState, str] | None]


def batch_of(spec: JobSpec) -> int:
    """How many replicas may be on their way to a new revision at once: a replica behind fronts
    stays available while it moves (its new revision starts beside the old one, one extra
    container), so ``max_surge`` of them, at least one; a replica updated in place is down while it
    moves, so ``max_unavailable`` of them (the spec requires at least one); all with ``recreate``."""
    if isinstance(spec.update, RecreateUpdate):
        return ALL_AT_ONCE
    if updated_in_place(spec):
        return max(spec.update.max_unavailable, 1)
    return max(spec.update.max_surge, 1)


@dataclass(frozen=True)
class ReplicaRevision:
    """What a replica's holder says of it: the revision it runs ("": nothing yet), its state, and
    a revision it failed to reach ("": none)."""

    revision: str
    state: str
    failed: str = ""

    @property
    def done(self) -> bool:
        return bool(self.revision) and self.state in DONE


@dataclass(frozen=True)
class Choice:
    spec: JobSpec
    why: str  # "current", "new", "updated", "updating", "waiting", "rolled-back"


def choose(replica: int, target: JobSpec, previous: JobSpec | None, running: str,
           replicas: Mapping[int, ReplicaRevision]) -> Choice:
    """The spec the holder of ``replica`` runs (module docstring). ``running``: the revision it runs
    now ("": nothing); ``replicas``: every held replica of the job as the holder sees it (its own
    included, with its own failure marker)."""
    t = revision_of(target)
    if previous is None or revision_of(previous) == t:
        return Choice(target, "current")
    if any(r.failed == t for r in replicas.values()):
        return Choice(previous, "rolled-back")
    if not running:
        return Choice(target, "new")
    if running == t:
        return Choice(target, "updated")
    if running != revision_of(previous):
        return Choice(target, "updating")  # on neither (an older spec, a lost record): straight to the newest
    behind = sum(1 for r in range(replica) if not ((seen := replicas.get(r)) is not None and seen.revision == t
                                                    and seen.done))
    return Choice(target, "updating") if behind < batch_of(target) else Choice(previous, "waiting")


class Rollouts:
    """A node's side of every rolling update (module docstring): what its claim set says of its
    replicas' revisions (``revisions``), and which spec each runs (``apply``, on every plan)."""

    def __init__(self, node: Node, running: RunningRevision) -> None:
        self.node, self._running = node, running
        self._started: dict[tuple[int, int], tuple[str, float]] = {}  # replica -> (target, trio time begun)
        self.failed: dict[tuple[int, int], tuple[str, int]] = {}  # replica -> (revision, nonce of that action)
        self.choices: dict[tuple[int, int], str] = {}  # replica -> the last ``Choice.why`` (status, tests)

    def updated(self) -> dict[int, KnownJob]:
        """The jobs with a previous spec, by id (a job id two CSPs name is left alone)."""
        found: dict[int, KnownJob] = {}
        named: set[int] = set()
        for (job_id, _), known in self.node.jobs.items():
            if job_id in named:
                found.pop(job_id, None)
                continue
            named.add(job_id)
            if known.previous is not None and known.spec is not None:
                found[job_id] = known
        return found

    def revisions(self, job_id: int, replica: int, updated: Mapping[int, KnownJob]) -> tuple[str, str] | None:
        """(revision running here, revision it failed to reach) for the claim set, for the jobs in
        ``updated`` (``updated()``); None for the others (they need no gate)."""
        known = updated.get(job_id)
        if known is None:
            return None
        running = self._running(job_id, replica)
        failed = self.failed.get((job_id, replica))
        return ("" if running is None else running[0],
                failed[0] if failed is not None and failed[1] == known.nonce else "")

    def apply(self, plan: Plan, winners: Mapping[int, Mapping[int, Claim]], updated: Mapping[int, KnownJob]) -> Plan:
        """``plan`` with each held replica's spec as the rollout allows (target or previous)."""
        specs, now = dict(plan.specs), trio.current_time()
        for job_id, replica in plan.holding.items():
            known = updated.get(job_id)
            if known is None or job_id not in specs:
                continue
            target, previous = specs[job_id], known.previous
            assert previous is not None  # ``updated`` holds only jobs with one
            key = (job_id, replica)
            running = self._running(job_id, replica)
            failed = self.failed.get(key)
            mine = ReplicaRevision("" if running is None else running[0], "claimed" if running is None else running[1],
                                   failed[0] if failed is not None and failed[1] == known.nonce else "")
            choice = choose(replica, target, previous, mine.revision,
                            self._peers(job_id, winners.get(job_id, {})) | {replica: mine})
            t = revision_of(target)
            on_target = mine.revision == t and mine.done
            runner_failed = running is not None and running[2] == t  # it gave up on T (and serves what it had)
            if choice.spec is target and choice.why in ("new", "updating", "updated") and not on_target:
                began = self._started.get(key)
                if began is None or began[0] != t:
                    self._started[key] = began = (t, now)
                deadline = target.update.progress_deadline_s
                if now - began[1] > deadline or runner_failed:
                    self.failed[key] = (t, known.nonce)
                    log.warning("a replica did not get healthy on the new spec: the update is rolled back",
                                extra={"job": job_id, "replica": replica, "revision": t,
                                       "deadline_s": deadline, "state": mine.state})
                    choice = Choice(previous, "rolled-back")
                    self.node.notify()  # re-sign the claim set with the marker
            else:
                self._started.pop(key, None)
            if choice.why != self.choices.get(key):
                self.choices[key] = choice.why
                if choice.why in ("updating", "waiting", "rolled-back"):
                    log.info("rollout", extra={"job": job_id, "replica": replica, "step": choice.why, "target": t})
            specs[job_id] = choice.spec
        held = set(plan.holding.items())
        for gone in [k for k in self._started if k not in held]:
            del self._started[gone]
        for table in (self.failed, self.choices):
            for gone in [k for k in table if k not in held]:
                del table[gone]
        return replace(plan, specs=specs)

    def _peers(self, job_id: int, winners: Mapping[int, Claim]) -> dict[int, ReplicaRevision]:
        out: dict[int, ReplicaRevision] = {}
        for replica, claim in winners.items():
            held = self.node.claims.get(claim.node)
            if held is None:
                continue
            revision, failed = held.revisions_of.get((job_id, replica), ("", ""))
            out[replica] = ReplicaRevision(revision, held.states_of.get((job_id, replica), "claimed"), failed)
        return out
