"""Signed observations, medians, the epoch report (each share judged by its holder's availability
during its tenure) and its verification; and a report built from four oracles' signed observations
settling on chain."""

from __future__ import annotations

import json
from itertools import groupby
from typing import cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import (
    JobStatus,
    JobTotals,
    LicenseStatus,
    MerkleTree,
    SettlementPolicy,
    escrow_domain,
    release_leaf,
    sign,
    totals_leaf,
    totals_root,
    verify,
)
from oracle._observe import Observed, compute_observation
from oracle._report import (
    SECP256K1_N,
    ChainInputs,
    EpochReport,
    JobInput,
    NodeInput,
    NotEnoughObservations,
    Observation,
    ObservationRejected,
    ReportError,
    ReportMismatch,
    _release_leaf,
    _totals_leaf,
    _totals_root,
    aggregate,
    build_report,
    claim,
    compute_replicas_at,
    leader,
    lower_median,
    proof,
    recover_observer,
    select_observations,
    sign_observation,
    standing_of,
    verify_report,
)
from oracle._settlement import Standing
from oracle._watch import replay
from tests.contracts.world import World

ORACLE_KEYS = sorted((Account.from_key((0x0B5E << 16 | i).to_bytes(32, "big")) for i in range(4)),
                     key=lambda k: k.address.lower())
ORACLES = [k.address for k in ORACLE_KEYS]
DOMAIN = escrow_domain(31337, "0x" + "e5" * 20)
EPOCH = 12
EPOCH_MS = 100_000
START, END = EPOCH * EPOCH_MS, (EPOCH + 1) * EPOCH_MS
EPOCH_SPAN = [(START, END)]
NODES = ["0x" + f"{i + 1:02x}" * 20 for i in range(5)]  # lower-case, sorted
A, B, C, D, E = NODES
POLICY = SettlementPolicy(release_threshold=200, burn_floor=50, protocol_burn_bps=100)
PRICE = 1_000_000
ZERO_SIG = "0x" + "00" * 65
HASH = "0x" + "ab" * 32


def bounds(epoch: int) -> tuple[int, int]:
    return epoch * EPOCH_MS, (epoch + 1) * EPOCH_MS


Tenures = dict[tuple[int, int, str], int | tuple[int, int]]


def observed(availability: dict[str, int], tenure: Tenures, *, epoch: int = EPOCH,
             coverage_ms: int = EPOCH_MS) -> Observed:
    """An observation as ``_observe`` writes it; a tenure is ``(tenure_ms, alive_ms)``, or ``ms`` alone
    for a holder seen alive throughout its tenure."""
    start, end = bounds(epoch)
    rows = ((*k, *(v if isinstance(v, tuple) else (v, v))) for k, v in tenure.items())
    return Observed(start, end, coverage_ms, tuple(sorted((n, a) for n, a in availability.items() if a)),
                    tuple(sorted(row for row in rows if row[3])))


def unsigned(oracle: str, obs: Observed, epoch: int = EPOCH) -> Observation:
    """An observation with a blank signature, for the pure rules that do not check signatures."""
    return Observation(epoch=epoch, oracle=oracle, start_ms=obs.start_ms, end_ms=obs.end_ms,
                       coverage_ms=obs.coverage_ms, availability=obs.availability, tenure=obs.tenure,
                       signature=ZERO_SIG)


def job_input(job_id: int = 1, *, replicas: int = 2, price: int = PRICE, start_epoch: int = EPOCH, epochs: int = 3,
              status: JobStatus = JobStatus.ACTIVE, policy: SettlementPolicy = POLICY) -> JobInput:
    return JobInput(job_id=job_id, price_per_node_epoch=price, replicas=replicas, start_epoch=start_epoch,
                    epochs=epochs, status=status, policy=policy)


def chain_inputs(jobs: tuple[JobInput, ...] = (), standings: dict[str, Standing] | None = None, *,
                 epoch: int = EPOCH) -> ChainInputs:
    standings = standings if standings is not None else dict.fromkeys(NODES[:4], Standing.ACTIVE)
    start, end = bounds(epoch)
    return ChainInputs(block=100 + epoch, block_hash=HASH, start_ms=start, end_ms=end, jobs=jobs or (job_input(),),
                       nodes=tuple(NodeInput(node=n, license_id=NODES.index(n) + 1, standing=s)
                                   for n, s in sorted(standings.items())))


# The honest view of epoch EPOCH: A holds replica 0 all epoch and is always up; B holds replica 1
# for 70 s and C for the last 30 s; C was up for 60 % of the epoch and of its tenure (18 s of 30).
HONEST = observed({A: 255, B: 255, C: 153}, {(1, 0, A): 100_000, (1, 1, B): 70_000, (1, 1, C): (30_000, 18_000)})
# The liar: A never up, not even during its tenure; D held replica 0; C up all its tenure.
LIAR = observed({A: 0, B: 255, C: 255}, {(1, 0, A): (100_000, 0), (1, 0, D): 100_000, (1, 1, B): 100_000,
                                         (1, 1, C): 30_000})


def signed_round(liar: bool = True) -> list[Observation]:
    return [sign_observation(DOMAIN, EPOCH, LIAR if liar and i == 3 else HONEST, k.key)
            for i, k in enumerate(ORACLE_KEYS)]


@pytest.fixture(scope="module")
def honest_report() -> EpochReport:
    chosen = select_observations(signed_round(), DOMAIN, ORACLES, EPOCH, START, END).observations
    return build_report(EPOCH, chosen, chain_inputs(), None, 3)


# ------------------------------------------------------------------ observations and signatures


def test_a_signed_observation_recovers_to_its_oracle_also_after_a_json_round_trip() -> None:
    obs = sign_observation(DOMAIN, EPOCH, HONEST, ORACLE_KEYS[0].key)
    assert obs.oracle == ORACLES[0]
    assert recover_observer(obs, DOMAIN) == ORACLES[0]
    decoded = Observation.model_validate_json(obs.model_dump_json())
    assert decoded == obs
    assert recover_observer(decoded, DOMAIN) == ORACLES[0]
    assert recover_observer(obs, escrow_domain(1, "0x" + "e5" * 20)) != ORACLES[0]  # bound to the chain


def test_an_altered_body_or_the_malleable_twin_of_a_signature_does_not_recover() -> None:
    obs = sign_observation(DOMAIN, EPOCH, HONEST, ORACLE_KEYS[0].key)
    forged = obs.model_copy(update={"availability": ((A, 255), (B, 255), (C, 255))})
    assert recover_observer(forged, DOMAIN) != ORACLES[0]
    sig = bytes.fromhex(obs.signature[2:])
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert recover_observer(obs.model_copy(update={"signature": "0x" + twin.hex()}), DOMAIN) is None


@pytest.mark.parametrize("change", [
    {"availability": ((B, 1), (A, 1))},  # unsorted
    {"availability": ((A, 1), (A, 2))},  # duplicate node
    {"availability": (("0x" + "AB" * 20, 1),)},  # not lower-case
    {"availability": ((A, 256),)},
    {"tenure": ((1, 0, A, EPOCH_MS + 1, 0),)},
    {"tenure": ((1, 1, A, 5, 5), (1, 0, A, 5, 5))},
    {"tenure": ((1, 0, A, 5, 6),)},  # alive longer than its tenure
    {"tenure": ((1, 0, A, 5),)},  # no alive-in-tenure
    {"coverage_ms": EPOCH_MS + 1},
    {"end_ms": START},
])
def test_malformed_observations_do_not_parse(change: dict[str, object]) -> None:
    fields = unsigned(ORACLES[0], HONEST).model_dump() | change
    with pytest.raises(ValidationError):
        Observation(**fields)


# ------------------------------------------------------------------ medians


def test_the_lower_median_is_taken_for_an_even_count() -> None:
    assert lower_median([4, 1, 3, 2]) == 2
    assert lower_median([7]) == 7
    assert lower_median([5, 1, 9]) == 5


def test_a_node_missing_from_an_observation_counts_as_zero_there() -> None:
    obs = [unsigned(o, observed(a, {})) for o, a in zip(ORACLES, [{A: 200}, {A: 210}, {B: 9}, {A: 220}],
                                                        strict=True)]
    assert dict(aggregate(obs, 3).availability) == {A: 200}  # [0, 200, 210, 220]: lower median 200
    assert dict(aggregate(obs[:3], 3).availability) == {A: 200}  # [0, 200, 210]
    assert dict(aggregate(obs[1:3], 2).availability) == {}  # [0, 210]: lower median 0


def test_median_tenures_that_overfill_a_replica_are_scaled_down_to_fit() -> None:
    views = [{(1, 0, A): 50_000, (1, 0, B): 50_000}, {(1, 0, B): 50_000, (1, 0, C): 50_000},
             {(1, 0, A): 50_000, (1, 0, C): 50_000}]
    obs = [unsigned(o, observed({}, v)) for o, v in zip(ORACLES, views, strict=False)]
    assert aggregate(obs, 3).tenure == ((1, 0, A, 33_333, 33_333), (1, 0, B, 33_333, 33_333),
                                        (1, 0, C, 33_333, 33_333))
    # the alive ms shrink in the same proportion: the share of the tenure seen alive stays
    halves = [{k: (ms, ms // 2) for k, ms in v.items()} for v in views]
    obs = [unsigned(o, observed({}, v)) for o, v in zip(ORACLES, halves, strict=False)]
    assert aggregate(obs, 3).tenure == ((1, 0, A, 33_333, 16_666), (1, 0, B, 33_333, 16_666),
                                        (1, 0, C, 33_333, 16_666))


def test_tenure_and_alive_in_tenure_are_medians_taken_apart_and_alive_never_exceeds_tenure() -> None:
    views = [{(1, 0, A): (90_000, 10_000)}, {(1, 0, A): (50_000, 50_000)}, {(1, 0, A): (80_000, 80_000)},
             {(1, 0, A): (60_000, 60_000)}]
    obs = [unsigned(o, observed({}, v)) for o, v in zip(ORACLES, views, strict=True)]
    assert aggregate(obs, 3).tenure == ((1, 0, A, 60_000, 50_000),)  # tenures [50, 60, 80, 90], alive [10, 50, ...]
    views[1] = {(1, 0, A): (50_000, 0)}
    views[3] = {(1, 0, A): (45_000, 45_000)}  # tenures [45, 50, 80, 90] -> 50; alive [0, 10, 45, 80] -> 10
    obs = [unsigned(o, observed({}, v)) for o, v in zip(ORACLES, views, strict=True)]
    assert aggregate(obs, 3).tenure == ((1, 0, A, 50_000, 10_000),)
    views = [{(1, 0, A): (40_000, 40_000)}, {(1, 0, A): (90_000, 90_000)}, {(1, 0, A): (30_000, 30_000)}]
    obs = [unsigned(o, observed({}, v)) for o, v in zip(ORACLES, views, strict=False)]
    assert aggregate(obs, 3).tenure == ((1, 0, A, 40_000, 40_000),)


values = st.dictionaries(st.sampled_from(NODES), st.integers(0, 255), max_size=5)
tenure_and_alive = st.integers(0, EPOCH_MS).flatmap(lambda ms: st.tuples(st.just(ms), st.integers(0, ms)))


@given(st.data(), st.integers(1, 7))
def test_a_lying_minority_cannot_move_a_median_outside_the_honest_values(data: st.DataObject, n: int) -> None:
    liars = data.draw(st.integers(0, (n - 1) // 2))  # f < n/2
    keys = [f"0x{i + 1:040x}" for i in range(n)]  # signatures are not checked here
    honest = [data.draw(values) for _ in range(n - liars)]
    lies = [data.draw(values) for _ in range(liars)]
    # tenures: one honest holder per replica (A on 0, B on 1), alive for some of it; liars claim
    # anything for anyone, alive for as long as they like
    honest_t: list[Tenures] = [{key: data.draw(tenure_and_alive) for key in ((1, 0, A), (1, 1, B))} for _ in honest]
    lies_t: list[Tenures] = [data.draw(st.dictionaries(st.tuples(st.just(1), st.integers(0, 1), st.sampled_from(NODES)),
                                                       tenure_and_alive, max_size=6)) for _ in lies]
    obs = [unsigned(k, observed(a, t)) for k, a, t in zip(keys, honest + lies, honest_t + lies_t, strict=True)]
    result = aggregate(obs, n)
    got = dict(result.availability)
    for node in NODES:
        seen = [h.get(node, 0) for h in honest]
        assert min(seen) <= got.get(node, 0) <= max(seen)
    tenure = {t[:3]: t[3:] for t in result.tenure}
    for key in {k for t in honest_t + lies_t for k in t}:
        honest_values = [cast(tuple[int, int], t.get(key, (0, 0))) for t in honest_t]
        got_tenure, got_alive = tenure.get(key, (0, 0))
        assert min(v[0] for v in honest_values) <= got_tenure <= max(v[0] for v in honest_values)
        assert min(v[1] for v in honest_values) <= got_alive <= max(v[1] for v in honest_values)
        assert got_alive <= got_tenure


def test_fewer_than_the_threshold_cannot_aggregate_or_build() -> None:
    obs = [unsigned(o, HONEST) for o in ORACLES[:2]]
    with pytest.raises(NotEnoughObservations) as err:
        aggregate(obs, 3)
    assert (err.value.have, err.value.need) == (2, 3)
    with pytest.raises(NotEnoughObservations):
        build_report(EPOCH, obs, chain_inputs(), None, 3)
    with pytest.raises(NotEnoughObservations):
        aggregate([], 1)


def test_a_report_cites_each_oracle_once_and_only_complete_observations_of_its_epoch() -> None:
    obs = [unsigned(o, HONEST) for o in ORACLES[:3]]
    with pytest.raises(ObservationRejected, match="same oracle"):
        build_report(EPOCH, [*obs, obs[0]], chain_inputs(), None, 3)
    partial = unsigned(ORACLES[3], observed({}, {}, coverage_ms=EPOCH_MS // 2))
    with pytest.raises(ObservationRejected, match="incomplete"):
        build_report(EPOCH, [*obs, partial], chain_inputs(), None, 3)
    other = unsigned(ORACLES[3], observed({}, {}, epoch=EPOCH + 1), epoch=EPOCH + 1)
    with pytest.raises(ObservationRejected, match="not of this epoch"):
        build_report(EPOCH, [*obs, other], chain_inputs(), None, 3)


# ------------------------------------------------------------------ selection: who may vote


def test_an_equivocating_oracle_is_left_out_entirely() -> None:
    round_ = signed_round(liar=False)
    second = sign_observation(DOMAIN, EPOCH, LIAR, ORACLE_KEYS[1].key)
    selection = select_observations([*round_, second, round_[2]], DOMAIN, ORACLES, EPOCH, START, END)
    assert selection.equivocators == {ORACLES[1]}
    assert [o.oracle for o in selection.observations] == [ORACLES[0], ORACLES[2], ORACLES[3]]  # a copy counts once
    build_report(EPOCH, selection.observations, chain_inputs(), None, 3)
    third = sign_observation(DOMAIN, EPOCH, LIAR, ORACLE_KEYS[2].key)
    fewer = select_observations([*round_, second, third], DOMAIN, ORACLES, EPOCH, START, END)
    assert fewer.equivocators == {ORACLES[1], ORACLES[2]}
    with pytest.raises(NotEnoughObservations):  # two equivocators of four: no quorum of 3
        build_report(EPOCH, fewer.observations, chain_inputs(), None, 3)


def test_outsiders_other_epochs_and_incomplete_observations_are_not_selected() -> None:
    outsider = Account.from_key(b"\x77" * 32)
    observations = [
        sign_observation(DOMAIN, EPOCH, HONEST, ORACLE_KEYS[0].key),
        sign_observation(DOMAIN, EPOCH, HONEST, outsider.key),
        sign_observation(DOMAIN, EPOCH + 1, observed({}, {}, epoch=EPOCH + 1), ORACLE_KEYS[1].key),
        sign_observation(DOMAIN, EPOCH, observed({}, {}, coverage_ms=80_000), ORACLE_KEYS[2].key),
    ]
    forged = observations[0].model_copy(update={"oracle": ORACLES[3]})
    selection = select_observations([*observations, forged], DOMAIN, ORACLES, EPOCH, START, END)
    assert [o.oracle for o in selection.observations] == [ORACLES[0]]
    reasons = dict(selection.rejected)
    assert reasons[outsider.address] == "not in the oracle set"
    assert reasons[ORACLES[1]] == "not of this epoch"
    assert reasons[ORACLES[2]].startswith("incomplete")
    assert reasons[ORACLES[3]] == "signature does not recover to the oracle"


# ------------------------------------------------------------------ settlement


def test_the_lying_oracle_changes_nothing_and_the_report_settles_per_policy(honest_report: EpochReport) -> None:
    report = honest_report
    assert dict(report.availability) == {A: 255, B: 255, C: 153}
    assert report.tenure == ((1, 0, A, 100_000, 100_000), (1, 1, B, 70_000, 70_000), (1, 1, C, 30_000, 18_000))
    # A: 1,000,000 released less 1 % burned; B: 700,000 less 1 %; C (153 < 200 during its tenure):
    # 300,000 withheld
    assert report.settled == ((1, 990_000 + 693_000, 300_000, 10_000 + 7_000),)
    assert report.totals == report.settled
    assert report.pay == ((1, 1, 990_000), (1, 2, 693_000))
    assert report.job_totals() == [JobTotals(1, 1_683_000, 300_000, 17_000)]
    assert bytes.fromhex(report.totals_root[2:]) == totals_root(report.job_totals())
    tree = MerkleTree([release_leaf(1, 1, 990_000), release_leaf(1, 2, 693_000)])
    assert report.root_bytes == tree.root
    assert [o.oracle for o in report.observations] == ORACLES


def _watch_log(events: dict[int, dict[str, list[object]]]) -> list[str]:
    """An oracle's log of epoch EPOCH (``_watch``): a sample every second, ``events`` at their second."""
    lines = []
    for at in range(START, END + 1, 1_000):
        lines.append(json.dumps({"at": at, "watching": True}))
        if at - START in events:
            lines.append(json.dumps({"at": at, **events[at - START]}))
    return lines


def test_a_holder_that_died_after_serving_is_paid_for_its_tenure_and_the_rest_goes_to_the_next_holder() -> None:
    # replica 0: A serves alive for 60 s and dies; its claim lapses 2 s later; nobody holds it for 3 s;
    # B (up since 64 s) holds it to the end. Replica 1: C, all epoch.
    log = _watch_log({0: {"up": [A, C], "held": [[1, 0, A], [1, 1, C]]}, 60_000: {"down": [A]},
                      62_000: {"released": [[1, 0, A]]}, 64_000: {"up": [B]}, 65_000: {"held": [[1, 0, B]]}})
    spans = replay(log, START, END)
    view = compute_observation(START, END, watched=spans.watched, alive=spans.alive, held=spans.held)
    observations = [sign_observation(DOMAIN, EPOCH, view, k.key) for k in ORACLE_KEYS]
    chosen = select_observations(observations, DOMAIN, ORACLES, EPOCH, START, END).observations
    report = build_report(EPOCH, chosen, chain_inputs(), None, 3)
    assert report.tenure == ((1, 0, A, 62_000, 60_000), (1, 0, B, 35_000, 35_000), (1, 1, C, 100_000, 100_000))
    # over the epoch A (153) and B (91) are below the release threshold (200); during their tenures
    # they are at 246 and 255: both released, less the 1 % protocol burn
    assert dict(report.availability) == {A: 153, B: 91, C: 255}
    assert report.settled == ((1, 613_800 + 346_500 + 990_000, 30_000, 6_200 + 3_500 + 10_000),)  # 3 s unheld
    assert report.pay == ((1, 1, 613_800), (1, 2, 346_500), (1, 3, 990_000))
    verify_report(report, DOMAIN, ORACLES, 3, None)


def test_a_holder_whose_beats_stopped_arriving_is_withheld_or_burned_per_policy() -> None:
    # replica 0: A holds it all epoch but its beats stop for 40 s (153 during its tenure: withheld).
    # replica 1: B for 60 s, then C, up until 90 s: 229 over the epoch, 191 during its tenure (withheld).
    # replica 2: B for 80 s, then D, up until 82 s: 209 over the epoch, 25 during its tenure (burned).
    s = START
    alive = [(A, s, s + 30_000), (A, s + 70_000, END), (B, s, END), (C, s, s + 90_000), (D, s, s + 82_000)]
    held = [(1, 0, A, s, END), (1, 1, B, s, s + 60_000), (1, 1, C, s + 60_000, END), (1, 2, B, s, s + 80_000),
            (1, 2, D, s + 80_000, END)]
    view = compute_observation(START, END, watched=EPOCH_SPAN, alive=alive, held=held)
    report = build_report(EPOCH, [unsigned(o, view) for o in ORACLES], chain_inputs((job_input(replicas=3),)),
                          None, 3)
    assert report.tenure == ((1, 0, A, 100_000, 60_000), (1, 1, B, 60_000, 60_000), (1, 1, C, 40_000, 30_000),
                             (1, 2, B, 80_000, 80_000), (1, 2, D, 20_000, 2_000))
    assert dict(report.availability) == {A: 153, B: 255, C: 229, D: 209}  # C and D above 200 over the epoch
    release, refund, burn = 594_000 + 792_000, 1_000_000 + 400_000, 6_000 + 8_000 + 200_000
    assert report.settled == ((1, release, refund, burn),)
    assert report.pay == ((1, 2, release),)


def test_standing_decides_before_availability() -> None:
    standings = {A: Standing.BLACKLISTED, B: Standing.RESTRICTED, C: Standing.ACTIVE}
    report = build_report(EPOCH, [unsigned(o, HONEST) for o in ORACLES], chain_inputs(standings=standings), None, 3)
    assert report.settled == ((1, 0, 1_000_000, 1_000_000),)  # A's share burned; B's and C's refunded
    assert report.pay == ()
    assert report.root_bytes == bytes(32)
    assert [standing_of(s) for s in LicenseStatus] == [Standing.ACTIVE, Standing.RESTRICTED, Standing.RESTRICTED,
                                                       Standing.BLACKLISTED]


def test_a_holder_without_a_license_earns_nothing() -> None:
    report = build_report(EPOCH, [unsigned(o, HONEST) for o in ORACLES],
                          chain_inputs(standings={A: Standing.ACTIVE}), None, 3)
    assert report.settled == ((1, 990_000, 1_000_000, 10_000),)  # B's and C's shares go to the CSP


def test_only_the_epochs_replica_slots_of_jobs_active_in_it_are_paid() -> None:
    jobs = (job_input(1, replicas=1),  # scaled down to one slot: B's and C's tenure on slot 1 pays nothing
            job_input(2, start_epoch=EPOCH + 1), job_input(3, start_epoch=EPOCH - 3, epochs=3),
            job_input(4, status=JobStatus.CLOSED))
    view = observed({A: 255}, {(j, 0, A): EPOCH_MS for j in range(1, 5)} | {(1, 1, B): EPOCH_MS})
    report = build_report(EPOCH, [unsigned(o, view) for o in ORACLES], chain_inputs(jobs), None, 3)
    assert report.settled == ((1, 990_000, 0, 10_000),)
    # a totals row for every active job started by the epoch, its last one over or not (the escrow
    # closes a job on the newest report's totals): none for one not started yet, or closed
    assert report.totals == ((1, 990_000, 0, 10_000), (3, 0, 0, 0))


def test_totals_carry_forward_while_a_job_is_open_and_are_dropped_once_it_is_closed(
        honest_report: EpochReport) -> None:
    nxt = EPOCH + 1
    view = observed({A: 255}, {}, epoch=nxt)
    ended = job_input(epochs=1)  # its one epoch was EPOCH: nothing new, the same totals
    carried = build_report(nxt, [unsigned(o, view, nxt) for o in ORACLES], chain_inputs((ended,), epoch=nxt),
                           honest_report, 3)
    assert carried.settled == ()
    assert carried.totals == honest_report.totals
    closed = job_input(epochs=1, status=JobStatus.CLOSED)
    dropped = build_report(nxt, [unsigned(o, view, nxt) for o in ORACLES], chain_inputs((closed,), epoch=nxt),
                           honest_report, 3)
    assert dropped.totals == ()
    assert dropped.totals_root == "0x" + "00" * 32
    assert dropped.pay == honest_report.pay  # node pay is carried all the same: claims stay possible


def test_the_replica_count_of_an_epoch_follows_the_scalings() -> None:
    scalings = [(5, 2, 4), (8, 4, 1)]
    assert [compute_replicas_at(e, 1, scalings) for e in (3, 5, 7, 8, 20)] == [2, 4, 4, 1, 1]
    assert compute_replicas_at(3, 3, []) == 3


def test_reports_accumulate_from_the_previous_one(honest_report: EpochReport) -> None:
    nxt = EPOCH + 1
    view = observed({A: 255, B: 102}, {(1, 0, A): EPOCH_MS, (1, 1, B): (EPOCH_MS, 40_000)}, epoch=nxt)
    report = build_report(nxt, [unsigned(o, view, nxt) for o in ORACLES], chain_inputs(epoch=nxt), honest_report, 3)
    assert report.previous_id == honest_report.content_id()
    assert report.previous_epoch == EPOCH
    assert report.settled == ((1, 990_000, 1_000_000, 10_000),)
    assert report.totals == ((1, 1_683_000 + 990_000, 1_300_000, 27_000),)
    assert report.pay == ((1, 1, 1_980_000), (1, 2, 693_000))  # B's earlier pay is carried forward
    with pytest.raises(ReportError, match="previous report"):
        build_report(EPOCH, honest_report.observations, honest_report.inputs, honest_report, 3)


def test_the_fast_encodings_are_the_contracts() -> None:
    assert _release_leaf(3, 9, 10**20) == release_leaf(3, 9, 10**20)
    rows = [(1, 2, 3, 4), (7, 2**128 - 1, 0, 5)]
    assert _totals_leaf(*rows[1]) == totals_leaf(JobTotals(*rows[1]))  # type: ignore[arg-type]
    assert _totals_root(rows) == totals_root([JobTotals(*r) for r in rows])
    assert _totals_root([]) == totals_root([])


@given(st.integers(0, 2**256 - 1), st.integers(0, 2**256 - 1), st.integers(0, 2**128 - 1))
def test_the_fast_leaf_is_the_contracts_leaf(job: int, license_id: int, amount: int) -> None:
    assert _release_leaf(job, license_id, amount) == release_leaf(job, license_id, amount)


policies = st.builds(lambda floor, extra, bps: SettlementPolicy(min(255, floor + extra), floor, bps),
                     st.integers(0, 255), st.integers(0, 255), st.integers(0, 10_000))
jobs_st = st.lists(st.builds(lambda r, p, s, e, pol: (r, p, s, e, pol), st.integers(0, 3), st.integers(0, 10**12),
                             st.integers(EPOCH - 2, EPOCH + 2), st.integers(1, 3), policies), min_size=1, max_size=4)
views = st.tuples(st.dictionaries(st.sampled_from(NODES), st.integers(0, 255), max_size=5),
                  st.dictionaries(st.tuples(st.integers(1, 4), st.integers(0, 3), st.sampled_from(NODES)),
                                  tenure_and_alive.filter(lambda v: v[0] > 0), max_size=12))


@settings(max_examples=60, deadline=None)
@given(jobs_st, st.lists(st.sampled_from(list(Standing)), min_size=4, max_size=4),
       st.lists(st.lists(views, min_size=3, max_size=3), min_size=1, max_size=3))
def test_every_slot_epoch_adds_up_and_cumulative_amounts_never_decrease(
        jobs: list[tuple[int, int, int, int, SettlementPolicy]], standing: list[Standing],
        rounds: list[list[tuple[dict[str, int], Tenures]]]) -> None:
    standings = dict(zip(NODES[:4], standing, strict=True))  # E holds no license
    previous: EpochReport | None = None
    for offset, round_views in enumerate(rounds):
        epoch = EPOCH + offset
        inputs = chain_inputs(tuple(job_input(i + 1, replicas=r, price=p, start_epoch=s, epochs=e, policy=pol)
                                    for i, (r, p, s, e, pol) in enumerate(jobs)), standings, epoch=epoch)
        obs = [unsigned(o, observed(a, t, epoch=epoch), epoch) for o, (a, t) in zip(ORACLES, round_views,
                                                                                     strict=False)]
        report = build_report(epoch, obs, inputs, previous, 3)
        for _, entries in groupby(report.tenure, key=lambda row: row[:2]):
            rows = list(entries)
            assert sum(row[3] for row in rows) <= EPOCH_MS
            assert all(0 <= row[4] <= row[3] for row in rows)
        active = {j.job_id: j for j in inputs.jobs if j.is_active_in(epoch)}
        assert [row[0] for row in report.settled] == sorted(active)
        for job_id, release, refund, burn in report.settled:
            assert release + refund + burn == active[job_id].price_per_node_epoch * active[job_id].replicas
        before = {row[0]: row[1:] for row in previous.totals} if previous else {}
        ids = [row[0] for row in report.totals]
        assert ids == sorted(set(ids))
        for job_id, *cumulative in report.totals:
            assert all(now >= then for now, then in zip(cumulative, before.get(job_id, (0, 0, 0)), strict=True))
            assert cumulative[0] == sum(amount for j, _, amount in report.pay if j == job_id)
        assert set(before) <= set(ids)
        assert bytes.fromhex(report.totals_root[2:]) == totals_root(report.job_totals())
        for job_id, license_id, amount in report.pay:
            assert verify(proof(report, job_id, license_id), report.root_bytes,
                          release_leaf(job_id, license_id, amount))
        previous = report


# ------------------------------------------------------------------ verification by a follower


def test_a_follower_accepts_the_honest_report_also_decoded_from_json(honest_report: EpochReport) -> None:
    verify_report(honest_report, DOMAIN, ORACLES, 3, None)
    decoded = EpochReport.model_validate_json(honest_report.model_dump_json())
    assert decoded == honest_report
    assert decoded.content_id() == honest_report.content_id()
    verify_report(decoded, DOMAIN, ORACLES, 3, None)
    assert len(honest_report.content_id()) == 64


def _resigned(report: EpochReport) -> EpochReport:
    obs = list(report.observations)
    sig = bytearray(bytes.fromhex(obs[1].signature[2:]))
    sig[5] ^= 1
    obs[1] = obs[1].model_copy(update={"signature": "0x" + sig.hex()})
    return report.model_copy(update={"observations": tuple(obs)})


def _altered_observation(report: EpochReport) -> EpochReport:
    obs = list(report.observations)
    obs[0] = obs[0].model_copy(update={"availability": ((A, 255), (B, 255), (C, 255))})
    return report.model_copy(update={"observations": tuple(obs)})


def _altered_alive_in_tenure(report: EpochReport) -> EpochReport:
    obs = list(report.observations)
    obs[0] = obs[0].model_copy(update={"tenure": tuple((*row[:4], row[3]) for row in obs[0].tenure)})
    return report.model_copy(update={"observations": tuple(obs)})


@pytest.mark.parametrize(("tamper", "error", "field"), [
    (lambda r: r.model_copy(update={"totals": ((1, 1_683_001, 299_999, 17_000),)}), ReportMismatch, "totals"),
    (lambda r: r.model_copy(update={"root": "0x" + "11" * 32}), ReportMismatch, "root"),
    (lambda r: r.model_copy(update={"pay": ((1, 1, 990_001), (1, 2, 693_000))}), ReportMismatch, "pay"),
    (lambda r: r.model_copy(update={"availability": ((A, 255), (B, 255), (C, 255))}), ReportMismatch,
     "availability"),
    (lambda r: r.model_copy(update={"settled": ((1, 1_683_000, 300_000, 17_001),)}), ReportMismatch, "settled"),
    (lambda r: r.model_copy(update={"tenure": (*r.tenure[:2], (1, 1, C, 30_000, 30_000))}), ReportMismatch,
     "tenure"),
    (lambda r: r.model_copy(update={"totals_root": "0x" + "22" * 32}), ReportMismatch, "totals_root"),
    (lambda r: r.model_copy(update={"previous_id": "00" * 32}), ReportMismatch, "previous_id"),
    (_resigned, ObservationRejected, None),
    (_altered_observation, ObservationRejected, None),
    (_altered_alive_in_tenure, ObservationRejected, None),
    (lambda r: r.model_copy(update={"observations": r.observations[:2]}), NotEnoughObservations, None),
    (lambda r: r.model_copy(update={"observations": (*r.observations[:2], r.observations[0])}),
     ObservationRejected, None),
], ids=["totals", "root", "amount", "availability", "settled", "alive-in-tenure", "totals-root", "previous",
        "signature", "observation-body", "observation-alive-in-tenure", "too-few", "same-oracle-twice"])
def test_a_tampered_report_fails_verification_naming_what_differs(
        honest_report: EpochReport, tamper: object, error: type[ReportError], field: str | None) -> None:
    tampered = tamper(honest_report)  # type: ignore[operator]
    with pytest.raises(error) as err:
        verify_report(tampered, DOMAIN, ORACLES, 3, None)
    if field is not None:
        assert isinstance(err.value, ReportMismatch)
        assert err.value.field == field


def test_a_report_from_a_foreign_oracle_set_or_another_previous_fails(honest_report: EpochReport) -> None:
    with pytest.raises(ObservationRejected, match="not in the oracle set"):
        verify_report(honest_report, DOMAIN, ORACLES[1:], 3, None)
    with pytest.raises(ReportMismatch) as err:
        verify_report(honest_report, DOMAIN, ORACLES, 3, honest_report.model_copy(update={"epoch": EPOCH - 1}))
    assert err.value.field == "previous_id"


def test_the_leader_rotates_over_the_sorted_oracles() -> None:
    shuffled = [ORACLES[2], ORACLES[0].lower(), ORACLES[3], ORACLES[1]]
    assert [leader(e, 0, shuffled).lower() for e in range(8)] == [o.lower() for o in ORACLES * 2]
    assert leader(5, 1, shuffled).lower() == ORACLES[(5 + 1) % 4].lower()  # after a timeout, the next one
    with pytest.raises(ValueError, match="no oracles"):
        leader(0, 0, [])


def test_proofs_are_for_the_cumulative_pay_and_only_for_what_was_earned(honest_report: EpochReport) -> None:
    c = claim(honest_report, 1, 2)
    assert (c.job_id, c.license_id, c.epoch, c.cumulative) == (1, 2, EPOCH, 693_000)
    assert verify(c.proof, honest_report.root_bytes, release_leaf(1, 2, 693_000))
    with pytest.raises(KeyError):
        proof(honest_report, 1, 3)


# ------------------------------------------------------------------ on chain


def _inputs_at(world: World, job_id: int, epoch: int) -> ChainInputs:
    """What a leader reads from the chain: the epoch's bounds, the job, the nodes' licenses."""
    genesis, seconds, _ = world.escrow.epoch_clock()
    block = world.chain.w3.eth.get_block("latest")
    nodes = tuple(sorted((NodeInput(node=k.address.lower(), license_id=lic,
                                    standing=standing_of(world.licenses.status_of(lic)))
                          for k, lic in zip(world.nodes, world.license_ids, strict=True)), key=lambda n: n.node))
    return ChainInputs(block=block["number"], block_hash="0x" + bytes(block["hash"]).hex(),
                       start_ms=(genesis + epoch * seconds) * 1000, end_ms=(genesis + (epoch + 1) * seconds) * 1000,
                       jobs=(JobInput.from_job(world.escrow.get_job(job_id)),), nodes=nodes)


def _observations(world: World, keys: list[LocalAccount], job_id: int, epoch: int, inputs: ChainInputs,
                  liar: LocalAccount) -> list[Observation]:
    """Node 0 holds replica 0 all epoch; node 1 holds replica 1 for 70 % of it, node 2 the rest: node 2
    is up from 30 % to 90 % of the epoch, so for 2/3 of its tenure. ``liar`` says node 0 was never up
    and node 2 always was."""
    start, end = inputs.start_ms, inputs.end_ms
    span = end - start
    n0, n1, n2 = (k.address for k in world.nodes[:3])
    held = [(job_id, 0, n0, start, end), (job_id, 1, n1, start, start + span * 7 // 10),
            (job_id, 1, n2, start + span * 7 // 10, end)]
    honest = compute_observation(start, end, watched=[(start, end)], held=held,
                                 alive=[(n0, start, end), (n1, start, end),
                                        (n2, start + span * 3 // 10, start + span * 9 // 10)])
    lie = compute_observation(start, end, watched=[(start, end)], held=held,
                              alive=[(n1, start, end), (n2, start, end)])
    domain = world.escrow.domain()
    return [sign_observation(domain, epoch, lie if k is liar else honest, k.key) for k in keys]


def test_a_report_of_four_oracles_settles_on_chain_and_pays_a_claim(world: World) -> None:
    assert world.oracles.threshold() == 3
    job_id = world.new_job(replicas=2, epochs=2)
    first = world.escrow.get_job(job_id).start_epoch
    domain = world.escrow.domain()
    oracle_set = world.oracles.oracles()
    previous: EpochReport | None = None
    owner = world.owners[0]
    for epoch in (first, first + 1):
        world.advance_to_epoch(epoch + 1)
        inputs = _inputs_at(world, job_id, epoch)
        observations = _observations(world, world.oracle_keys, job_id, epoch, inputs, liar=world.oracle_keys[3])
        assert {o.epoch for o in observations} == {epoch}
        chosen = select_observations(observations, domain, oracle_set, epoch, inputs.start_ms, inputs.end_ms)
        report = build_report(epoch, chosen.observations, inputs, previous, 3)
        for _follower in world.oracle_keys[:3]:
            verify_report(report, domain, oracle_set, 3, previous)
        assert report.digest(domain) == world.escrow.contract.functions.epochReportDigest(
            epoch, report.root_bytes, bytes.fromhex(report.totals_root[2:])).call()
        signers = sorted(world.oracle_keys[:3], key=lambda k: k.address.lower())
        world.escrow.submit_report(epoch, report.root_bytes, report.totals_root_bytes,
                                   [sign(report.message(domain), k.key) for k in signers], sender=world.outsider)
        assert world.escrow.totals_root_of(epoch) == report.totals_root_bytes

        # the liar moved nothing: node 0 earns its slot, node 2 (up 2/3 of its tenure) is withheld for the CSP
        price = 1_000_000
        assert report.settled == ((job_id, price * 99 // 100 + price * 7 // 10 * 99 // 100,
                                   price * 3 // 10, price // 100 + price * 7 // 10 // 100),)
        before = world.token.balance_of(owner)
        paid_before = world.escrow.claimed_of(job_id, world.license_ids[0])
        # the claim applies the report's totals of the job first, in the same transaction
        world.escrow.claim([claim(report, job_id, world.license_ids[0])], sender=world.outsider,
                           totals=report.totals_proofs([job_id]))
        job = world.escrow.get_job(job_id)
        assert (job.alloc_release, job.alloc_refund, job.alloc_burn) == report.totals[0][1:]
        assert world.escrow.settled_until(job_id) == epoch + 1
        cumulative = report.pay_of[(job_id, world.license_ids[0])]
        assert world.token.balance_of(owner) - before == cumulative - paid_before
        assert world.escrow.claimed_of(job_id, world.license_ids[0]) == cumulative
        world.assert_conserved()
        previous = report

    job = world.escrow.get_job(job_id)
    terms = job.conservation()
    assert terms["deposited"] == terms["released"] + terms["refunded"] + terms["burned"] + terms["locked"]
    assert terms["locked"] == 0  # both epochs settled: every unit of the deposit is assigned
    world.escrow.claim([claim(previous, job_id, world.license_ids[1])], sender=world.outsider)
    world.escrow.take_refund([job_id], sender=world.outsider)
    world.escrow.execute_burn([job_id], sender=world.outsider)
    world.assert_conserved()
    assert world.escrow.get_job(job_id).held == 0
