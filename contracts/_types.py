"""Frozen values exchanged with the contracts, with units in their types.

Enum values mirror the Solidity enums' order exactly (the ABI carries them as uint8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

Epoch = NewType("Epoch", int)
JobId = NewType("JobId", int)
LicenseId = NewType("LicenseId", int)
TokenUnits = NewType("TokenUnits", int)  # integer units of the payment token (6 decimals for mUSD)

BURN_ADDRESS = "0x000000000000000000000000000000000000dEaD"
BPS_DENOMINATOR = 10_000
AVAILABILITY_MAX = 255


class LicenseStatus(enum.IntEnum):
    ACTIVE = 0
    FROZEN = 1
    SUSPENDED = 2
    BLACKLISTED = 3


class CspStatus(enum.IntEnum):
    ACTIVE = 0
    FROZEN = 1
    SUSPENDED = 2
    BLACKLISTED = 3


class JobStatus(enum.IntEnum):
    NONE = 0
    ACTIVE = 1
    CANCELLED = 2
    CLOSED = 3


@dataclass(frozen=True)
class SettlementPolicy:
    """How a node's share is judged by its availability (0-255); see shared/SETTLEMENT.md."""

    release_threshold: int = 230  # ~90 % of the epoch alive: released
    burn_floor: int = 0  # below this: burned; 0 = never burn, only withhold
    protocol_burn_bps: int = 0  # share of every release that is burned

    def __post_init__(self) -> None:
        if not 0 <= self.burn_floor <= self.release_threshold <= AVAILABILITY_MAX:
            raise ValueError("policy needs 0 <= burn_floor <= release_threshold <= 255")
        if not 0 <= self.protocol_burn_bps <= BPS_DENOMINATOR:
            raise ValueError("protocol_burn_bps must be within 0..10000")


@dataclass(frozen=True)
class JobParams:
    """What a CSP funds: deposit = price_per_node_epoch x replicas x epochs."""

    spec_hash: bytes
    token: str
    replicas: int
    epochs: int
    start_epoch: Epoch
    price_per_node_epoch: TokenUnits
    policy: SettlementPolicy = SettlementPolicy()

    @property
    def deposit(self) -> TokenUnits:
        return TokenUnits(self.price_per_node_epoch * self.replicas * self.epochs)

    def as_abi(self) -> tuple[object, ...]:
        p = self.policy
        return (self.spec_hash, self.token, self.replicas, self.epochs, self.start_epoch,
                self.price_per_node_epoch, p.release_threshold, p.burn_floor, p.protocol_burn_bps)


@dataclass(frozen=True)
class Job:
    """A job as the escrow stores it, with its accounts."""

    job_id: JobId
    csp: str
    start_epoch: Epoch
    replicas: int
    token: str
    epochs: int
    status: JobStatus
    policy: SettlementPolicy
    spec_hash: bytes
    price_per_node_epoch: TokenUnits
    deposited: TokenUnits
    alloc_release: TokenUnits
    release_spent: TokenUnits
    alloc_refund: TokenUnits
    refunded: TokenUnits
    alloc_burn: TokenUnits
    burned: TokenUnits
    reclaimed: TokenUnits
    forfeited: TokenUnits

    @property
    def released(self) -> TokenUnits:
        """Node pay actually paid out (not forfeited)."""
        return TokenUnits(self.release_spent - self.forfeited)

    @property
    def locked(self) -> TokenUnits:
        """Deposit no report has allocated yet (and not reclaimed)."""
        return TokenUnits(self.deposited - self.reclaimed - self.alloc_release - self.alloc_refund - self.alloc_burn)

    @property
    def held(self) -> TokenUnits:
        """What the escrow still holds for this job: locked plus allocated but not yet paid."""
        return TokenUnits(self.deposited - self.release_spent - self.refunded - self.burned - self.reclaimed)

    def conservation(self) -> dict[str, int]:
        """SETTLEMENT.md's terms: released, refunded, burned (each taken or due) and locked."""
        return {
            "deposited": self.deposited,
            "released": self.alloc_release - self.forfeited,
            "refunded": self.alloc_refund + self.reclaimed,
            "burned": self.alloc_burn + self.forfeited,
            "locked": self.locked,
        }


@dataclass(frozen=True)
class JobTotals:
    """One job's cumulative totals in an epoch report."""

    job_id: JobId
    release: TokenUnits
    refund: TokenUnits
    burn: TokenUnits

    def as_abi(self) -> tuple[int, int, int, int]:
        return (self.job_id, self.release, self.refund, self.burn)


@dataclass(frozen=True)
class TotalsProof:
    """A job's cumulative totals in the report of ``epoch``, proven against its totals root."""

    totals: JobTotals
    epoch: Epoch
    proof: tuple[bytes, ...]

    def as_abi(self) -> tuple[object, ...]:
        t = self.totals
        return (t.job_id, self.epoch, t.release, t.refund, t.burn, list(self.proof))


@dataclass(frozen=True)
class Claim:
    """A (job, license) cumulative node pay proven against the root of ``epoch``."""

    job_id: JobId
    license_id: LicenseId
    epoch: Epoch
    cumulative: TokenUnits
    proof: tuple[bytes, ...]

    def as_abi(self) -> tuple[object, ...]:
        return (self.job_id, self.license_id, self.epoch, self.cumulative, list(self.proof))
