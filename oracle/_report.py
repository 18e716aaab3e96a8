"""The epoch report: the medians of the cited observations, the settlement of every slot, and a
follower's check of it. Pure: keys, chain reads and time are the caller's; every oracle and the
auditor compute the same bytes.

The round, in the style of Chainlink OCR (issue 6):

1. Each oracle signs its observation of the epoch (``_observe`` computes it, ``_observation``
   signs it under the escrow's domain): ``sign_observation``.
2. The leader of the round (``leader``) keeps the usable ones (``select_observations``): signed by a
   distinct member of the oracle set, for this epoch, complete; an oracle that equivocated is left
   out entirely (``_observation``).
3. ``build_report`` takes, over at least ``threshold`` of them, the per-node MEDIAN availability
   (over the whole epoch: for auditors and displays) and, per (job, replica, node), the median
   tenure and the median ms of that tenure the node was seen alive; reads each job's price,
   replica count and policy and each node's license and standing from ``ChainInputs`` (read by the
   leader at one block, cited); settles every slot of every job active in the epoch
   (``_settlement``), each share judged by its holder's availability during its tenure; adds it to
   the previous report's cumulative amounts and builds the Merkle tree of node pay.
4. Followers run ``verify_report`` (it rebuilds the report from what it cites) and sign
   ``report.message(domain)``; any oracle submits the root and totals with t signatures.

Medians: a node (or tenure) absent from an observation counts as 0 there; with an even count the
LOWER median is taken (the smaller of the two middle values: nothing is paid on a value only half
the oracles vouch for). With n observations of which f < n/2 are arbitrary, every median lies
between the smallest and the largest honest value. The tenure and the alive-in-tenure of an entry
are medians taken separately (possibly of different oracles), so the alive ms is clipped to the
tenure. A replica's median tenures can sum above the epoch (each median comes from different
oracles); then each tenure and its alive ms are scaled down in the same proportion, rounding down,
so that they fit and the share of the tenure seen alive stays (to the rounding).

Settlement per slot (shared/SETTLEMENT.md): a tenure entry for a replica >= the job's count this
epoch, or for a job not active this epoch, pays nothing. A holder with no license in the inputs
earns nothing; its share is refunded to the CSP like unserved time. Amounts are cumulative: a
report carries forward every (job, license) pay and every job's totals of the previous one, so the
latest root proves everything earned so far. A report settles its own epoch only and builds on
the last report, whichever epoch that had: an epoch no report settled stays locked (nothing is
paid on a guess) and the escrow returns it to the CSP when the job is closed after its grace
period (``closeJob``).

Errors (``_report_errors``): ``ReportError`` is the base of ``ObservationRejected`` (oracle,
reason), ``NotEnoughObservations`` (have, need) and ``ReportMismatch`` (field, detail). The
observation model and its helpers live in ``_observation`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from pydantic import Field, model_validator

from contracts import (
    Claim,
    Epoch,
    Job,
    JobId,
    JobStatus,
    JobTotals,
    LicenseId,
    LicenseStatus,
    MerkleTree,
    SettlementPolicy,
    TokenUnits,
    TotalsProof,
    digest,
    epoch_report,
    keccak,
)

from ._observation import (
    OBSERVATION_TYPE,
    SECP256K1_N,
    UINT64,
    Availability,
    FrozenModel,
    Natural,
    NodeAddress,
    Observation,
    Selection,
    TenureRow,
    canonical_json,
    check_strictly_increasing,
    memo,
    observation_message,
    recover_observer,
    select_observations,
    sign_observation,
    verify_observation,
)
from ._observe import TenureKey, compute_tenure_availability
from ._report_errors import NotEnoughObservations, ObservationRejected, ReportError, ReportMismatch
from ._settlement import ShareOutcome, Standing, compute_share_outcome, split_by_tenure

__all__ = [
    "EMPTY_ROOT",
    "OBSERVATION_TYPE",
    "SECP256K1_N",
    "UINT64",
    "UINT128",
    "Aggregate",
    "ChainInputs",
    "EpochReport",
    "JobInput",
    "NodeInput",
    "NotEnoughObservations",
    "Observation",
    "ObservationRejected",
    "ReportError",
    "ReportMismatch",
    "Selection",
    "aggregate",
    "build_report",
    "claim",
    "compute_replicas_at",
    "leader",
    "lower_median",
    "observation_message",
    "proof",
    "recover_observer",
    "select_observations",
    "sign_observation",
    "standing_of",
    "verify_observation",
    "verify_report",
]

UINT128 = 2**128
EMPTY_ROOT = bytes(32)  # no node pay yet: no leaf hashes to zero, so nothing proves against it
NO_TOTALS = bytes(32)  # no job yet (contracts.totals_root of nothing)
_LEAF_KIND = (1).to_bytes(32, "big")  # the leaf's first word: LEAF_RELEASE, a uint8
_TOTALS_KIND = (2).to_bytes(32, "big")  # LEAF_TOTALS


# ------------------------------------------------------------------ chain inputs


class JobInput(FrozenModel):
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


class NodeInput(FrozenModel):
    """A node's license and its standing during the epoch (``standing_of`` the license status)."""

    node: NodeAddress
    license_id: int = Field(ge=1)
    standing: Standing


def standing_of(status: LicenseStatus) -> Standing:
    """SETTLEMENT.md rule 3: frozen and suspended licenses earn nothing; blacklisted ones burn."""
    if status is LicenseStatus.BLACKLISTED:
        return Standing.BLACKLISTED
    return Standing.ACTIVE if status is LicenseStatus.ACTIVE else Standing.RESTRICTED


class ChainInputs(FrozenModel):
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
        check_strictly_increasing([j.job_id for j in self.jobs], "jobs")
        check_strictly_increasing([n.node for n in self.nodes], "nodes")
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
    """The medians: sorted ``(node, availability)`` over the whole epoch and ``(job, replica, node,
    tenure_ms, alive_ms)`` (``alive_ms``: of the tenure, the ms the node was seen alive), zero
    availabilities and zero tenures left out."""

    availability: tuple[tuple[str, int], ...]
    tenure: tuple[tuple[int, int, str, int, int], ...]


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
    by_key: dict[TenureKey, list[int]] = defaultdict(list)  # tenure, alive, tenure, alive, ...: one list a key
    for obs in observations:
        for node, a in obs.availability:
            by_node[node].append(a)
        for job, replica, node, ms, alive_ms in obs.tenure:
            pairs = by_key[(job, replica, node)]
            pairs.append(ms)
            pairs.append(alive_ms)
    availability = sorted((node, m) for node, values in by_node.items() if (m := _median_with_zeros(values, n)))
    medians = sorted((key, t, min(_median_with_zeros(pairs[1::2], n), t)) for key, pairs in by_key.items()
                     if (t := _median_with_zeros(pairs[::2], n)))

    tenure: list[tuple[int, int, str, int, int]] = []
    for _, entries in groupby(medians, key=lambda entry: entry[0][:2]):  # one replica at a time
        group = list(entries)
        total = sum(t for _, t, _ in group)
        for (job, replica, node), t, alive_ms in group:
            if total > epoch_ms:  # both in the same proportion: the share of the tenure seen alive stays
                t, alive_ms = t * epoch_ms // total, alive_ms * epoch_ms // total
            if t:
                tenure.append((job, replica, node, t, alive_ms))
    return Aggregate(tuple(availability), tuple(tenure))


# ------------------------------------------------------------------ the report


class EpochReport(FrozenModel):
    """An epoch's agreed report: what it cites (observations, chain inputs, the previous report),
    what follows from them (medians; this epoch's and the cumulative amounts; node pay), and the
    two roots the escrow checks (``root`` of node pay, ``totals_root`` of job totals). Amounts are
    token units."""

    epoch: int = Field(ge=0, lt=UINT64)
    previous_id: str | None  # content id of the report this one builds on
    previous_epoch: int | None
    observations: tuple[Observation, ...]  # sorted by oracle
    inputs: ChainInputs
    availability: tuple[tuple[NodeAddress, Availability], ...]  # medians over the whole epoch: not money
    tenure: tuple[TenureRow, ...]  # medians: (job, replica, node, tenure_ms, alive_ms), what shares are judged by
    settled: tuple[tuple[Natural, Natural, Natural, Natural], ...]  # this epoch: (job, release, refund, burn)
    totals: tuple[tuple[Natural, Natural, Natural, Natural], ...]  # cumulative, job ids strictly increasing
    pay: tuple[tuple[Natural, Natural, Natural], ...]  # cumulative (job, license, amount > 0), sorted
    root: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    totals_root: str = Field(pattern=r"^0x[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _canonical_shape(self) -> EpochReport:
        check_strictly_increasing([row[0] for row in self.totals], "totals")  # the escrow requires it
        check_strictly_increasing([row[:2] for row in self.pay], "pay")
        return self

    def job_totals(self) -> list[JobTotals]:
        """Every job's cumulative totals (the leaves of ``totals_root``)."""
        return [JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(b)) for j, r, f, b in self.totals]

    def totals_proofs(self, job_ids: Iterable[int]) -> list[TotalsProof]:
        """Proofs of the totals of ``job_ids`` against ``totals_root`` (``escrow.apply_totals``),
        in the order given; ``KeyError`` for a job the report has no totals for."""
        tree = self.totals_tree
        rows = {row[0]: row for row in self.totals}
        out = []
        for job_id in job_ids:
            j, r, f, b = rows[job_id]
            assert tree is not None  # rows is not empty
            out.append(TotalsProof(JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(b)),
                                   Epoch(self.epoch), tree.proof(_totals_leaf(j, r, f, b))))
        return out

    @property
    def root_bytes(self) -> bytes:
        return bytes.fromhex(self.root[2:])

    @property
    def totals_root_bytes(self) -> bytes:
        return bytes.fromhex(self.totals_root[2:])

    @property
    def totals_tree(self) -> MerkleTree | None:
        """The Merkle tree of job totals (None when there is no job), built once."""
        return memo(self, "_memo_totals_tree", ("totals",), lambda: _totals_tree(self.totals))

    def message(self, domain: dict[str, Any]) -> dict[str, Any]:
        """The EIP-712 ``EpochReport`` message oracles sign (``contracts.sign``)."""
        return epoch_report(domain, self.epoch, self.root_bytes, self.totals_root_bytes)

    def digest(self, domain: dict[str, Any]) -> bytes:
        """The 32-byte digest the escrow's ``submitReport`` checks the signatures against."""
        return digest(self.message(domain))

    def content_id(self) -> str:
        """sha256 (hex) of the report's canonical JSON (sorted keys, no spaces): its name where
        reports are stored. Remembered: the next report cites it."""
        return memo(self, "_memo_content_id", tuple(type(self).model_fields),
                    lambda: hashlib.sha256(canonical_json(self._json())).hexdigest())

    def _json(self) -> dict[str, Any]:
        # model_dump(mode="json") costs ~0.3 s for 10,000 nodes; json.dumps takes tuples as arrays
        value = {name: getattr(self, name) for name in type(self).model_fields}
        value["observations"] = [{**o.body(), "signature": o.signature} for o in self.observations]
        value["inputs"] = self.inputs.model_dump(mode="json")
        return value

    @property
    def tree(self) -> MerkleTree | None:
        """The Merkle tree of node pay (None when nobody has earned anything yet), built once."""
        return memo(self, "_memo_tree", ("pay",), lambda: _pay_tree(self.pay))

    @property
    def pay_of(self) -> dict[tuple[int, int], int]:
        """Cumulative node pay by (job, license)."""
        return memo(self, "_memo_pay_of", ("pay",),
                    lambda: {(job, license_id): amount for job, license_id, amount in self.pay})


def _release_leaf(job: int, license_id: int, amount: int) -> bytes:
    """``contracts.release_leaf`` without eth_abi's checks (~20 µs a leaf there, most of a
    10,000-node report's build): the same bytes, held equal by a test."""
    return keccak(keccak(_LEAF_KIND + job.to_bytes(32, "big") + license_id.to_bytes(32, "big")
                         + amount.to_bytes(32, "big")))


def _totals_leaf(job: int, release: int, refund: int, burn: int) -> bytes:
    """``contracts.totals_leaf``, encoded directly like ``_release_leaf`` (held equal by a test)."""
    return keccak(keccak(_TOTALS_KIND + job.to_bytes(32, "big") + release.to_bytes(32, "big")
                         + refund.to_bytes(32, "big") + burn.to_bytes(32, "big")))


def _totals_tree(rows: Sequence[tuple[int, int, int, int]]) -> MerkleTree | None:
    return MerkleTree(_totals_leaf(*row) for row in rows) if rows else None


def _totals_root(rows: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``contracts.totals_root`` of the rows as ``JobTotals`` (held equal by a test)."""
    tree = _totals_tree(rows)
    return NO_TOTALS if tree is None else tree.root


def _pay_tree(pay: Sequence[tuple[int, int, int]]) -> MerkleTree | None:
    leaves = [_release_leaf(job, license_id, amount) for job, license_id, amount in pay]
    return MerkleTree(leaves) if leaves else None


def build_report(epoch: int, observations: Sequence[Observation], inputs: ChainInputs,
                 previous: EpochReport | None, threshold: int) -> EpochReport:
    """The report of ``epoch`` (module docstring, step 3) from complete observations of distinct
    oracles (signatures already checked: ``select_observations``).

    Each slot's ``price`` is split among its holders by their median tenure (SETTLEMENT.md rule 1;
    unheld time is the CSP's). Each holder's share is judged (``compute_share_outcome``: released,
    withheld or burned per the job's policy, standing first) by its availability DURING ITS TENURE,
    as SETTLEMENT.md rule 2 says: ``a = floor(255 * alive_ms / tenure_ms)`` of its median entry
    (``_observe.compute_tenure_availability``), not by the node's availability over the epoch. So a
    node that served its replica while alive and then died is paid for its tenure, the rest of the
    slot going to whoever held it next or to the CSP; and a node that kept the claim while its beats
    did not arrive is judged on exactly that time. The whole-epoch ``availability`` is reported, for
    auditors and displays, and moves no money."""
    cited = tuple(sorted(observations, key=lambda o: o.oracle.lower()))
    for obs in cited:
        if obs.epoch != epoch or (obs.start_ms, obs.end_ms) != (inputs.start_ms, inputs.end_ms):
            raise ObservationRejected(obs.oracle, "not of this epoch")
    if previous is not None and previous.epoch >= epoch:
        raise ReportError(f"the previous report is of epoch {previous.epoch}, not before {epoch}")
    medians = aggregate(cited, threshold)
    epoch_ms = inputs.end_ms - inputs.start_ms
    nodes = {n.node: n for n in inputs.nodes}
    # every job the inputs name (active on chain and started) has a totals leaf, zeros if nothing
    # was settled for it yet: the escrow closes a job only on the newest report's totals
    carried = {j: [r, f, b] for j, r, f, b in previous.totals} if previous else {}
    totals: dict[int, list[int]] = {job.job_id: carried.get(job.job_id, [0, 0, 0]) for job in inputs.jobs
                                    if job.status is JobStatus.ACTIVE and job.start_epoch <= epoch}
    pay: dict[tuple[int, int], int] = dict(previous.pay_of) if previous else {}
    settled: list[tuple[int, int, int, int]] = []
    for job, unserved, judged in judge_epoch(epoch, inputs.jobs, medians.tenure, nodes, epoch_ms):
        release, refund, burn = 0, unserved, 0
        for s in judged:
            release, refund, burn = release + s.outcome.node, refund + s.outcome.refund, burn + s.outcome.burn
            if s.outcome.node and s.holder is not None:  # only a licensed holder earns
                key = (job.job_id, s.holder.license_id)
                pay[key] = pay.get(key, 0) + s.outcome.node
        settled.append((job.job_id, release, refund, burn))
        cumulative = totals[job.job_id]
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
        totals_root="0x" + _totals_root(total_rows).hex())
    report.__dict__["_memo_tree"] = ((report.pay,), tree)  # built once (``memo``)
    return report


@dataclass(frozen=True)
class JudgedShare:
    """One holder's share of a slot-epoch and where it goes (SETTLEMENT.md rules 1-3)."""

    job: JobInput
    replica: int
    node: str
    share: int
    availability: int  # during its tenure, 0-255
    holder: NodeInput | None  # None: no license, so the share is the CSP's (all of it refund)
    outcome: ShareOutcome


def judge_epoch(epoch: int, jobs: Iterable[JobInput], tenure: Iterable[TenureRow], nodes: Mapping[str, NodeInput],
                epoch_ms: int) -> Iterator[tuple[JobInput, int, list[JudgedShare]]]:
    """Each job active in ``epoch`` (ended ones, not closed yet, settle nothing more): the slot time
    nobody served (the CSP's) and every holder's share judged by its availability during its tenure
    and its standing (``build_report``'s docstring). ``tenure``: the agreed (median) entries."""
    slots: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
    available: dict[TenureKey, int] = {}  # availability during the tenure, 0-255
    for job_id, replica, node, ms, alive_ms in tenure:
        slots[(job_id, replica)][node] = ms
        available[(job_id, replica, node)] = compute_tenure_availability(alive_ms, ms)
    for job in jobs:
        if not job.is_active_in(epoch):
            continue
        unserved_total, judged = 0, []
        for replica in range(job.replicas):
            shares, unserved = split_by_tenure(job.price_per_node_epoch, slots.get((job.job_id, replica), {}),
                                               epoch_ms)
            unserved_total += unserved
            for node, share in shares.items():
                holder, a = nodes.get(node), available[(job.job_id, replica, node)]
                outcome = (ShareOutcome(node=0, refund=share, burn=0) if holder is None
                           else compute_share_outcome(share, a, job.policy, holder.standing))
                judged.append(JudgedShare(job, replica, node, share, a, holder, outcome))
        yield job, unserved_total, judged


_COMPARED = ("observations", "previous_id", "previous_epoch", "availability", "tenure", "settled", "totals", "pay",
             "root", "totals_root")


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
