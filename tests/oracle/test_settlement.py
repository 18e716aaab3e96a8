"""Settlement math follows SETTLEMENT.md and always adds up to exactly the share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import SettlementPolicy
from oracle._settlement import Standing, compute_share_outcome, split_by_tenure

policies = st.builds(
    lambda floor, extra, bps: SettlementPolicy(release_threshold=min(255, floor + extra), burn_floor=floor,
                                               protocol_burn_bps=bps),
    st.integers(0, 255), st.integers(0, 255), st.integers(0, 10_000))


@given(st.integers(0, 10**24), st.integers(0, 255), policies, st.sampled_from(list(Standing)))
def test_parts_add_up_to_the_share(share: int, availability: int, policy: SettlementPolicy,
                                   standing: Standing) -> None:
    out = compute_share_outcome(share, availability, policy, standing)
    assert out.node + out.refund + out.burn == share
    assert min(out.node, out.refund, out.burn) >= 0


POLICY = SettlementPolicy(release_threshold=200, burn_floor=50, protocol_burn_bps=250)


def test_released_share_loses_the_protocol_burn_rounding_down() -> None:
    out = compute_share_outcome(1_000_003, 255, POLICY)
    assert out.burn == 25_000  # 2.5 % of 1,000,003 rounded down
    assert out.node == 975_002  # 97.5 % rounded down
    assert out.refund == 1  # the remainder is the CSP's


@pytest.mark.parametrize(("availability", "expected"), [
    (200, "node"), (199, "refund"), (50, "refund"), (49, "burn"), (0, "burn")])
def test_thresholds_are_inclusive_from_below(availability: int, expected: str) -> None:
    out = compute_share_outcome(1000, availability, SettlementPolicy(200, 50, 0))
    assert getattr(out, expected) == 1000


def test_standing_overrides_availability() -> None:
    assert compute_share_outcome(1000, 255, POLICY, Standing.RESTRICTED).refund == 1000
    assert compute_share_outcome(1000, 255, POLICY, Standing.BLACKLISTED).burn == 1000


def test_tenure_split_gives_unserved_time_and_remainders_to_the_csp() -> None:
    shares, csp = split_by_tenure(1000, {"a": 3, "b": 3}, 9)
    assert shares == {"a": 333, "b": 333}
    assert csp == 334


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="availability"):
        compute_share_outcome(1, 256, POLICY)
    with pytest.raises(ValueError, match="non-negative"):
        compute_share_outcome(-1, 0, POLICY)
    with pytest.raises(ValueError, match="fit in the epoch"):
        split_by_tenure(10, {"a": 6, "b": 6}, 10)
    with pytest.raises(ValueError, match="burn_floor"):
        SettlementPolicy(release_threshold=10, burn_floor=20)
