"""Recent events of each job as one node saw them, for ``job status``: the CSP's actions, where each
replica was placed and moved, and how it is doing (state, restarts).

Nothing here is gossiped: every node derives its own history from what its view shows after each
plan (the winning claims of each job, the state and restart count each holder publishes in its
claim set, the newest submission relayed for the job). Any node's history is therefore a faithful
account of what that node saw, timed by its clock; two nodes' histories agree on the facts, not
necessarily on the times. Each job keeps its newest ``MAX_EVENTS`` events; a job the node forgets
takes its history with it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._placement import Claim
from ._wire_claim import Claims

MAX_EVENTS = 20  # per job
_NO_WINNERS: Mapping[int, Claim] = MappingProxyType({})


@dataclass(frozen=True)
class JobEvent:
    at_ms: int  # this node's wall clock
    job_id: int
    what: str  # submitted, stopped, placed, moved (to ``node``), unplaced, state, restarted, version,
    # rollout-failed, result, revision (a replica runs a new spec revision), update-failed (a replica
    # did not get healthy on one: the update is rolled back)
    replica: int | None = None
    node: str | None = None
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        return {"at_ms": self.at_ms, "what": self.what, "replica": self.replica, "node": self.node,
                "detail": self.detail}


# what one node last saw of one replica: holder, generation, state, restarts, and for a WAR
# replica the version it serves and the last one whose rollout failed ("": none)
# ... a ChainDist run's result digest ("": none), and in an updated job the spec revision it runs
# and one it failed to reach
_Seen = tuple[str, int, str, int, str, str, str, str, str]
_Report = tuple[str, int, str, str, str, str, str]  # state, restarts, serving, failed, digest, revision, failed


class JobEvents:
    """The bounded event history of every job a node knows."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._events: dict[int, deque[JobEvent]] = {}
        self._replicas: dict[int, dict[int, _Seen]] = {}
        self._last_holder: dict[int, dict[int, str]] = {}  # job -> replica -> its last holder, placed or not
        self._actions: dict[int, tuple[int, bool]] = {}  # job -> (newest nonce, stopped)
        # what the last call saw, to skip the jobs nothing touched since: each job's winners (the
        # plan memo hands back the same mapping while they hold) and each node's claim set, with
        # its entries as (job, replica) -> (state, restarts)
        self._winners: dict[int, Mapping[int, Claim]] = {}
        self._reports: dict[str, tuple[Claims, dict[tuple[int, int], _Report]]] = {}

    def of(self, job_id: int) -> list[JobEvent]:
        return list(self._events.get(job_id, ()))

    def observe(self, now_ms: int, actions: Mapping[int, tuple[int, bool]],
                winners: Mapping[int, Mapping[int, Claim]], claim_sets: Mapping[str, Claims]) -> None:
        """Record what changed since the last call. ``actions``: job -> (newest nonce, stopped);
        ``winners``: job -> replica -> winning claim; ``claim_sets``: node -> its claim set (for the
        state and restarts it reports)."""
        changed = {node for node, held in claim_sets.items() if self._reports.get(node, (None,))[0] is not held}
        for node in changed:
            held = claim_sets[node]
            versions, results, revisions = held.versions_of, held.results_of, held.revisions_of
            self._reports[node] = (held, {(c.job_id, c.replica): (c.state, c.restarts,
                                                                  *versions.get((c.job_id, c.replica), ("", "")),
                                                                  results.get((c.job_id, c.replica), ""),
                                                                  *revisions.get((c.job_id, c.replica), ("", "")))
                                          for c in held.claims})
        for node in set(self._reports) - set(claim_sets):
            del self._reports[node]
        for job_id in set(self._actions) - set(actions):
            self._events.pop(job_id, None)
            self._replicas.pop(job_id, None)
            self._last_holder.pop(job_id, None)
            self._actions.pop(job_id, None)
            self._winners.pop(job_id, None)
        for job_id, (nonce, stopped) in sorted(actions.items()):
            won = winners.get(job_id, _NO_WINNERS)
            if (self._actions.get(job_id) == (nonce, stopped) and self._winners.get(job_id) is won
                    and not any(c.node in changed or c.node not in self._reports for c in won.values())):
                continue  # the same action, winners and holders' reports as last time: nothing new
            self._winners[job_id] = won
            if self._actions.get(job_id) != (nonce, stopped):
                self._actions[job_id] = (nonce, stopped)
                self._add(JobEvent(now_ms, job_id, "stopped" if stopped else "submitted", detail=f"nonce {nonce}"))
            seen = self._replicas.setdefault(job_id, {})
            now: dict[int, _Seen] = {}
            for r, c in won.items():
                report = self._reports.get(c.node)
                nothing: _Report = ("claimed", 0, "", "", "", "", "")
                seen_there = nothing if report is None else report[1].get((job_id, r), nothing)
                now[r] = (c.node, c.generation, *seen_there)
            for replica in sorted(set(seen) | set(now)):
                self._compare(now_ms, job_id, replica, seen.get(replica), now.get(replica))
            self._replicas[job_id] = now

    def _compare(self, at: int, job_id: int, replica: int, before: _Seen | None, after: _Seen | None) -> None:
        if after is None:
            assert before is not None
            self._add(JobEvent(at, job_id, "unplaced", replica, before[0], f"was on {before[0]}"))
            return
        node, generation, state, restarts, serving, failed, digest, revision, failed_revision = after
        last = self._last_holder.setdefault(job_id, {}).get(replica)
        self._last_holder[job_id][replica] = node
        if last is None:
            self._add(JobEvent(at, job_id, "placed", replica, node, f"generation {generation}"))
        elif last != node:  # directly, or after a while unplaced (its holder died)
            self._add(JobEvent(at, job_id, "moved", replica, node, f"from {last}, generation {generation}"))
        elif before is None:
            self._add(JobEvent(at, job_id, "placed", replica, node, f"again, generation {generation}"))
        if (before is None or before[0] != node or before[2] != state) and state != "claimed":
            self._add(JobEvent(at, job_id, "state", replica, node, state))
        if before is not None and before[0] == node and restarts > before[3]:
            self._add(JobEvent(at, job_id, "restarted", replica, node, f"{restarts} restarts"))
        same_holder = before is not None and before[0] == node
        if serving and not (same_holder and before is not None and before[4] == serving):
            self._add(JobEvent(at, job_id, "version", replica, node, f"serving {serving}"))
        if failed and not (same_holder and before is not None and before[5] == failed):
            self._add(JobEvent(at, job_id, "rollout-failed", replica, node,
                              f"{failed} failed; {serving or 'nothing'} keeps serving"))
        if digest and not (same_holder and before is not None and before[6] == digest):
            self._add(JobEvent(at, job_id, "result", replica, node, f"digest {digest}"))
        if revision and not (same_holder and before is not None and before[7] == revision):
            self._add(JobEvent(at, job_id, "revision", replica, node, f"runs revision {revision}"))
        if failed_revision and not (same_holder and before is not None and before[8] == failed_revision):
            self._add(JobEvent(at, job_id, "update-failed", replica, node,
                               f"revision {failed_revision} did not get healthy; the update is rolled back"))

    def _add(self, event: JobEvent) -> None:
        self._events.setdefault(event.job_id, deque(maxlen=self.max_events)).append(event)
