"""The placement loop: each node applies the pure rules of ``_placement`` to its own view and
publishes the replicas it claims as one signed claim set (``_wire_claim``).

What goes in, identically on every node with the same view:
- the jobs: the newest action of each (job, CSP) the mesh relayed; a stopped job places nothing.
  A job id named by two CSPs (one record must be forged: only one owns the job on chain) is
  placed with the record the chain backs, once read (``_job_check``), and never by a node that
  cannot read the chain. A node with a chain check claims a job only once the chain backs it
  (``plan``'s ``may_claim``); every honest candidate reads the same chain, so an unbacked job is
  claimed by none;
- the nodes: every node with a capacity record, itself included; eligible = the license view,
  alive = membership says alive or suspect (a replica moves when its holder is dead, not when
  its beats are merely late; a node is alive to itself); total resources and tags from its capacity;
  free = total minus what the replicas it wins need (computed from claims, so every viewer
  derives the same figure instead of trusting advertised free resources), and no room at all
  once it wins ``MAX_CLAIMS`` replicas (its claim set could not carry one more);
- the claims: every node's claim set.

Out comes this node's claim set (claims, renewals; what it loses or releases is left out) and the
replicas it should run (``holding``), which a runner reconciles against.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import trio

from ._job_events import JobEvents
from ._jobspec import JobSpec
from ._membership import PeerState
from ._node import ChainCheck, KnownJob, Node
from ._placement import Claim, Demand, NodeInfo, compute_assignment, decide, placeable_ranked, resolve_claims
from ._trio_types import TaskStatus
from ._wire_capacity import Capacity, Resources
from ._wire_claim import MAX_CLAIMS, ClaimEntry, Claims, ReplicaState

if TYPE_CHECKING:
    from ._rollout import Rollouts

PLAN_GAP_S = 0.25  # the least time between two plans (and two claim set versions) of a node
PLAN_GAP_FACTOR = 10  # ... and at least this many times the last plan's wall time
STARTUP_WAIT_INTERVALS = 3  # heartbeat intervals a node waits for its first neighbour before planning alone
LEASE_MS = 30_000  # liveness, not lease expiry, moves a replica; the lease only bounds a lost release


@dataclass(frozen=True)
class Plan:
    claims: Claims  # this node's claim set
    holding: dict[int, int]  # job id -> the replica this node should run
    specs: dict[int, JobSpec]  # job id -> its spec, for the jobs held
    unverified: tuple[int, ...] = ()  # jobs it would claim once the chain is read (plan's may_claim)


def runner_tag(kind: str) -> str:
    """The capacity tag of a node that can run jobs of ``kind`` (it has the engine, git, ...)."""
    return f"runner:{kind}"


def demand_of(spec: JobSpec | None) -> Demand:
    """A job's demand; only nodes that advertise its kind's runner fit (a node without a container
    engine never claims a CAR replica it could not start)."""
    if spec is None:
        return Demand(Resources(cpu_millis=0, memory_mb=0, gpus=0, disk_mb=0), 0)
    placement, runner = spec.placement, runner_tag(spec.kind)
    return Demand(spec.resources, spec.replicas, lambda n: runner in n.tags and placement.matches(n.tags, n.total))


def minus(total: Resources, used: Sequence[Resources]) -> Resources:
    """``total`` less every amount in ``used``, floored at zero."""
    return Resources(cpu_millis=max(0, total.cpu_millis - sum(u.cpu_millis for u in used)),
                     memory_mb=max(0, total.memory_mb - sum(u.memory_mb for u in used)),
                     gpus=max(0, total.gpus - sum(u.gpus for u in used)),
                     disk_mb=max(0, total.disk_mb - sum(u.disk_mb for u in used)))


ReplicaStates = Callable[[int, int], tuple[ReplicaState, int]]  # (job, replica) -> (state, restarts) here
# (job, replica) -> (version serving, version whose rollout failed) of a WAR replica here, else None
ReplicaVersions = Callable[[int, int], tuple[str, str] | None]
# (job, replica) -> the result digest of a ChainDist run that completed here, else None
ReplicaResults = Callable[[int, int], str | None]
# (job, replica) -> (revision running here, revision it failed to reach) for updated jobs, else None
ReplicaRevisions = Callable[[int, int], tuple[str, str] | None]


def _claimed(job_id: int, replica: int) -> tuple[ReplicaState, int]:
    return "claimed", 0


def nodes_of(capacities: Mapping[str, Capacity], eligible: Mapping[str, bool],
             alive: Mapping[str, bool]) -> list[NodeInfo]:
    """The nodes of a view, with all their resources free (``plan`` takes off what claims use)."""
    return [NodeInfo(address, eligible.get(address, False), alive.get(address, False), cap.total, cap.total,
                     frozenset(cap.tags)) for address, cap in sorted(capacities.items())]


@dataclass
class PlanMemo:
    """What a node's successive plans reuse. Each entry is a pure function of what it is keyed on,
    so a plan with a memo equals one without; it only skips work. At 1,000 jobs on 20 nodes a plan
    from scratch takes ~40 ms, and nodes plan many times a second while jobs pour in; most jobs'
    claims have not changed since the last plan.

    - ``demands``: per job, the spec (by identity) and its demand;
    - ``winners``: per job, the winning claims, for the same spec, node view (``nodes_epoch``) and
      claims of the job, until the first of those claims' leases runs out;
    - ``claim_lists``: per claimant, its claim set record (by identity) as placement claims;
    - ``ranked``: per job, its placeable nodes heaviest first, for the same spec and node view (a
      job with a replica to place was ranked at every plan until placed: ~14 % of a loaded
      node's samples at 1,000 jobs on 20 nodes).
    """

    demands: dict[int, tuple[JobSpec | None, Demand]] = field(default_factory=dict)
    winners: dict[int, tuple[tuple[object, ...], int, dict[int, Claim]]] = field(default_factory=dict)
    claim_lists: dict[str, tuple[Claims, list[Claim]]] = field(default_factory=dict)
    ranked: dict[int, tuple[JobSpec | None, int, tuple[str, ...]]] = field(default_factory=dict)
    nodes_key: tuple[object, ...] = ()
    nodes_epoch: int = 0

    def demand(self, job_id: int, spec: JobSpec | None) -> Demand:
        hit = self.demands.get(job_id)
        if hit is None or hit[0] is not spec:
            hit = self.demands[job_id] = (spec, demand_of(spec))
        return hit[1]

    def winners_of(self, job_id: int, spec: JobSpec | None, demand: Demand, nodes: list[NodeInfo],
                   claims: list[Claim], now_ms: int) -> dict[int, Claim]:
        # the spec object itself (kept alive, compared by identity), the node view, and the claims
        # without their leases: a node re-signs every lease whenever it claims anything, which
        # would otherwise recompute every job it holds at every viewer. A lease only counts as
        # valid or expired (the entry lasts until the first valid one ends), and as a tie-break
        # between two claims of one node at one generation, where the leases stay in the key.
        # The winners kept may carry older leases than the claims now: ``decide`` reads the lease
        # it renews from the claims
        shape = tuple((c.replica, c.node, c.generation, c.lease_until_ms > now_ms) for c in claims)
        tie = tuple(c.lease_until_ms for c in claims) if len({c.node for c in claims}) < len(claims) else ()
        key = (spec, self.nodes_epoch, shape, tie)
        hit = self.winners.get(job_id)
        if hit is not None and hit[0][0] is spec and hit[0][1:] == key[1:] and now_ms < hit[1]:
            return hit[2]
        winners = resolve_claims(job_id, demand, nodes, claims, now_ms)
        expires = min((c.lease_until_ms for c in claims if c.lease_until_ms > now_ms), default=2**63)
        self.winners[job_id] = (key, expires, winners)
        return winners

    def ranked_of(self, job_id: int, spec: JobSpec | None, demand: Demand, nodes: list[NodeInfo]) -> tuple[str, ...]:
        hit = self.ranked.get(job_id)
        if hit is None or hit[0] is not spec or hit[1] != self.nodes_epoch:
            hit = self.ranked[job_id] = (spec, self.nodes_epoch, placeable_ranked(job_id, demand, nodes))
        return hit[2]

    def last_winners(self) -> dict[int, dict[int, Claim]]:
        """Each job's winning claims as the last plan resolved them."""
        return {job_id: winners for job_id, (_, _, winners) in self.winners.items()}

    def forget_except(self, jobs: Mapping[int, object]) -> None:
        for table in (self.demands, self.winners, self.ranked):
            for gone in set(table) - set(jobs):
                del table[gone]


def plan(me: str, now_ms: int, jobs: Mapping[int, JobSpec | None], claims: Sequence[Claim],
         capacities: Mapping[str, Capacity], eligible: Mapping[str, bool], alive: Mapping[str, bool],
         lease_ms: int = LEASE_MS, states: ReplicaStates = _claimed, memo: PlanMemo | None = None,
         may_claim: Callable[[int], bool | None] | None = None, versions: ReplicaVersions | None = None,
         results: ReplicaResults | None = None, revisions: ReplicaRevisions | None = None) -> Plan:
    """This node's claim set and replicas, from a view (module docstring). Pure (``memo`` only
    saves work: the result is the same with or without it). ``may_claim``: whether the chain backs
    a job (None: not read yet); a job it does not back is not claimed, and one not read yet is
    listed in ``Plan.unverified`` instead (``_job_check``)."""
    memo = PlanMemo() if memo is None else memo
    memo.forget_except(jobs)
    demands = {job_id: memo.demand(job_id, spec) for job_id, spec in jobs.items()}
    base = nodes_of(capacities, eligible, alive)
    nodes_key = tuple((n.address, n.eligible, n.alive, n.total, n.tags) for n in base)
    if nodes_key != memo.nodes_key:
        memo.nodes_key, memo.nodes_epoch = nodes_key, memo.nodes_epoch + 1
    of_job: dict[int, list[Claim]] = defaultdict(list)  # the rules look at one job's claims at a time
    for c in claims:
        of_job[c.job_id].append(c)
    used: dict[str, list[Resources]] = defaultdict(list)
    won: dict[int, dict[int, Claim]] = {}
    for job_id, demand in sorted(demands.items()):
        won[job_id] = memo.winners_of(job_id, jobs[job_id], demand, base, of_job[job_id], now_ms)
        for claim in won[job_id].values():
            used[claim.node].append(demand.resources)
    # a node takes on no replica past what one claim set can carry: every viewer sees it full alike
    nodes = [replace(n, free=minus(n.total, used[n.address]), slots=MAX_CLAIMS - len(used[n.address])) for n in base]
    entries: list[ClaimEntry] = []
    versioned: list[tuple[int, int, str, str]] = []
    digests: list[tuple[int, int, str]] = []
    revised: list[tuple[int, int, str, str]] = []
    holding: dict[int, int] = {}
    unverified: list[int] = []
    for job_id, demand in sorted(demands.items()):
        winners = won[job_id]
        if len(winners) >= demand.replicas and all(c.node != me for c in winners.values()):
            continue  # held in full by others: ``decide`` would say "hold nothing" (nothing to claim)
        decision = decide(job_id, demand, nodes, of_job[job_id], me, now_ms, lease_ms, winners=winners,
                          ranked=memo.ranked_of(job_id, jobs[job_id], demand, base))
        if decision.holding is None:
            continue
        if decision.claim and may_claim is not None and (backed := may_claim(job_id)) is not True:
            if backed is None:
                unverified.append(job_id)
            continue
        holding[job_id] = decision.holding
        new = decision.claim or decision.renew
        kept = new[0] if new else next(c for c in of_job[job_id] if c.node == me
                                        and c.replica == decision.holding and c.lease_until_ms > now_ms)
        state, restarts = states(job_id, kept.replica)
        if versions is not None and (v := versions(job_id, kept.replica)) is not None:
            versioned.append((job_id, kept.replica, *v))
        if results is not None and (digest := results(job_id, kept.replica)) is not None:
            digests.append((job_id, kept.replica, digest))
        if revisions is not None and (rev := revisions(job_id, kept.replica)) is not None:
            revised.append((job_id, kept.replica, *rev))
        entries.append(ClaimEntry(job_id=job_id, replica=kept.replica, generation=kept.generation,
                                  lease_until_ms=kept.lease_until_ms, state=state, restarts=restarts))
        # claiming one replica frees nothing, but a claim uses room: later jobs see less free here
        nodes = [replace(n, free=minus(n.free, [demand.resources]), slots=n.slots - 1)
                 if n.address == me and decision.claim else n for n in nodes]
    if any(e.lease_until_ms == now_ms + lease_ms for e in entries):
        # the set is re-signed anyway (a claim or a renewal): renew every entry with it, so all
        # leases end together and the next renewal is one new set a half-lease later (renewals
        # spread over time re-signed and flooded the whole set every plan, and every other node
        # re-planned on each copy)
        entries = [e.model_copy(update={"lease_until_ms": now_ms + lease_ms}) for e in entries]
    specs = {job_id: spec for job_id in holding if (spec := jobs[job_id]) is not None}
    return Plan(Claims.of(tuple(entries), versioned, digests, revised), holding, specs, tuple(unverified))


def view_of(node: Node, memo: PlanMemo | None = None, placeable: Mapping[int, KnownJob] | None = None,
            ) -> tuple[dict[int, JobSpec | None], list[Claim], dict[str, Capacity], dict[str, bool], dict[str, bool]]:
    """The inputs of ``plan`` as ``node`` sees them now (``placeable``: ``placeable_jobs(node)``, if
    the caller has it)."""
    placeable = placeable_jobs(node) if placeable is None else placeable
    jobs = {job_id: known.spec for job_id, known in placeable.items()}
    claims: list[Claim] = []
    for origin, held in node.claims.items():
        hit = None if memo is None else memo.claim_lists.get(origin)
        if hit is None or hit[0] is not held:
            hit = (held, held.as_claims(origin))
            if memo is not None:
                memo.claim_lists[origin] = hit
        claims += hit[1]
    if memo is not None:
        for gone in set(memo.claim_lists) - set(node.claims):  # a forgotten (banned, long-dead) claimant
            del memo.claim_lists[gone]
    capacities = dict(node.capacities) | {node.address: node.advertised_capacity()}
    eligible = {address: node.is_eligible(address) for address in capacities}
    # a suspect node (late beats) keeps its replicas: they move when it is dead, not on a hiccup
    alive = {address: node.membership.state(address) in (PeerState.ALIVE, PeerState.SUSPECT) for address in capacities}
    alive[node.address] = True
    return jobs, claims, capacities, eligible, alive


def placeable_jobs(node: Node) -> dict[int, KnownJob]:
    """Job id -> the newest action ``node`` knows for it. Two CSPs naming one job id means one
    record is forged: such a job is placed once the chain tells which CSP's record it backs, and
    never by a node that cannot read the chain (module docstring)."""
    return _placeable(_by_job(node), node.chain_check)


def _by_job(node: Node) -> dict[int, list[KnownJob]]:
    by_job: dict[int, list[KnownJob]] = defaultdict(list)
    for (job_id, _csp), known in node.jobs.items():
        by_job[job_id].append(known)
    return by_job


def _placeable(by_job: Mapping[int, list[KnownJob]], check: ChainCheck | None) -> dict[int, KnownJob]:
    out: dict[int, KnownJob] = {}
    for job_id, named in by_job.items():
        if len(named) > 1:
            named = [] if check is None else [k for k in named if check.verdict(k) is True]
        if len(named) == 1:
            out[job_id] = named[0]
    return out


def actions_of(node: Node) -> dict[int, tuple[int, bool]]:
    """Job -> (newest nonce, stopped) for the jobs ``node`` places."""
    return {job_id: (known.nonce, known.spec is None) for job_id, known in placeable_jobs(node).items()}


def assignment(node: Node, job_id: int) -> dict[int, str]:
    """Replica -> node for one job, as ``node`` sees it (what ``job status`` and oracles show)."""
    return assignments(node, [job_id])[job_id]


def assignments(node: Node, job_ids: Iterable[int]) -> dict[int, dict[int, str]]:
    """``assignment`` of many jobs from one reading of the view: an oracle samples every job a few
    times a second, and reading the view per job cost it 36-115 ms a sample at 100 nodes and 50
    jobs (BENCHMARKS.md, bench_oracle) against a few ms read once."""
    jobs, claims, capacities, eligible, alive = view_of(node)
    nodes, now_ms = nodes_of(capacities, eligible, alive), node.now_ms()
    return {job_id: compute_assignment(job_id, demand_of(jobs.get(job_id)), nodes, claims, now_ms)
            for job_id in job_ids}


def step(node: Node, lease_ms: int = LEASE_MS, states: ReplicaStates = _claimed, memo: PlanMemo | None = None,
         versions: ReplicaVersions | None = None, results: ReplicaResults | None = None,
         revisions: ReplicaRevisions | None = None) -> Plan:
    """Plan from ``node``'s view and publish its claim set if it changed. With a chain check, a
    job is claimed only once the chain backs it: the plan names the jobs to read, and contested
    job ids are read too."""
    check, may_claim, by_job = node.chain_check, None, _by_job(node)
    if check is not None:
        check.want(k for named in by_job.values() if len(named) > 1 for k in named)
    known = _placeable(by_job, check)
    if check is not None:
        def may_claim(job_id: int) -> bool | None:
            return check.verdict(known[job_id])
    result = plan(node.address, node.now_ms(), *view_of(node, memo, known), lease_ms=lease_ms, states=states,
                  memo=memo, may_claim=may_claim, versions=versions, results=results, revisions=revisions)
    if check is not None and result.unverified:
        check.want(known[job_id] for job_id in result.unverified)
    if node.claims.get(node.address) != result.claims:
        node.set_claims(result.claims)
    return result


async def run_scheduler(node: Node, *, lease_ms: int = LEASE_MS, on_plan: Callable[[Plan], None] | None = None,
                        states: ReplicaStates = _claimed, versions: ReplicaVersions | None = None,
                        results: ReplicaResults | None = None, events: JobEvents | None = None,
                        rollouts: Rollouts | None = None,
                        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Re-plan whenever the view changes (a job, a claim set, a liveness verdict, a capacity, a
    replica's state here), and at least every quarter lease (renewals); hand each plan to
    ``on_plan`` (the runners); ``states`` says how this node's replicas are doing. With
    ``rollouts``, updated jobs run the spec each replica's rolling update allows (``_rollout``)."""
    task_status.started()
    # a (re)started node plans once a neighbour has told it the jobs and claims (its own included):
    # planning on an empty view would publish an empty claim set and give away what it runs
    memo = PlanMemo()
    with trio.move_on_after(STARTUP_WAIT_INTERVALS * node.config.liveness.heartbeat_interval_ms / 1000):
        await node.synced.wait()
    while True:
        changed = node.changed
        began, began_at = time.perf_counter(), trio.current_time()
        updated = {} if rollouts is None else rollouts.updated()
        revisions = None if rollouts is None else partial(rollouts.revisions, updated=updated)
        result = step(node, lease_ms, states, memo, versions, results, revisions)
        if rollouts is not None and updated:
            result = rollouts.apply(result, memo.last_winners(), updated)
        # changes that arrive while jobs pour in are planned together: the next plan waits at
        # least PLAN_GAP_S, and PLAN_GAP_FACTOR times as long as this one took in wall time, so
        # planning takes at most a tenth of whatever CPU share the node gets: on a loaded host a
        # plan's wall time grows with the wait for the CPU, and so does the gap (each plan may
        # re-sign and flood the claim set, which every other node then checks and plans on)
        gap = max(PLAN_GAP_S, PLAN_GAP_FACTOR * (time.perf_counter() - began))
        if on_plan is not None:
            on_plan(result)
        if events is not None:
            events.observe(node.now_ms(), actions_of(node), memo.last_winners(), node.claims)
        with trio.move_on_after(lease_ms / 4000):
            await changed.wait()
        await trio.sleep_until(began_at + gap)
