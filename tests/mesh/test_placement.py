"""Placement and claim resolution: rendezvous ranking, one winner per replica, takeover by
generation, yielding after a partition, eligibility, and a simulation of whole rounds of nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh._placement import (
    Claim,
    Decision,
    Demand,
    NodeInfo,
    compute_assignment,
    compute_weight,
    decide,
    rank,
    release_claim,
    resolve_claims,
)
from mesh._wire_capacity import Resources

JOB = 7
LEASE_MS = 10_000
ROOMY = Resources(cpu_millis=8000, memory_mb=16_384, gpus=1, disk_mb=100_000)
NEED = Resources(cpu_millis=1000, memory_mb=1024, gpus=0, disk_mb=1000)
FULL = Resources(cpu_millis=999, memory_mb=16_384, gpus=1, disk_mb=100_000)  # one dimension short

job_ids = st.integers(min_value=0, max_value=2**256 - 1)


def addr(i: int) -> str:
    return to_checksum_address("0x" + keccak(b"node" + i.to_bytes(4, "big"))[-20:].hex())


ADDRS = [addr(i) for i in range(12)]


def node(a: str, *, eligible: bool = True, alive: bool = True, free: Resources = ROOMY,
         tags: frozenset[str] = frozenset()) -> NodeInfo:
    return NodeInfo(address=a, eligible=eligible, alive=alive, free=free, total=ROOMY, tags=tags)


def demand(replicas: int, fits: Callable[[NodeInfo], bool] | None = None) -> Demand:
    if fits is None:
        return Demand(resources=NEED, replicas=replicas)
    return Demand(resources=NEED, replicas=replicas, fits=fits)


Store = dict[tuple[int, int, str], Claim]


def publish(store: Store, claims: Iterable[Claim]) -> None:
    """What gossip does to a claim store: the latest claim per (job, replica, node) replaces the last."""
    for c in claims:
        store[(c.job_id, c.replica, c.node)] = c


def run_round(job_id: int, dem: Demand, nodes: list[NodeInfo], store: Store, now_ms: int) -> dict[str, Decision]:
    """Every live node decides from the same view, then all their claims are published."""
    decisions = {n.address: decide(job_id, dem, nodes, tuple(store.values()), n.address, now_ms, LEASE_MS)
                 for n in nodes if n.alive}
    for d in decisions.values():
        publish(store, (*d.claim, *d.renew, *d.release))
    return decisions


def settle(job_id: int, dem: Demand, nodes: list[NodeInfo], rounds: int = 3, now_ms: int = 0) -> Store:
    store: Store = {}
    for i in range(rounds):
        run_round(job_id, dem, nodes, store, now_ms + i)
    return store


# --- rank -------------------------------------------------------------------------------------


def test_weight_is_keccak_of_fixed_width_job_and_address() -> None:
    a = ADDRS[0]
    expected = int.from_bytes(keccak((JOB).to_bytes(32, "big") + bytes.fromhex(a[2:])), "big")
    assert compute_weight(JOB, a) == expected
    assert rank(JOB, ADDRS[:5]) == sorted(ADDRS[:5], key=lambda x: compute_weight(JOB, x), reverse=True)


@given(job_ids, st.permutations(ADDRS))
def test_rank_is_deterministic_and_permutation_invariant(job_id: int, shuffled: list[str]) -> None:
    ranked = rank(job_id, ADDRS)
    assert rank(job_id, shuffled) == ranked
    assert rank(job_id, [node(a) for a in shuffled]) == ranked
    assert sorted(ranked) == sorted(ADDRS)


def test_rank_depends_on_the_job() -> None:
    assert len({tuple(rank(j, ADDRS)) for j in range(20)}) > 1


@given(job_ids, st.sampled_from(ADDRS))
def test_removing_a_node_keeps_the_others_relative_order(job_id: int, gone: str) -> None:
    before = rank(job_id, ADDRS)
    assert rank(job_id, [a for a in ADDRS if a != gone]) == [a for a in before if a != gone]


@given(job_ids, st.integers(min_value=1, max_value=4), st.data())
@settings(max_examples=30)
def test_removing_a_node_moves_only_what_it_held(job_id: int, replicas: int, data: st.DataObject) -> None:
    nodes = [node(a) for a in ADDRS[:8]]
    dem = demand(replicas)
    store = settle(job_id, dem, nodes)
    before = compute_assignment(job_id, dem, nodes, store.values(), 10)
    assert list(before.values()) == rank(job_id, nodes)[:replicas]  # the top R got the replicas
    gone = data.draw(st.sampled_from(ADDRS[:8]))
    rest = [n for n in nodes if n.address != gone]
    run_round(job_id, dem, rest, store, 10)
    after = compute_assignment(job_id, dem, rest, store.values(), 11)
    moved = {r for r in before if before[r] != after.get(r)}
    if gone in before.values():
        [r] = moved
        assert before[r] == gone
        free = [a for a in rank(job_id, rest) if a not in before.values()]
        assert after[r] == free[0]  # the best-ranked node not already holding a replica
    else:
        assert moved == set()


# --- resolution -------------------------------------------------------------------------------

POOL = ADDRS[:5]
claims_st = st.lists(st.builds(Claim, job_id=st.sampled_from([JOB, JOB, JOB, JOB + 1]), replica=st.integers(0, 3),
                               node=st.sampled_from(POOL), generation=st.integers(1, 3),
                               lease_until_ms=st.sampled_from([99, 100, 101, 500, 500, 500])), min_size=2, max_size=14)
mostly = st.sampled_from([True, True, True, False])  # invalid claims are easy; conflicts need valid ones
view_st = st.lists(st.tuples(mostly, mostly), min_size=len(POOL), max_size=len(POOL)).map(
    lambda flags: [node(a, eligible=e, alive=al) for a, (e, al) in zip(POOL, flags, strict=True)])


def priority(c: Claim) -> tuple[int, int, int, int]:
    return (c.generation, compute_weight(JOB, c.node), c.lease_until_ms, -c.replica)


@given(view_st, claims_st, st.randoms())
def test_exactly_one_winner_per_replica_whatever_the_claim_order(
    nodes: list[NodeInfo], claims: list[Claim], rnd: object
) -> None:
    dem = demand(3)
    winners = resolve_claims(JOB, dem, nodes, claims, now_ms=100)
    shuffled = list(claims)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert resolve_claims(JOB, dem, list(reversed(nodes)), shuffled, now_ms=100) == winners
    view = {n.address: n for n in nodes}
    assert len({c.node for c in winners.values()}) == len(winners)  # one replica per node
    for r, w in winners.items():
        assert (w.replica, w.job_id) == (r, JOB)
        assert r < 3
        assert w.lease_until_ms > 100
        assert (view[w.node].eligible, view[w.node].alive) == (True, True)
    node_wins = {c.node: c for c in winners.values()}
    for c in claims:
        valid = c.job_id == JOB and c.replica < 3 and c.lease_until_ms > 100 and view[c.node].eligible \
            and view[c.node].alive
        if not valid or winners.get(c.replica) == c:
            continue
        # a valid claim loses only to a better claim on its replica or to its node's better win
        assert c.replica in winners or c.node in node_wins
        beaten = c.replica in winners and priority(winners[c.replica]) > priority(c)
        taken = c.node in node_wins and priority(node_wins[c.node]) > priority(c)
        assert beaten or taken


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4)), min_size=len(POOL), max_size=len(POOL)))
def test_with_one_claim_per_node_the_highest_generation_wins(picks: list[tuple[int, int]]) -> None:
    claims = [Claim(JOB, r, a, g, 500) for a, (r, g) in zip(POOL, picks, strict=True)]
    winners = resolve_claims(JOB, demand(3), [node(a) for a in POOL], claims, now_ms=0)
    for r in range(3):
        contenders = [c for c in claims if c.replica == r]
        if not contenders:
            assert r not in winners
            continue
        top = max(c.generation for c in contenders)
        best = max((c for c in contenders if c.generation == top), key=lambda c: compute_weight(JOB, c.node))
        assert winners[r] == best


def test_a_node_with_claims_on_two_replicas_wins_only_one() -> None:
    a, b = rank(JOB, ADDRS[:2])  # a ranks better, so only the one-replica-per-node rule stops it
    claims = [Claim(JOB, 0, a, 2, 500), Claim(JOB, 1, a, 1, 500), Claim(JOB, 1, b, 1, 500)]
    assert compute_assignment(JOB, demand(2), [node(a), node(b)], claims, 0) == {0: a, 1: b}
    assert decide(JOB, demand(2), [node(a), node(b)], claims, a, 0, LEASE_MS) == Decision(
        0, renew=(Claim(JOB, 0, a, 2, LEASE_MS),), release=(Claim(JOB, 1, a, 1, 0),))


def test_simultaneous_equal_generation_claims_resolve_by_rank() -> None:
    better, worse = rank(JOB, ADDRS[:2])
    nodes = [node(better), node(worse)]
    claims = [Claim(JOB, 0, worse, 1, LEASE_MS), Claim(JOB, 0, better, 1, LEASE_MS)]
    assert compute_assignment(JOB, demand(1), nodes, claims, 0) == {0: better}
    lost = decide(JOB, demand(1), nodes, claims, worse, 0, LEASE_MS)
    assert lost == Decision(None, release=(Claim(JOB, 0, worse, 1, 0),))
    assert decide(JOB, demand(1), nodes, claims, better, 0, LEASE_MS) == Decision(0)


# --- takeover, partitions, eligibility ----------------------------------------------------------


def test_takeover_when_the_holder_dies() -> None:
    nodes = [node(a) for a in ADDRS[:5]]
    ranked = rank(JOB, nodes)
    store = settle(JOB, demand(2), nodes)
    assert compute_assignment(JOB, demand(2), nodes, store.values(), 5) == {0: ranked[0], 1: ranked[1]}
    nodes = [node(a, alive=a != ranked[0]) for a in ADDRS[:5]]
    decisions = run_round(JOB, demand(2), nodes, store, 5)
    claims = [c for d in decisions.values() for c in d.claim]
    assert claims == [Claim(JOB, 0, ranked[2], 2, 5 + LEASE_MS)]  # next-ranked free node, generation + 1
    assert compute_assignment(JOB, demand(2), nodes, store.values(), 6) == {0: ranked[2], 1: ranked[1]}


def test_takeover_skips_ineligible_full_and_unfitting_nodes() -> None:
    ranked = rank(JOB, ADDRS[:6])
    flags = {ranked[1]: {"eligible": False}, ranked[2]: {"free": FULL}, ranked[3]: {"tags": frozenset({"arm"})}}
    nodes = [node(a, **flags.get(a, {})) for a in ranked]  # type: ignore[arg-type]
    dem = demand(1, fits=lambda n: "arm" not in n.tags)
    store = settle(JOB, dem, nodes)
    assert compute_assignment(JOB, dem, nodes, store.values(), 5) == {0: ranked[0]}
    nodes[0] = node(ranked[0], alive=False)
    run_round(JOB, dem, nodes, store, 5)
    assert compute_assignment(JOB, dem, nodes, store.values(), 6) == {0: ranked[4]}


def test_returning_node_yields_to_the_higher_generation_although_it_ranks_better() -> None:
    best, second = rank(JOB, ADDRS[:2])
    dem = demand(1)
    store = settle(JOB, dem, [node(best), node(second)])
    assert store[(JOB, 0, best)].generation == 1
    # partition: each side renews or takes over on its own
    store_best = dict(store)
    store_second = dict(store)
    for t in range(3, 30_000, 4000):
        run_round(JOB, dem, [node(best), node(second, alive=False)], store_best, t)
        run_round(JOB, dem, [node(best, alive=False), node(second)], store_second, t)
    assert store_second[(JOB, 0, second)].generation == 2
    assert store_best[(JOB, 0, best)].lease_until_ms > 30_000  # still renewed on its side
    # heal: the union of both stores, everyone alive again
    healed = {**store_best, **store_second, (JOB, 0, best): store_best[(JOB, 0, best)]}
    nodes = [node(best), node(second)]
    d_best = decide(JOB, dem, nodes, healed.values(), best, 30_000, LEASE_MS)
    assert d_best == Decision(None, release=(release_claim(store_best[(JOB, 0, best)], 30_000),))
    assert decide(JOB, dem, nodes, healed.values(), second, 30_000, LEASE_MS).holding == 0
    assert compute_assignment(JOB, dem, nodes, healed.values(), 30_000) == {0: second}


@pytest.mark.parametrize("change", [{"eligible": False}, {"tags": frozenset({"arm"})}])
def test_a_holder_that_becomes_ineligible_or_unfitting_releases_and_is_replaced(change: dict[str, object]) -> None:
    best, second = rank(JOB, ADDRS[:2])
    dem = demand(1, fits=lambda n: "arm" not in n.tags)
    store = settle(JOB, dem, [node(best), node(second)])
    nodes = [node(best, **change), node(second)]  # type: ignore[arg-type]
    decisions = run_round(JOB, dem, nodes, store, 10)
    assert decisions[best] == Decision(None, release=(Claim(JOB, 0, best, 1, 10),))
    assert decisions[second].claim == (Claim(JOB, 0, second, 2, 10 + LEASE_MS),)


def test_a_holder_keeps_its_replica_though_its_free_resources_ran_out() -> None:
    best, second = rank(JOB, ADDRS[:2])
    store = settle(JOB, demand(1), [node(best), node(second)])
    nodes = [node(best, free=FULL), node(second)]  # its own replica uses what was free
    run_round(JOB, demand(1), nodes, store, 10)
    assert compute_assignment(JOB, demand(1), nodes, store.values(), 11) == {0: best}


@given(st.integers(1, 8), st.integers(0, 6))
@settings(max_examples=30)
def test_more_replicas_than_eligible_nodes_places_one_per_eligible_node(replicas: int, eligible: int) -> None:
    nodes = [node(a, eligible=i < eligible) for i, a in enumerate(ADDRS[:6])]
    store = settle(JOB, demand(replicas), nodes)
    placed = compute_assignment(JOB, demand(replicas), nodes, store.values(), 5)
    assert len(placed) == min(replicas, eligible)
    assert len(set(placed.values())) == len(placed)
    assert set(placed.values()) <= set(ADDRS[:eligible])


def test_renewal_only_past_half_the_lease() -> None:
    a = ADDRS[0]
    claims = [Claim(JOB, 0, a, 3, 10_000)]
    fresh = decide(JOB, demand(1), [node(a)], claims, a, 4_999, LEASE_MS)
    assert fresh == Decision(0)
    due = decide(JOB, demand(1), [node(a)], claims, a, 5_000, LEASE_MS)
    assert due.renew == (Claim(JOB, 0, a, 3, 15_000),)


def test_stopping_a_job_releases_every_claim() -> None:
    nodes = [node(a) for a in ADDRS[:4]]
    store = settle(JOB, demand(3), nodes)
    assert len(compute_assignment(JOB, demand(3), nodes, store.values(), 5)) == 3
    decisions = run_round(JOB, demand(0), nodes, store, 5)
    assert all(d.holding is None and d.claim == () for d in decisions.values())
    assert sum(len(d.release) for d in decisions.values()) == 3
    assert compute_assignment(JOB, demand(3), nodes, store.values(), 5) == {}  # released everywhere


def test_release_keeps_the_generation() -> None:
    c = Claim(JOB, 1, ADDRS[0], 4, 900)
    assert release_claim(c, 100) == Claim(JOB, 1, ADDRS[0], 4, 100)


def test_values_are_checked_and_the_predicate_is_not_compared() -> None:
    with pytest.raises(ValueError, match="checksummed"):
        node(ADDRS[0].lower())
    with pytest.raises(ValueError, match="generation"):
        Claim(JOB, 0, ADDRS[0], 0, 1)
    with pytest.raises(ValueError, match="uint256"):
        Claim(2**256, 0, ADDRS[0], 1, 1)
    with pytest.raises(ValueError, match="twice"):
        resolve_claims(JOB, demand(1), [node(ADDRS[0]), node(ADDRS[0])], [], 0)
    assert demand(2, fits=lambda n: False) == demand(2)
    assert hash(demand(2, fits=lambda n: False)) == hash(demand(2))
    assert hash(node(ADDRS[0])) == hash(node(ADDRS[0]))


# --- simulation -------------------------------------------------------------------------------

node_flags = st.tuples(st.booleans() | st.just(True), st.booleans() | st.just(True), st.booleans() | st.just(True))


@given(job_ids, st.integers(0, 5), st.lists(node_flags, min_size=1, max_size=8), st.data())
@settings(max_examples=60, deadline=None)
def test_simulated_rounds_converge_to_one_holder_per_replica(
    job_id: int, replicas: int, flags: list[tuple[bool, bool, bool]], data: st.DataObject
) -> None:
    """Rounds of every live node deciding from one consistent view, with holders killed and nodes
    revived between rounds: no replica is ever held twice, and a few quiet rounds place every
    replica that an eligible node has room for."""
    dem = demand(replicas, fits=lambda n: "bad" not in n.tags)
    alive = {a: True for a in ADDRS[: len(flags)]}

    def view() -> list[NodeInfo]:
        return [node(a, eligible=e, alive=alive[a], free=ROOMY if room else FULL,
                     tags=frozenset() if fit else frozenset({"bad"}))
                for a, (e, room, fit) in zip(alive, flags, strict=False)]

    store: Store = {}
    now = 0

    def step() -> dict[str, Decision]:
        nodes = view()
        decisions = run_round(job_id, dem, nodes, store, now)
        holding = [d.holding for d in decisions.values() if d.holding is not None]
        assert len(holding) == len(set(holding))  # never two holders of a replica in one view
        held = {d.holding: a for a, d in decisions.items() if d.holding is not None}
        assert compute_assignment(job_id, dem, nodes, store.values(), now) == dict(sorted(held.items()))
        return decisions

    for _ in range(data.draw(st.integers(0, 6))):
        step()
        now += data.draw(st.integers(1, LEASE_MS // 2))
        holders = sorted(compute_assignment(job_id, dem, view(), store.values(), now).values())
        kill: bool = data.draw(st.booleans())
        if holders and kill:
            alive[data.draw(st.sampled_from(holders))] = False
        dead = sorted(a for a, up in alive.items() if not up)
        revive: bool = data.draw(st.booleans())
        if dead and revive:
            alive[data.draw(st.sampled_from(dead))] = True

    step()
    now += 1
    final = step()
    nodes = view()
    placed = compute_assignment(job_id, dem, nodes, store.values(), now)
    usable = [n for n in nodes if n.eligible and n.alive and "bad" not in n.tags and n.free == ROOMY]
    assert len(placed) == min(replicas, len(usable))
    assert set(placed.values()) <= {n.address for n in usable}
    assert len(set(placed.values())) == len(placed)
    assert all(d.claim == () for d in final.values())  # stable: nobody claims any more
