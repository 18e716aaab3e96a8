"""Settlement math (shared/SETTLEMENT.md §"Per slot and epoch"), as pure functions over integers.

Oracles, the audit and tests compute amounts with these and nothing else, so they agree to the
unit. No I/O, no clock, no web3.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from contracts import AVAILABILITY_MAX, BPS_DENOMINATOR, SettlementPolicy


class Standing(enum.Enum):
    """A node's standing during the epoch, from the license status (SETTLEMENT.md rule 3)."""

    ACTIVE = "active"
    RESTRICTED = "restricted"  # frozen or suspended: earns nothing, withheld for the CSP
    BLACKLISTED = "blacklisted"  # its share is burned


@dataclass(frozen=True)
class ShareOutcome:
    """Where one node's share of a slot-epoch goes. ``node + refund + burn`` is the share."""

    node: int
    refund: int
    burn: int


def compute_share_outcome(share: int, availability: int, policy: SettlementPolicy,
                          standing: Standing = Standing.ACTIVE) -> ShareOutcome:
    """Judge a node's ``share`` (token units) by its ``availability`` (0-255) and standing.

    Released shares lose ``protocol_burn_bps`` to the burn; node pay and burns round down and the
    remainder goes to the CSP, so the three parts always add up to exactly ``share``.
    """
    if share < 0:
        raise ValueError("share must be non-negative")
    if not 0 <= availability <= AVAILABILITY_MAX:
        raise ValueError("availability must be within 0..255")
    if standing is Standing.BLACKLISTED:
        return ShareOutcome(node=0, refund=0, burn=share)
    if standing is Standing.RESTRICTED:
        return ShareOutcome(node=0, refund=share, burn=0)
    if availability >= policy.release_threshold:
        burn = share * policy.protocol_burn_bps // BPS_DENOMINATOR
        node = share * (BPS_DENOMINATOR - policy.protocol_burn_bps) // BPS_DENOMINATOR
        return ShareOutcome(node=node, refund=share - node - burn, burn=burn)
    if availability >= policy.burn_floor:
        return ShareOutcome(node=0, refund=share, burn=0)
    return ShareOutcome(node=0, refund=0, burn=share)


def split_by_tenure(price: int, tenures: dict[str, int], epoch_length: int) -> tuple[dict[str, int], int]:
    """Split a slot's ``price`` among the nodes that served it, in proportion to the time each held
    a valid claim (``tenures[node]``, in the same unit as ``epoch_length``). Shares round down; the
    unserved time and every remainder are the CSP's. Returns (shares, csp_part)."""
    if sum(tenures.values()) > epoch_length or any(t < 0 for t in tenures.values()):
        raise ValueError("tenures must be non-negative and fit in the epoch")
    shares = {node: price * t // epoch_length for node, t in tenures.items()}
    return shares, price - sum(shares.values())
