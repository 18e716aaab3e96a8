"""Signed observations: the wire form of one oracle's ``_observe.Observed``, its EIP-712 signature,
and a leader's selection of the observations it may cite (steps 1 and 2 of the round described in
``_report``). Pure: keys are arguments; no chain reads, no clock.

The EIP-712 struct ``Observation(uint64 epoch, bytes32 digest)``, under the escrow's domain, binds
the chain, the escrow and the epoch; ``digest`` is the keccak of the observation's canonical JSON
(sorted keys, no spaces) without its signature. Its type name differs from ``EpochReport``'s, so no
observation signature can pass for a report signature.

Usable observations (``select_observations``) are signed by a distinct member of the oracle set, of
this epoch, complete (coverage, ``_observe``). An oracle that signed two different observations of
one epoch equivocated: both are dropped, and it neither votes nor counts toward the threshold
(exact copies of one observation count once).

Also the frozen-model helpers ``_report`` builds on (``FrozenModel``, ``canonical_json``, ``memo``,
``check_strictly_increasing``) and the field types both use.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import coincurve
from eth_account import Account
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import digest, keccak, sign, to_checksum_address

from ._observe import Observed, is_complete
from ._report_errors import ObservationRejected

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT64 = 2**64

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
OBSERVATION_TYPE = [{"name": "epoch", "type": "uint64"}, {"name": "digest", "type": "bytes32"}]

NodeAddress = Annotated[str, Field(pattern=r"^0x[0-9a-f]{40}$")]  # lower-case, as ``_observe`` writes them
Availability = Annotated[int, Field(ge=0, le=255)]
Natural = Annotated[int, Field(ge=0)]
TenureRow = tuple[Natural, Natural, NodeAddress, Natural, Natural]  # (job, replica, node, tenure_ms, alive_ms)
_T = TypeVar("_T")
_OBSERVATION_BODY = ("availability", "coverage_ms", "end_ms", "epoch", "oracle", "start_ms", "tenure")


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def memo(model: BaseModel, name: str, fields: tuple[str, ...], compute: Callable[[], _T]) -> _T:
    """``compute()`` remembered on the frozen ``model`` for as long as the ``fields`` it reads are the
    same objects: ``model_copy(update=...)`` copies the memo but replaces fields, so a value derived
    from fields that were replaced is never served."""
    sources = tuple(model.__dict__[f] for f in fields)
    slot = model.__dict__.get(name)
    if slot is not None and all(a is b for a, b in zip(slot[0], sources, strict=True)):
        return cast(_T, slot[1])
    value = compute()
    model.__dict__[name] = (sources, value)
    return value


def check_strictly_increasing(keys: Sequence[Any], what: str) -> None:
    for i in range(1, len(keys)):
        if keys[i - 1] >= keys[i]:
            raise ValueError(f"{what} must be sorted with no duplicates (at index {i})")


def check_tenure_rows(rows: Sequence[tuple[int, int, str, int, int]], epoch_ms: int) -> None:
    """Sorted by (job, replica, node) with no duplicates; ``alive_ms <= tenure_ms <= epoch_ms``."""
    check_strictly_increasing([row[:3] for row in rows], "tenure")
    if any(row[3] > epoch_ms for row in rows):
        raise ValueError("a tenure is longer than the epoch")
    if any(row[4] > row[3] for row in rows):
        raise ValueError("a node is alive for longer than its tenure")


class Observation(FrozenModel):
    """One oracle's signed observation of an epoch (``_observe.Observed`` plus who and the signature)."""

    epoch: int = Field(ge=0, lt=UINT64)
    oracle: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    start_ms: Natural
    end_ms: Natural
    coverage_ms: Natural
    availability: tuple[tuple[NodeAddress, Availability], ...]  # whole epoch, per node
    tenure: tuple[TenureRow, ...]
    signature: str = Field(pattern=r"^0x[0-9a-f]{130}$")

    @field_validator("oracle")
    @classmethod
    def _checksummed(cls, v: str) -> str:
        return to_checksum_address(v)

    @model_validator(mode="after")
    def _canonical_shape(self) -> Observation:
        epoch_ms = self.end_ms - self.start_ms
        if epoch_ms <= 0 or self.coverage_ms > epoch_ms:
            raise ValueError("need start_ms < end_ms and coverage_ms within the epoch")
        check_strictly_increasing([node for node, _ in self.availability], "availability")
        check_tenure_rows(self.tenure, epoch_ms)
        return self

    @property
    def complete(self) -> bool:
        return is_complete(self.coverage_ms, self.end_ms - self.start_ms)

    def body(self) -> dict[str, Any]:
        """Everything but the signature, JSON-ready (tuples encode as arrays)."""
        return {"availability": self.availability, "coverage_ms": self.coverage_ms, "end_ms": self.end_ms,
                "epoch": self.epoch, "oracle": self.oracle, "start_ms": self.start_ms, "tenure": self.tenure}

    def body_digest(self) -> bytes:
        """keccak of the canonical JSON of ``body()``: what the signature covers (~20 ms for 10,000 nodes,
        so remembered)."""
        return memo(self, "_memo_body_digest", _OBSERVATION_BODY, lambda: keccak(canonical_json(self.body())))


def observation_message(domain: dict[str, Any], epoch: int, body_digest: bytes) -> dict[str, Any]:
    """The full EIP-712 ``Observation`` message (for ``contracts.sign`` and ``contracts.digest``)."""
    return {"types": {"EIP712Domain": _DOMAIN_TYPE, "Observation": OBSERVATION_TYPE}, "domain": domain,
            "primaryType": "Observation", "message": {"epoch": epoch, "digest": body_digest}}


def sign_observation(domain: dict[str, Any], epoch: int, observed: Observed, private_key: bytes | str) -> Observation:
    """``observed`` signed by the oracle holding ``private_key`` (its address is the ``oracle`` field)."""
    unsigned = Observation(epoch=epoch, oracle=Account.from_key(private_key).address, start_ms=observed.start_ms,
                           end_ms=observed.end_ms, coverage_ms=observed.coverage_ms,
                           availability=observed.availability, tenure=observed.tenure, signature="0x" + "00" * 65)
    signature = sign(observation_message(domain, epoch, unsigned.body_digest()), private_key)
    return unsigned.model_copy(update={"signature": "0x" + signature.hex()})


def recover_observer(observation: Observation, domain: dict[str, Any]) -> str | None:
    """The checksummed address that signed ``observation`` under ``domain``, or None if the signature
    is unusable: v not 27/28, r or s out of range, or s above n/2 (the malleable twin of a valid one)."""
    sig = bytes.fromhex(observation.signature[2:])
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28) or not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        return None
    message_digest = digest(observation_message(domain, observation.epoch, observation.body_digest()))
    try:
        public = coincurve.PublicKey.from_signature_and_message(sig[:64] + bytes([v - 27]), message_digest,
                                                                hasher=None)
    except ValueError:
        return None
    return to_checksum_address("0x" + keccak(public.format(compressed=False)[1:])[-20:].hex())


def verify_observation(observation: Observation, domain: dict[str, Any], oracle_set: Collection[str]) -> None:
    """Raise ``ObservationRejected`` unless ``observation`` is signed by its ``oracle``, a member of
    ``oracle_set``."""
    signer = recover_observer(observation, domain)
    if signer is None or signer != observation.oracle:
        raise ObservationRejected(observation.oracle, "signature does not recover to the oracle")
    if signer.lower() not in {o.lower() for o in oracle_set}:
        raise ObservationRejected(observation.oracle, "not in the oracle set")


@dataclass(frozen=True)
class Selection:
    """What a leader may cite (``observations``, sorted by oracle) and what it left out, with why."""

    observations: tuple[Observation, ...]
    equivocators: frozenset[str]
    rejected: tuple[tuple[str, str], ...]  # (oracle, reason)


def select_observations(observations: Iterable[Observation], domain: dict[str, Any], oracle_set: Collection[str],
                        epoch: int, start_ms: int, end_ms: int) -> Selection:
    """The usable observations of ``epoch`` ``[start_ms, end_ms)`` (module docstring)."""
    by_oracle: dict[str, dict[bytes, Observation]] = defaultdict(dict)
    rejected: list[tuple[str, str]] = []
    for obs in observations:
        try:
            verify_observation(obs, domain, oracle_set)
        except ObservationRejected as exc:
            rejected.append((obs.oracle, exc.reason))
            continue
        if obs.epoch != epoch or (obs.start_ms, obs.end_ms) != (start_ms, end_ms):
            rejected.append((obs.oracle, "not of this epoch"))
            continue
        by_oracle[obs.oracle][obs.body_digest()] = obs
    chosen: list[Observation] = []
    equivocators = frozenset(oracle for oracle, seen in by_oracle.items() if len(seen) > 1)
    for oracle, seen in by_oracle.items():
        if oracle in equivocators:
            rejected.append((oracle, "equivocated: signed two different observations of the epoch"))
            continue
        (obs,) = seen.values()
        if obs.complete:
            chosen.append(obs)
        else:
            rejected.append((oracle, "incomplete: watched too little of the epoch"))
    return Selection(tuple(sorted(chosen, key=lambda o: o.oracle.lower())), equivocators, tuple(sorted(rejected)))
