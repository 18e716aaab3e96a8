"""An oracle's observation: availability, tenures and the time alive within each tenure from its
intervals, clipped, merged and overlap-free; coverage decides whether it may vote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracle._observe import (
    MIN_COVERAGE_BPS,
    compute_availability,
    compute_observation,
    compute_tenure_availability,
    compute_tenure_spans,
    compute_tenures,
    intersect_spans,
    is_complete,
    merge_spans,
)

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
C = "0x" + "cc" * 20
START, END = 1_000_000, 1_100_000  # a 100 s epoch
EPOCH = [(START, END)]


def test_availability_is_the_alive_share_scaled_to_255_rounding_down() -> None:
    assert compute_availability(100, 100) == 255
    assert compute_availability(50, 100) == 127
    assert compute_availability(0, 100) == 0
    assert compute_availability(1, 3) == 85
    with pytest.raises(ValueError, match="alive_ms"):
        compute_availability(101, 100)


def test_alive_spans_are_clipped_to_the_epoch_and_merged() -> None:
    alive = [(A, START - 50_000, START + 30_000), (A, START + 20_000, START + 50_000),  # overlap, spill before
             (A, START + 40_000, START + 45_000),  # inside the previous one
             (B, START + 90_000, END + 99_000)]  # spills past the end
    obs = compute_observation(START, END, watched=EPOCH, alive=alive, held=[])
    assert dict(obs.availability) == {A: 127, B: 25}  # A: 50 s of 100; B: 10 s
    assert obs.coverage_ms == 100_000
    assert obs.complete


def test_addresses_are_lower_cased_and_unseen_nodes_left_out() -> None:
    mixed = "0x" + "Ab" * 20
    obs = compute_observation(START, END, watched=EPOCH, alive=[(mixed, START, END), (B, END, END + 5)],
                              held=[(1, 0, mixed, START, END)])
    assert obs.availability == ((mixed.lower(), 255),)
    assert obs.tenure == ((1, 0, mixed.lower(), 100_000, 100_000),)


def test_unwatched_time_counts_as_not_seen_and_makes_the_observation_incomplete() -> None:
    watched = [(START, START + 50_000)]
    obs = compute_observation(START, END, watched=watched, alive=[(A, START, END)],
                              held=[(1, 0, A, START, END)])
    assert obs.coverage_ms == 50_000
    assert dict(obs.availability) == {A: 127}  # seen for the half it watched
    assert obs.tenure == ((1, 0, A, 50_000, 50_000),)  # alive in tenure: only what it watched
    assert not obs.complete


@pytest.mark.parametrize(("watched_ms", "complete"), [(100_000, True), (90_000, True), (89_999, False), (0, False)])
def test_observations_below_the_coverage_threshold_are_incomplete(watched_ms: int, complete: bool) -> None:
    assert MIN_COVERAGE_BPS == 9_000
    obs = compute_observation(START, END, watched=[(START, START + watched_ms)], alive=[], held=[])
    assert obs.complete is complete
    assert is_complete(watched_ms, 100_000) is complete


def test_a_restarted_oracle_counts_both_watched_stretches() -> None:
    watched = [(START - 10, START + 40_000), (START + 45_000, END + 10)]  # down 5 s in the middle
    obs = compute_observation(START, END, watched=watched, alive=[(A, START, END)], held=[])
    assert obs.coverage_ms == 95_000
    assert obs.complete
    assert dict(obs.availability) == {A: 242}


def test_the_incumbent_keeps_a_replica_two_nodes_claim_at_once() -> None:
    held = [(7, 0, A, START, START + 60_000), (7, 0, B, START + 40_000, END)]
    obs = compute_observation(START, END, watched=EPOCH, alive=[], held=held)
    assert obs.tenure == ((7, 0, A, 60_000, 0), (7, 0, B, 40_000, 0))  # nobody seen alive


def test_simultaneous_claims_go_to_the_lower_address() -> None:
    assert compute_tenures([(B, 0, 10), (A, 0, 10)]) == {A: 10}
    assert compute_tenures([(B, 0, 10), (A, 0, 5)]) == {A: 5, B: 5}


def test_replicas_and_jobs_are_kept_apart() -> None:
    held = [(1, 0, A, START, END), (1, 1, A, START, END), (2, 0, A, START, START + 1)]
    obs = compute_observation(START, END, watched=EPOCH, alive=[], held=held)
    assert obs.tenure == ((1, 0, A, 100_000, 0), (1, 1, A, 100_000, 0), (2, 0, A, 1, 0))


def test_availability_during_a_tenure_is_its_alive_share_scaled_to_255() -> None:
    assert compute_tenure_availability(60_000, 60_000) == 255
    assert compute_tenure_availability(30_000, 60_000) == 127
    assert compute_tenure_availability(0, 60_000) == 0
    assert compute_tenure_availability(0, 0) == 0  # no tenure: nothing to judge, nothing paid
    with pytest.raises(ValueError, match="alive_ms"):
        compute_tenure_availability(1, 0)


def test_a_holder_that_died_and_was_replaced_was_alive_for_all_its_tenure() -> None:
    # A serves replica 0 for 60 s and dies; its claim lapses and B takes the replica 5 s later
    alive = [(A, START, START + 60_000), (B, START + 50_000, END)]
    held = [(1, 0, A, START, START + 60_000), (1, 0, B, START + 65_000, END)]
    obs = compute_observation(START, END, watched=EPOCH, alive=alive, held=held)
    assert obs.tenure == ((1, 0, A, 60_000, 60_000), (1, 0, B, 35_000, 35_000))
    assert dict(obs.availability) == {A: 153, B: 127}  # over the epoch: for display, not for money


def test_a_holder_whose_beats_stopped_arriving_is_alive_for_part_of_its_tenure() -> None:
    alive = [(A, START, START + 30_000), (A, START + 70_000, END)]  # 40 s without beats, still the holder
    obs = compute_observation(START, END, watched=EPOCH, alive=alive, held=[(1, 0, A, START, END)])
    assert obs.tenure == ((1, 0, A, 100_000, 60_000),)


def test_alive_in_tenure_counts_only_the_instants_the_node_kept() -> None:
    # B's claim overlaps the incumbent A's: B holds from 60 s only, and was alive only before that
    alive = [(A, START, END), (B, START + 40_000, START + 60_000)]
    held = [(7, 0, A, START, START + 60_000), (7, 0, B, START + 40_000, END)]
    obs = compute_observation(START, END, watched=EPOCH, alive=alive, held=held)
    assert obs.tenure == ((7, 0, A, 60_000, 60_000), (7, 0, B, 40_000, 0))  # kept: zero alive is news


def test_an_empty_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="end_ms > start_ms"):
        compute_observation(START, START, watched=[], alive=[], held=[])


small_spans = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=8)


def points(spans: list[tuple[int, int]]) -> set[int]:
    return {x for a, b in spans for x in range(a, b)}


@given(small_spans)
def test_merging_keeps_the_same_instants_in_disjoint_sorted_spans(spans: list[tuple[int, int]]) -> None:
    merged = merge_spans(spans)
    assert points(merged) == points(spans)
    assert all(a < b for a, b in merged)
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))


@given(small_spans, small_spans)
def test_intersection_keeps_the_common_instants(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    assert points(intersect_spans(merge_spans(a), merge_spans(b))) == points(a) & points(b)


held_spans = st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, 30), st.integers(0, 30)), max_size=8)


@given(held_spans)
def test_each_instant_of_a_replica_goes_to_the_earliest_started_holder(spans: list[tuple[str, int, int]]) -> None:
    expected: dict[str, int] = {}
    for x in range(30):
        covering = sorted((a, node) for node, a, b in spans if a <= x < b)
        if covering:
            expected[covering[0][1]] = expected.get(covering[0][1], 0) + 1
    assert compute_tenures(spans) == expected


@given(held_spans)
def test_a_replicas_tenure_spans_are_disjoint_and_measure_its_tenures(spans: list[tuple[str, int, int]]) -> None:
    owned = compute_tenure_spans(spans)
    assert {node: sum(b - a for a, b in s) for node, s in owned.items()} == compute_tenures(spans)
    everyone = [span for s in owned.values() for span in s]
    assert sum(b - a for a, b in everyone) == len(points(everyone))  # no instant held twice


at, length, nodes = st.integers(-5, 35), st.integers(0, 20), st.sampled_from([A, B, C])  # a 30 ms epoch [0, 30)


@given(st.lists(st.tuples(at, length), max_size=4), st.lists(st.tuples(nodes, at, length), max_size=8),
       st.lists(st.tuples(st.integers(0, 1), nodes, at, length), max_size=8))
def test_alive_in_tenure_is_each_watched_instant_the_holder_kept_and_was_seen_alive(
        watched: list[tuple[int, int]], alive: list[tuple[str, int, int]],
        held: list[tuple[int, str, int, int]]) -> None:
    obs = compute_observation(0, 30, watched=[(a, a + d) for a, d in watched],
                              alive=[(n, a, a + d) for n, a, d in alive],
                              held=[(1, r, n, a, a + d) for r, n, a, d in held])
    seen = points([(a, a + d) for a, d in watched]) & set(range(30))

    def since(x: int, a: int) -> int:  # where the watched stretch of a span from ``a`` through ``x`` starts
        while x - 1 >= a and x - 1 in seen:
            x -= 1
        return x

    expected: dict[tuple[int, int, str], list[int]] = {}
    for x in seen:  # instant by instant: the earliest-started holder (lower address on a tie) keeps x
        for replica in (0, 1):
            covering = sorted((since(x, a), n) for r, n, a, d in held if r == replica and a <= x < a + d)
            if covering:
                node = covering[0][1]
                up = any(n == node and a <= x < a + d for n, a, d in alive)
                entry = expected.setdefault((1, replica, node), [0, 0])
                entry[0] += 1
                entry[1] += up
    assert {t[:3]: list(t[3:]) for t in obs.tenure} == expected


epoch_spans = st.lists(st.tuples(st.integers(START - 20_000, END + 20_000), st.integers(0, 60_000)), max_size=6)


@given(epoch_spans, st.lists(st.tuples(st.integers(0, 1), st.sampled_from([A, B, C]),
                                       st.integers(START - 20_000, END + 20_000), st.integers(0, 60_000)),
                             max_size=10),
       st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(START - 20_000, END + 20_000),
                          st.integers(0, 90_000)), max_size=10))
def test_an_observation_never_exceeds_what_was_watched(watched: list[tuple[int, int]],
                                                       held: list[tuple[int, str, int, int]],
                                                       alive: list[tuple[str, int, int]]) -> None:
    obs = compute_observation(START, END, watched=[(a, a + d) for a, d in watched],
                              alive=[(n, a, a + d) for n, a, d in alive],
                              held=[(1, r, n, a, a + d) for r, n, a, d in held])
    assert 0 <= obs.coverage_ms <= END - START
    ceiling = 255 * obs.coverage_ms // (END - START)
    assert all(0 < a <= ceiling for _, a in obs.availability)
    for replica in (0, 1):
        assert sum(ms for _, r, _, ms, _ in obs.tenure if r == replica) <= obs.coverage_ms
    assert list(obs.tenure) == sorted(obs.tenure)
    assert all(0 <= alive_ms <= ms and ms > 0 for *_, ms, alive_ms in obs.tenure)
