"""Placement and claim resolution (DESIGN.md, "Roles and the life of a job", step 4): pure rules.

Every node and every oracle runs these functions over the same inputs (its view of the nodes, the
claims it has seen, the time) and so computes the same placement; nothing here reads a clock,
the network or the chain.

The rules, in one place:

- **Rank.** Nodes are ranked for a job by rendezvous (highest-random-weight) hashing: the weight of
  node ``n`` for job ``j`` is ``int(keccak256(j as 32 bytes big-endian || n as 20 bytes))`` and the
  heaviest node ranks first. A node's weight depends only on the job and itself, so adding or
  removing a node never reorders the others.
- **Valid claim.** A claim counts at ``now_ms`` if it is for this job, names a replica below R, its
  lease has not expired (``lease_until_ms > now_ms``), and its claimant is in the view, eligible,
  alive and still fits the job's constraints. Room is not re-checked: a holder's ``free`` already
  excludes what its replica uses, so it has room by definition.
- **Winner.** Valid claims are taken in priority order — higher ``generation``, then higher
  rendezvous weight, then later lease, then lower replica — and a claim wins if neither its
  replica nor its node has won yet. So a replica goes to its highest-generation claim, simultaneous
  equal-generation claims go to the better-ranked node, and no node wins two replicas of a job.
- **Generation.** A new claim on a replica uses 1 + the highest generation seen for that replica
  (any claim, expired or not), so a takeover always outranks the claim it replaces: a node that
  comes back after a partition finds a higher generation and yields, however well it ranks.
  A renewal keeps the generation and moves the lease.
- **Who claims.** Replicas with no winner ("unheld"), in index order, go one to one to the
  candidates in rank order: eligible, alive, fitting nodes with room (a slot left and ``free`` covers the
  demand) that win no replica of the job. In a consistent view that is exactly one claimant per
  replica; the top-ranked nodes get the replicas at first, and placement is sticky afterwards (a
  better-ranked node that joins later does not pre-empt a live holder: moving a running workload
  costs more than rank is worth).
- **Renew** when the winning claim has half of ``lease_ms`` or less left; **release** every
  unexpired claim of one's own that does not win (lost to a higher generation or better rank,
  claimant became ineligible or stopped fitting, job stopped).
- **Stop.** A stopped job is placed with ``replicas=0``: no replica index is valid, so every
  claim loses and ``decide`` releases everything; the assignment is empty everywhere.

A claim store is expected to keep the latest claim per (job, replica, node); a release is that
claim re-published with its lease ending now (``release_claim``), which replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from eth_utils import is_checksum_address

from contracts import keccak

from ._wire_capacity import Resources

UINT256_MAX = 2**256 - 1


@lru_cache(maxsize=4096)  # a plan builds a Claim per claim it sees; the check hashes the address
def _is_checksummed(address: str) -> bool:
    return bool(is_checksum_address(address))


def _require_checksummed(address: str, what: str) -> None:
    if not _is_checksummed(address):
        raise ValueError(f"{what} must be a checksummed 0x address, got {address!r}")


@dataclass(frozen=True)
class NodeInfo:
    """One node as a viewer sees it when placing a job; built by the caller from the license view,
    membership and the node's latest capacity record.

    ``eligible`` folds every on-chain condition into one bool (license active and linked, not
    frozen, suspended or blacklisted) so that these rules never depend on how the chain is read.
    """

    address: str
    eligible: bool
    alive: bool
    free: Resources
    total: Resources
    tags: frozenset[str] = frozenset()
    slots: int = 1 << 30  # replicas it may still take on (a node publishes a bounded claim set)

    def __post_init__(self) -> None:
        _require_checksummed(self.address, "NodeInfo.address")


def _always_fits(node: NodeInfo) -> bool:
    return True


@dataclass(frozen=True)
class Demand:
    """What a job asks for: ``resources`` per replica, ``replicas`` (R; 0 means stopped) and the
    job spec's placement constraints as a predicate evaluated by the caller (tags, regions, ...).

    The predicate is left out of equality and hashing: two demands are the same if they ask for
    the same amounts, and functions do not compare by meaning.
    """

    resources: Resources
    replicas: int
    fits: Callable[[NodeInfo], bool] = field(default=_always_fits, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")


@dataclass(frozen=True, order=True)
class Claim:
    """Node ``node`` claims replica ``replica`` of escrow job ``job_id`` until ``lease_until_ms``.

    ``generation`` counts takeovers of this replica (1 for the first claim, one more for each new
    claimant); it is what makes a newer claim beat an older one whatever the ranks. The claimant
    signs and gossips the claim elsewhere; here it is plain data. Ordered only so that sets of
    claims can be listed deterministically.
    """

    job_id: int
    replica: int
    node: str
    generation: int
    lease_until_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.job_id <= UINT256_MAX:
            raise ValueError(f"job_id must be a uint256, got {self.job_id}")
        if self.replica < 0:
            raise ValueError(f"replica must be >= 0, got {self.replica}")
        if self.generation < 1:
            raise ValueError(f"generation must be >= 1, got {self.generation}")
        _require_checksummed(self.node, "Claim.node")


@dataclass(frozen=True)
class Decision:
    """What node ``me`` should do for one job now.

    ``claim`` and ``renew`` hold at most one claim each (a node holds at most one replica of a
    job), ready to sign and gossip; ``release`` holds expired copies of ``me``'s losing claims, to
    gossip so others stop waiting for their leases. ``holding`` is the replica ``me`` should be
    running once it has published this decision, or None: stop anything else of this job.
    """

    holding: int | None
    claim: tuple[Claim, ...] = ()
    renew: tuple[Claim, ...] = ()
    release: tuple[Claim, ...] = ()


def compute_weight(job_id: int, address: str) -> int:
    """The rendezvous weight of ``address`` for ``job_id``: keccak256 over fixed-width encodings, so
    any implementation (Solidity included) derives the same number."""
    return int.from_bytes(keccak(job_id.to_bytes(32, "big") + bytes.fromhex(address[2:])), "big")


def rank(job_id: int, nodes: Iterable[NodeInfo | str]) -> list[str]:
    """Addresses of ``nodes`` (or addresses themselves), heaviest rendezvous weight first.

    Ties (a keccak collision) fall back to the address, so the order never depends on the input's.
    """
    return list(_rank(job_id, tuple(sorted({n.address if isinstance(n, NodeInfo) else n for n in nodes}))))


@lru_cache(maxsize=1 << 13)
def _rank(job_id: int, addresses: tuple[str, ...]) -> tuple[str, ...]:
    # remembered per job and node set: every plan ranks the nodes of each job that has a replica
    # to place, again until it is placed (a job waiting for the chain check is ranked every plan);
    # weights and the sort were ~14 % of a loaded node's samples at 1,000 jobs on 20 nodes
    return tuple(sorted(addresses, key=lambda a: (compute_weight(job_id, a), a), reverse=True))


def _index_view(nodes: Iterable[NodeInfo]) -> dict[str, NodeInfo]:
    """Nodes by address; two entries for one address would make the result depend on their order."""
    view: dict[str, NodeInfo] = {}
    for node in nodes:
        if node.address in view:
            raise ValueError(f"node {node.address} appears twice in the view")
        view[node.address] = node
    return view


def is_placeable(node: NodeInfo, demand: Demand) -> bool:
    """Whether ``node`` may hold a replica of a job at all: eligible, alive, inside the constraints."""
    return node.eligible and node.alive and demand.fits(node)


def has_room(node: NodeInfo, demand: Demand) -> bool:
    """Whether ``node`` could start one more replica: a slot left and free resources that cover the demand."""
    return node.slots > 0 and demand.resources.fits_in(node.free)


def is_valid_claim(
    claim: Claim, job_id: int, demand: Demand, view: Mapping[str, NodeInfo], now_ms: int
) -> bool:
    """Whether ``claim`` counts at ``now_ms`` (see the module docstring, "Valid claim")."""
    node = view.get(claim.node)
    return (claim.job_id == job_id and claim.replica < demand.replicas and claim.lease_until_ms > now_ms
            and node is not None and is_placeable(node, demand))


def resolve_claims(
    job_id: int, demand: Demand, nodes: Iterable[NodeInfo], claims: Iterable[Claim], now_ms: int
) -> dict[int, Claim]:
    """The winning claim of each held replica: at most one per replica and one per node.

    Valid claims are taken in a total priority order (generation, weight, lease, lower replica),
    so the result depends only on the set of claims, never on the order they arrived in.
    """
    view = _index_view(nodes)
    valid = {c for c in claims if is_valid_claim(c, job_id, demand, view, now_ms)}
    ordered = sorted(valid, key=lambda c: (c.generation, compute_weight(job_id, c.node), c.lease_until_ms,
                                           -c.replica), reverse=True)
    winners: dict[int, Claim] = {}
    placed: set[str] = set()
    for claim in ordered:
        if claim.replica not in winners and claim.node not in placed:
            winners[claim.replica] = claim
            placed.add(claim.node)
    return winners


def compute_assignment(
    job_id: int, demand: Demand, nodes: Iterable[NodeInfo], claims: Iterable[Claim], now_ms: int
) -> dict[int, str]:
    """``replica -> node`` as an observer (oracle, ``job status``) sees it; unheld replicas are absent."""
    return {r: c.node for r, c in sorted(resolve_claims(job_id, demand, nodes, claims, now_ms).items())}


def compute_next_generation(job_id: int, replica: int, claims: Iterable[Claim]) -> int:
    """1 + the highest generation seen for the replica, expired claims included, so a new claim
    beats every claim it could be competing with."""
    return 1 + max((c.generation for c in claims if c.job_id == job_id and c.replica == replica), default=0)


def compute_claimants(
    job_id: int, demand: Demand, nodes: Iterable[NodeInfo], winners: Mapping[int, Claim],
    ranked: Sequence[str] | None = None,
) -> dict[int, str]:
    """``unheld replica -> node that should claim it``: the i-th unheld replica goes to the i-th
    best-ranked candidate, so a consistent view yields exactly one claimant per replica.
    ``ranked``: ``placeable_ranked`` of the same job, demand and nodes, if the caller has it."""
    unheld = [r for r in range(demand.replicas) if r not in winners]
    if not unheld:
        return {}
    view = _index_view(nodes)
    holders = {c.node for c in winners.values()}
    if ranked is None:
        ranked = placeable_ranked(job_id, demand, view.values())
    candidates = (a for a in ranked if a not in holders and has_room(view[a], demand))
    return dict(zip(unheld, candidates, strict=False))


def placeable_ranked(job_id: int, demand: Demand, nodes: Iterable[NodeInfo]) -> tuple[str, ...]:
    """The nodes that may hold a replica of the job (``is_placeable``), heaviest first. It reads
    no free resources, so a caller may keep it while the nodes' eligibility, liveness, totals and
    tags stay the same (``_scheduler.PlanMemo``)."""
    view = _index_view(nodes)
    return tuple(a for a in rank(job_id, view.values()) if is_placeable(view[a], demand))


def release_claim(claim: Claim, now_ms: int) -> Claim:
    """``claim`` with its lease ending at ``now_ms``: invalid from now on, same generation kept so
    the next claimant still counts past it."""
    return Claim(claim.job_id, claim.replica, claim.node, claim.generation, min(claim.lease_until_ms, now_ms))


def _losing_claims(job_id: int, me: str, claims: Iterable[Claim], kept: int | None, now_ms: int) -> tuple[Claim, ...]:
    """One release per replica other than ``kept`` on which ``me`` has an unexpired claim."""
    latest: dict[int, Claim] = {}
    for c in claims:
        if c.job_id != job_id or c.node != me or c.lease_until_ms <= now_ms or c.replica == kept:
            continue
        seen = latest.get(c.replica)
        if seen is None or (c.generation, c.lease_until_ms) > (seen.generation, seen.lease_until_ms):
            latest[c.replica] = c
    return tuple(release_claim(latest[r], now_ms) for r in sorted(latest))


def decide(
    job_id: int,
    demand: Demand,
    nodes: Iterable[NodeInfo],
    claims: Iterable[Claim],
    me: str,
    now_ms: int,
    lease_ms: int,
    winners: Mapping[int, Claim] | None = None,
    ranked: Sequence[str] | None = None,
) -> Decision:
    """What ``me`` should do for ``job_id`` given its view at ``now_ms`` (rules in the module docstring).

    ``lease_ms`` is the length of a fresh lease; a winner renews once half of it is left, so a
    caller that runs this more often than every ``lease_ms / 2`` never lets a live lease lapse.
    ``winners``: ``resolve_claims`` of the same inputs, if the caller has it already (its leases
    may be older: only which claims win is read from it). ``ranked``: ``placeable_ranked`` of the
    same inputs, if the caller has it.
    """
    if lease_ms <= 0:
        raise ValueError(f"lease_ms must be > 0, got {lease_ms}")
    nodes, claims = tuple(nodes), tuple(claims)
    if winners is None:
        winners = resolve_claims(job_id, demand, nodes, claims, now_ms)
    mine = next((c for c in winners.values() if c.node == me), None)
    if mine is not None:
        # the freshest lease of that claim (a caller's winners may be from before a renewal)
        mine = max((c for c in claims if (c.node, c.replica, c.generation) == (me, mine.replica, mine.generation)),
                   key=lambda c: c.lease_until_ms, default=mine)
        renew: tuple[Claim, ...] = ()
        if 2 * (mine.lease_until_ms - now_ms) <= lease_ms:
            renew = (Claim(job_id, mine.replica, me, mine.generation, now_ms + lease_ms),)
        return Decision(mine.replica, renew=renew, release=_losing_claims(job_id, me, claims, mine.replica, now_ms))
    claimants = compute_claimants(job_id, demand, nodes, winners, ranked)
    target = next((r for r, node in claimants.items() if node == me), None)
    release = _losing_claims(job_id, me, claims, target, now_ms)
    if target is None:
        return Decision(None, release=release)
    claim = Claim(job_id, target, me, compute_next_generation(job_id, target, claims), now_ms + lease_ms)
    return Decision(target, claim=(claim,), release=release)
