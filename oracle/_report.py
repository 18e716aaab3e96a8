"""Signed observations, their median, the epoch report and a follower's check of it. Pure: keys,
chain reads and time are the caller's; every oracle and the auditor compute the same bytes.

The round, in the style of Chainlink OCR (issue 6):

1. Each oracle signs its observation of the epoch (``_observe``): ``sign_observation``. The EIP-712
   struct ``Observation(uint64 epoch, bytes32 digest)``, under the escrow's domain, binds the chain,
   the escrow and the epoch; ``digest`` is the keccak of the observation's canonical JSON (sorted
   keys, no spaces) without its signature. Its type name differs from ``EpochReport``'s, so no
   observation signature can pass for a report signature.
2. The leader of the round (``leader``) keeps the usable ones (``select_observations``): signed by a
   distinct member of the oracle set, for this epoch, complete (coverage, ``_observe``). An oracle
   that signed two different observations of one epoch equivocated: both are dropped, and it
   neither votes nor counts toward the threshold (exact copies of one observation count once).
3. ``build_report`` takes the per-node MEDIAN availability and the per-(job, replica, node) median
   tenure over at least ``threshold`` of them, reads each job's price, replica count and policy and
   each node's license and standing from ``ChainInputs`` (read by the leader at one block, cited),
   settles every slot of every job active in the epoch (``_settlement``), adds it to the previous
   report's cumulative amounts and builds the Merkle tree of node pay.
4. Followers run ``verify_report`` (it rebuilds the report from what it cites) and sign
   ``report.message(domain)``; any oracle submits the root and totals with t signatures.

Medians: a node (or tenure) absent from an observation counts as 0 there; with an even count the
LOWER median is taken (the smaller of the two middle values: nothing is paid on a value only half
the oracles vouch for). With n observations of which f < n/2 are arbitrary, every median lies
between the smallest and the largest honest value. A replica's median tenures can sum above the
epoch (each median comes from different oracles); then they are scaled down in proportion,
rounding down, so that they fit.

Settlement per slot (shared/SETTLEMENT.md): a tenure entry for a replica >= the job's count this
epoch, or for a job not active this epoch, pays nothing. A holder with no license in the inputs
earns nothing; its share is refunded to the CSP like unserved time. Amounts are cumulative: a
report carries forward every (job, license) pay and every job's totals of the previous one, so the
latest root proves everything earned so far. A report settles its own epoch only and builds on
the last report, whichever epoch that had: an epoch no report settled stays locked (nothing is
paid on a guess) and the escrow returns it to the CSP when the job is closed after its grace
period (``closeJob``).

Errors: ``ReportError`` is the base of ``ObservationRejected`` (oracle, reason),
``NotEnoughObservations`` (have, need) and ``ReportMismatch`` (field, detail).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Annotated, Any, TypeVar, cast

import coincurve
from eth_account import Account
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import (
    Claim,
    Epoch,
    Job,
    JobId,
    JobStatus,
    JobTotals,
    LicenseId,
    LicenseStatus,
    SettlementPolicy,
    TokenUnits,
    digest,
    epoch_report,
    keccak,
    sign,
    to_checksum_address,
)

from ._merkle import MerkleTree
from ._observe import Observed, is_complete
from ._settlement import Standing, compute_share_outcome, split_by_tenure

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT64 = 2**64
UINT128 = 2**128
EMPTY_ROOT = bytes(32)  # no node pay yet: no leaf hashes to zero, so nothing proves against it

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
_T = TypeVar("_T")
_OBSERVATION_BODY = ("availability", "coverage_ms", "end_ms", "epoch", "oracle", "start_ms", "tenure")
_LEAF_KIND = (1).to_bytes(32, "big")  # the leaf's first word: LEAF_RELEASE, a uint8
_WORD_ONE = (32).to_bytes(32, "big")  # abi.encode of a lone dynamic array starts with its offset, 0x20


# ------------------------------------------------------------------ errors


class ReportError(Exception):
    """An observation or a report the rules refuse (module docstring: the subclasses)."""


class ObservationRejected(ReportError):
    def __init__(self, oracle: str, reason: str) -> None:
        super().__init__(f"observation of {oracle}: {reason}")
        self.oracle, self.reason = oracle, reason


class NotEnoughObservations(ReportError):
    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} usable observations, {need} needed")
        self.have, self.need = have, need


class ReportMismatch(ReportError):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"report field {field!r} does not follow from what it cites: {detail}")
        self.field, self.detail = field, detail


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _memo(model: BaseModel, name: str, fields: tuple[str, ...], compute: Callable[[], _T]) -> _T:
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


def _strictly_increasing(keys: Sequence[Any], what: str) -> None:
    for i in range(1, len(keys)):
        if keys[i - 1] >= keys[i]:
            raise ValueError(f"{what} must be sorted with no duplicates (at index {i})")


# ------------------------------------------------------------------ observations


class Observation(_Frozen):
    """One oracle's signed observation of an epoch (``_observe.Observed`` plus who and the signature)."""

    epoch: int = Field(ge=0, lt=UINT64)
    oracle: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    start_ms: Natural
    end_ms: Natural
    coverage_ms: Natural
    availability: tuple[tuple[NodeAddress, Availability], ...]
    tenure: tuple[tuple[Natural, Natural, NodeAddress, Natural], ...]  # (job, replica, node, ms)
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
        _strictly_increasing([node for node, _ in self.availability], "availability")
        _strictly_increasing([t[:3] for t in self.tenure], "tenure")
        if any(t[3] > epoch_ms for t in self.tenure):
            raise ValueError("a tenure is longer than the epoch")
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
        return _memo(self, "_memo_body_digest", _OBSERVATION_BODY, lambda: keccak(_canonical(self.body())))


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
    """The usable observations of ``epoch`` ``[start_ms, end_ms)`` (module docstring, step 2)."""
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


# ------------------------------------------------------------------ chain inputs


class JobInput(_Frozen):
    """A job as the escrow had it at the cited block, with the replica count valid for the epoch
    (a job scaled later pays this epoch at the old count: ``compute_replicas_at``)."""

    job_id: int = Field(ge=1)
    price_per_node_epoch: Natural
    replicas: Natural
    start_epoch: Natural
    epochs: Natural
    status: JobStatus
    policy: SettlementPolicy

    def is_active_in(self, epoch: int) -> bool:
        return self.status is JobStatus.ACTIVE and self.start_epoch <= epoch < self.start_epoch + self.epochs

    @classmethod
    def from_job(cls, job: Job, replicas: int | None = None) -> JobInput:
        """From ``JobEscrowClient.get_job``; ``replicas``: the count for the epoch if it was scaled since."""
        return cls(job_id=job.job_id, price_per_node_epoch=job.price_per_node_epoch,
                   replicas=job.replicas if replicas is None else replicas, start_epoch=job.start_epoch,
                   epochs=job.epochs, status=job.status, policy=job.policy)


def compute_replicas_at(epoch: int, replicas_now: int, scalings: Iterable[tuple[int, int, int]]) -> int:
    """A job's replica count in ``epoch`` from its ``JobScaled`` events in chain order, each
    ``(from_epoch, previous, current)``: ``current`` of the last one with ``from_epoch <= epoch``,
    else ``previous`` of the first one (the count it was created with), else ``replicas_now``.
    Valid because ``from_epoch`` never decreases from one event to the next (it is the later of the
    start and the epoch after the scale)."""
    count: int | None = None
    first_previous: int | None = None
    for from_epoch, previous, current in scalings:
        if first_previous is None:
            first_previous = previous
        if from_epoch <= epoch:
            count = current
    if count is not None:
        return count
    return replicas_now if first_previous is None else first_previous


class NodeInput(_Frozen):
    """A node's license and its standing during the epoch (``standing_of`` the license status)."""

    node: NodeAddress
    license_id: int = Field(ge=1)
    standing: Standing


def standing_of(status: LicenseStatus) -> Standing:
    """SETTLEMENT.md rule 3: frozen and suspended licenses earn nothing; blacklisted ones burn."""
    if status is LicenseStatus.BLACKLISTED:
        return Standing.BLACKLISTED
    return Standing.ACTIVE if status is LicenseStatus.ACTIVE else Standing.RESTRICTED


class ChainInputs(_Frozen):
    """What the leader read from the chain at ``block`` for the epoch ``[start_ms, end_ms)`` (the
    escrow's epoch clock); followers read the same block and compare."""

    block: Natural
    block_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    start_ms: Natural
    end_ms: Natural
    jobs: tuple[JobInput, ...]
    nodes: tuple[NodeInput, ...]

    @model_validator(mode="after")
    def _sorted(self) -> ChainInputs:
        if self.end_ms <= self.start_ms:
            raise ValueError("an epoch needs end_ms > start_ms")
        _strictly_increasing([j.job_id for j in self.jobs], "jobs")
        _strictly_increasing([n.node for n in self.nodes], "nodes")
        return self


# ------------------------------------------------------------------ aggregation


def lower_median(values: Sequence[int]) -> int:
    """The ``(n-1)//2``-th smallest value: the median, or the lower of the two middle values."""
    return sorted(values)[(len(values) - 1) // 2]


def _median_with_zeros(values: list[int], n: int) -> int:
    """``lower_median`` of ``values`` padded with zeros to ``n`` (absent = 0) without padding."""
    rank, zeros = (n - 1) // 2, n - len(values)
    return 0 if rank < zeros else sorted(values)[rank - zeros]


@dataclass(frozen=True)
class Aggregate:
    """The medians: sorted ``(node, availability)`` and ``(job, replica, node, tenure_ms)``, zeros left out."""

    availability: tuple[tuple[str, int], ...]
    tenure: tuple[tuple[int, int, str, int], ...]


def aggregate(observations: Sequence[Observation], threshold: int) -> Aggregate:
    """Medians over ``observations`` (module docstring): at least ``threshold`` complete ones from
    distinct oracles, for one epoch with the same bounds; else ``NotEnoughObservations`` or
    ``ObservationRejected``. Signatures are the caller's to check (``select_observations``)."""
    if threshold < 1:
        raise ValueError("the threshold must be at least 1")
    seen: set[str] = set()
    bounds = (observations[0].epoch, observations[0].start_ms, observations[0].end_ms) if observations else None
    for obs in observations:
        if obs.oracle in seen:
            raise ObservationRejected(obs.oracle, "a second observation from the same oracle")
        seen.add(obs.oracle)
        if (obs.epoch, obs.start_ms, obs.end_ms) != bounds:
            raise ObservationRejected(obs.oracle, "not of the same epoch as the others")
        if not obs.complete:
            raise ObservationRejected(obs.oracle, "incomplete: watched too little of the epoch")
    n = len(observations)
    if n < threshold:
        raise NotEnoughObservations(n, threshold)
    epoch_ms = observations[0].end_ms - observations[0].start_ms

    by_node: dict[str, list[int]] = defaultdict(list)
    by_key: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for obs in observations:
        for node, a in obs.availability:
            by_node[node].append(a)
        for job, replica, node, ms in obs.tenure:
            by_key[(job, replica, node)].append(ms)
    availability = sorted((node, m) for node, values in by_node.items() if (m := _median_with_zeros(values, n)))
    medians = sorted((key, m) for key, values in by_key.items() if (m := _median_with_zeros(values, n)))

    tenure: list[tuple[int, int, str, int]] = []
    for _, entries in groupby(medians, key=lambda entry: entry[0][:2]):  # one replica at a time
        group = list(entries)
        total = sum(ms for _, ms in group)
        for (job, replica, node), ms in group:
            clipped = ms if total <= epoch_ms else ms * epoch_ms // total
            if clipped:
                tenure.append((job, replica, node, clipped))
    return Aggregate(tuple(availability), tuple(tenure))


# ------------------------------------------------------------------ the report


class EpochReport(_Frozen):
    """An epoch's agreed report: what it cites (observations, chain inputs, the previous report),
    what follows from them (medians; this epoch's and the cumulative amounts; node pay), and the
    two values the escrow checks (``root``, ``totals_hash``). Amounts are token units."""

    epoch: int = Field(ge=0, lt=UINT64)
    previous_id: str | None  # content id of the report this one builds on
    previous_epoch: int | None
    observations: tuple[Observation, ...]  # sorted by oracle
    inputs: ChainInputs
    availability: tuple[tuple[NodeAddress, Availability], ...]
    tenure: tuple[tuple[Natural, Natural, NodeAddress, Natural], ...]
    settled: tuple[tuple[Natural, Natural, Natural, Natural], ...]  # this epoch: (job, release, refund, burn)
    totals: tuple[tuple[Natural, Natural, Natural, Natural], ...]  # cumulative, job ids strictly increasing
    pay: tuple[tuple[Natural, Natural, Natural], ...]  # cumulative (job, license, amount > 0), sorted
    root: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    totals_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _canonical_shape(self) -> EpochReport:
        _strictly_increasing([row[0] for row in self.totals], "totals")  # the escrow requires it
        _strictly_increasing([row[:2] for row in self.pay], "pay")
        return self

    def job_totals(self) -> list[JobTotals]:
        """The ``JobTotals[]`` to submit with the root."""
        return [JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(b)) for j, r, f, b in self.totals]

    @property
    def root_bytes(self) -> bytes:
        return bytes.fromhex(self.root[2:])

    def message(self, domain: dict[str, Any]) -> dict[str, Any]:
        """The EIP-712 ``EpochReport`` message oracles sign (``contracts.sign``)."""
        return epoch_report(domain, self.epoch, self.root_bytes, bytes.fromhex(self.totals_hash[2:]))

    def digest(self, domain: dict[str, Any]) -> bytes:
        """The 32-byte digest the escrow's ``submitReport`` checks the signatures against."""
        return digest(self.message(domain))

    def content_id(self) -> str:
        """sha256 (hex) of the report's canonical JSON (sorted keys, no spaces): its name where
        reports are stored. Remembered: the next report cites it."""
        return _memo(self, "_memo_content_id", tuple(type(self).model_fields),
                     lambda: hashlib.sha256(_canonical(self._json())).hexdigest())

    def _json(self) -> dict[str, Any]:
        # model_dump(mode="json") costs ~0.3 s for 10,000 nodes; json.dumps takes tuples as arrays
        value = {name: getattr(self, name) for name in type(self).model_fields}
        value["observations"] = [{**o.body(), "signature": o.signature} for o in self.observations]
        value["inputs"] = self.inputs.model_dump(mode="json")
        return value

    @property
    def tree(self) -> MerkleTree | None:
        """The Merkle tree of node pay (None when nobody has earned anything yet), built once."""
        return _memo(self, "_memo_tree", ("pay",), lambda: _pay_tree(self.pay))

    @property
    def pay_of(self) -> dict[tuple[int, int], int]:
        """Cumulative node pay by (job, license)."""
        return _memo(self, "_memo_pay_of", ("pay",),
                     lambda: {(job, license_id): amount for job, license_id, amount in self.pay})


def _release_leaf(job: int, license_id: int, amount: int) -> bytes:
    """``contracts.release_leaf`` without eth_abi's checks (~20 µs a leaf there, most of a
    10,000-node report's build): the same bytes, held equal by a test."""
    return keccak(keccak(_LEAF_KIND + job.to_bytes(32, "big") + license_id.to_bytes(32, "big")
                         + amount.to_bytes(32, "big")))


def _totals_hash(rows: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``contracts.totals_hash`` of the rows as ``JobTotals``, encoded directly (held equal by a test)."""
    return keccak(b"".join([_WORD_ONE, len(rows).to_bytes(32, "big"),
                            *(v.to_bytes(32, "big") for row in rows for v in row)]))


def _pay_tree(pay: Sequence[tuple[int, int, int]]) -> MerkleTree | None:
    leaves = [_release_leaf(job, license_id, amount) for job, license_id, amount in pay]
    return MerkleTree(leaves) if leaves else None


def build_report(epoch: int, observations: Sequence[Observation], inputs: ChainInputs,
                 previous: EpochReport | None, threshold: int) -> EpochReport:
    """The report of ``epoch`` (module docstring, step 3) from complete observations of distinct
    oracles (signatures already checked: ``select_observations``)."""
    cited = tuple(sorted(observations, key=lambda o: o.oracle.lower()))
    for obs in cited:
        if obs.epoch != epoch or (obs.start_ms, obs.end_ms) != (inputs.start_ms, inputs.end_ms):
            raise ObservationRejected(obs.oracle, "not of this epoch")
    if previous is not None and previous.epoch >= epoch:
        raise ReportError(f"the previous report is of epoch {previous.epoch}, not before {epoch}")
    medians = aggregate(cited, threshold)
    epoch_ms = inputs.end_ms - inputs.start_ms
    availability = dict(medians.availability)
    nodes = {n.node: n for n in inputs.nodes}
    slots: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
    for job_id, replica, node, ms in medians.tenure:
        slots[(job_id, replica)][node] = ms

    totals: dict[int, list[int]] = {j: [r, f, b] for j, r, f, b in previous.totals} if previous else {}
    pay: dict[tuple[int, int], int] = dict(previous.pay_of) if previous else {}
    settled: list[tuple[int, int, int, int]] = []
    for job in inputs.jobs:
        if not job.is_active_in(epoch):
            continue
        release = refund = burn = 0
        for replica in range(job.replicas):
            shares, unserved = split_by_tenure(job.price_per_node_epoch, slots.get((job.job_id, replica), {}),
                                               epoch_ms)
            refund += unserved
            for node, share in shares.items():
                holder = nodes.get(node)
                if holder is None:  # no license: earns nothing, the CSP's
                    refund += share
                    continue
                out = compute_share_outcome(share, availability.get(node, 0), job.policy, holder.standing)
                release, refund, burn = release + out.node, refund + out.refund, burn + out.burn
                if out.node:
                    key = (job.job_id, holder.license_id)
                    pay[key] = pay.get(key, 0) + out.node
        settled.append((job.job_id, release, refund, burn))
        cumulative = totals.setdefault(job.job_id, [0, 0, 0])
        cumulative[0] += release
        cumulative[1] += refund
        cumulative[2] += burn

    total_rows = tuple((j, totals[j][0], totals[j][1], totals[j][2]) for j in sorted(totals))
    pay_rows = tuple((j, lic, amount) for (j, lic), amount in sorted(pay.items()) if amount)
    if any(value >= UINT128 for row in total_rows for value in row[1:]):
        raise ReportError("a cumulative total does not fit the escrow's uint128")
    tree = _pay_tree(pay_rows)
    report = EpochReport(
        epoch=epoch, previous_id=previous.content_id() if previous else None,
        previous_epoch=previous.epoch if previous else None, observations=cited, inputs=inputs,
        availability=medians.availability, tenure=medians.tenure, settled=tuple(settled), totals=total_rows,
        pay=pay_rows, root="0x" + (tree.root if tree else EMPTY_ROOT).hex(),
        totals_hash="0x" + _totals_hash(total_rows).hex())
    report.__dict__["_memo_tree"] = ((report.pay,), tree)  # built once (``_memo``)
    return report


_COMPARED = ("observations", "previous_id", "previous_epoch", "availability", "tenure", "settled", "totals", "pay",
             "root", "totals_hash")


def verify_report(report: EpochReport, domain: dict[str, Any], oracle_set: Collection[str], threshold: int,
                  previous: EpochReport | None) -> None:
    """A follower's check that ``report`` follows from what it cites: every cited observation signed
    by a distinct member of ``oracle_set``, at least ``threshold`` complete ones of this epoch, and
    every derived field equal to ``build_report``'s from them, ``report.inputs`` and ``previous``.
    Raises ``ObservationRejected``, ``NotEnoughObservations`` or ``ReportMismatch`` (naming the field).
    The chain inputs themselves are the caller's to check (read the chain at ``inputs.block``)."""
    for obs in report.observations:
        verify_observation(obs, domain, oracle_set)
        if obs.epoch != report.epoch:
            raise ObservationRejected(obs.oracle, "not of this epoch")
    expected = build_report(report.epoch, report.observations, report.inputs, previous, threshold)
    for name in _COMPARED:
        ours, theirs = getattr(expected, name), getattr(report, name)
        if ours != theirs:
            raise ReportMismatch(name, _difference(ours, theirs))


def _difference(ours: Any, theirs: Any) -> str:
    """The first difference, briefly (an entry can be an observation of 10,000 nodes)."""
    if isinstance(ours, tuple) and isinstance(theirs, tuple):
        for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
            if a != b:
                return f"entry {i}: expected {_brief(a)}, got {_brief(b)}"
        return f"expected {len(ours)} entries, got {len(theirs)}"
    return f"expected {_brief(ours)}, got {_brief(theirs)}"


def _brief(value: Any, limit: int = 160) -> str:
    if isinstance(value, Observation):
        return f"the observation of {value.oracle}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ leaders and claims


def leader(epoch: int, round_: int, oracles: Collection[str]) -> str:
    """The leader of ``round_`` (0, then 1 after a timeout, ...) of ``epoch``: the oracle addresses
    sorted by their numeric value (lower-case hex), index ``(epoch + round_) mod n``. Every epoch
    starts with a different oracle, and a silent leader is replaced by the next in line."""
    if not oracles:
        raise ValueError("no oracles")
    ordered = sorted(oracles, key=str.lower)
    return ordered[(epoch + round_) % len(ordered)]


def proof(report: EpochReport, job: int, license_id: int) -> tuple[bytes, ...]:
    """The Merkle proof of (job, license)'s cumulative pay in ``report``; ``KeyError`` if it has none."""
    amount = report.pay_of[(job, license_id)]
    tree = report.tree
    if tree is None:  # unreachable: there is pay, so there are leaves
        raise KeyError((job, license_id))
    return tree.proof(_release_leaf(job, license_id, amount))


def claim(report: EpochReport, job: int, license_id: int) -> Claim:
    """The escrow ``Claim`` of (job, license)'s cumulative pay against ``report``'s root."""
    return Claim(JobId(job), LicenseId(license_id), Epoch(report.epoch), TokenUnits(report.pay_of[(job, license_id)]),
                 proof(report, job, license_id))
