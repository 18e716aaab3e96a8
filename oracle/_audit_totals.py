"""The audit's checks of job totals (``_audit``). A report lands with the Merkle root of every
job's cumulative totals (``EpochSettled.totalsRoot``); the totals reach a job's accounts only when
someone proves them with ``applyTotals``, usually in one ``multicall`` with a claim, refund, burn
or close, and each application emits ``JobAllocated``. So:

- ``check_applied_totals``: each ``applyTotals`` entry in the calldata proves its leaf against the
  totals root of its epoch, landed before it; each ``JobAllocated`` is the entry that emitted it,
  with its amounts; an entry without an event is one the escrow skips (totals of that epoch or a
  newer one already applied to the job), and only such an entry may be without one;
- ``compute_totals_rows``: the cumulative totals per job and epoch, from the published reports
  (every report carries a row for every active job) and, for epochs with no published report, from
  what was applied on chain; each row says whether it was applied;
- ``compute_pending``: per active job, the newest landed totals not applied yet (information: on
  chain those amounts are still locked, and conservation counts them so).

Pure over a ``ChainRecord``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts import JobId, JobStatus, JobTotals, TokenUnits, TotalsProof, totals_leaf, verify

from ._audit_chain import ChainEvent, ChainRecord, Position
from ._audit_findings import Check, Finding
from ._audit_published import PublishedReport

# a position after every log of a transaction: bounds an entry processed after its last event
_LAST_LOG = 2**63


@dataclass(frozen=True)
class TotalsRow:
    """A job's cumulative totals in the report of ``epoch``."""

    job_id: int
    epoch: int
    release: int
    refund: int
    burn: int
    applied: bool  # a JobAllocated of this epoch's totals exists for the job
    source: str  # "report" (a published report) or "chain" (only a JobAllocated: no report published)

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "epoch": self.epoch, "release": self.release, "refund": self.refund,
                "burn": self.burn, "applied": self.applied, "source": self.source}


def applied_totals(record: ChainRecord) -> dict[int, dict[int, JobTotals]]:
    """Per epoch, the totals each ``JobAllocated`` applied to each job."""
    out: dict[int, dict[int, JobTotals]] = defaultdict(dict)
    for e in record.escrow_events:
        if e.name == "JobAllocated":
            out[int(e.args["epoch"])][int(e.args["jobId"])] = _event_totals(e)
    return out


def _event_totals(e: ChainEvent) -> JobTotals:
    a = e.args
    return JobTotals(JobId(a["jobId"]), TokenUnits(a["release"]), TokenUnits(a["refund"]), TokenUnits(a["burn"]))


def check_applied_totals(record: ChainRecord) -> list[Finding]:
    """Every ``JobAllocated`` against the ``applyTotals`` entries of its transaction (module docstring)."""
    roots: dict[int, tuple[bytes, Position]] = {}
    settled_until: dict[int, int] = defaultdict(int)  # as the escrow's, replayed
    by_tx: dict[str, list[ChainEvent]] = {}
    for e in record.escrow_events:
        if e.name == "JobAllocated":
            by_tx.setdefault(e.tx_hash, []).append(e)
    findings: list[Finding] = []
    done: set[str] = set()
    for e in record.escrow_events:
        if e.name == "EpochSettled":
            roots[int(e.args["epoch"])] = (bytes(e.args["totalsRoot"]), e.at)
        if e.name != "JobAllocated" or e.tx_hash in done:
            continue
        done.add(e.tx_hash)  # the transaction's events all at once, against its calldata
        events = by_tx[e.tx_hash]
        calls = record.calls.get(e.tx_hash)
        if calls is None:
            why = record.undecodable.get(e.tx_hash)
            if why is not None:
                findings.append(Finding(Check.TOTALS_CALLDATA, f"{why}; totals proofs not verified",
                                        int(e.args["jobId"]), int(e.args["epoch"])))
        else:
            findings += _check_entries(e.tx_hash, calls.totals, events, calls.functions, roots, settled_until)
        for event in events:  # what the escrow did, whatever the calldata said
            settled_until[int(event.args["jobId"])] = int(event.args["epoch"]) + 1
    return findings


def _check_entries(tx_hash: str, entries: Sequence[TotalsProof], events: Sequence[ChainEvent],
                   functions: Sequence[str], roots: Mapping[int, tuple[bytes, Position]],
                   settled_until: Mapping[int, int]) -> list[Finding]:
    """One transaction's entries in order against its JobAllocated events in order: as applyTotals
    runs them, each either applied (the next event is its job and epoch) or skipped."""
    findings: list[Finding] = []
    until = dict(settled_until)
    next_event = 0
    for i, entry in enumerate(entries):
        t, epoch = entry.totals, int(entry.epoch)
        event = events[next_event] if next_event < len(events) else None
        applied = event is not None and (int(event.args["jobId"]), int(event.args["epoch"])) == (t.job_id, epoch)
        bound = events[-1].at if event is None else event.at
        if event is None:
            bound = Position(bound.block, bound.tx_index, _LAST_LOG)
        root = roots.get(epoch)
        if root is None or root[1] > bound:
            findings.append(Finding(Check.TOTALS_PROOF, f"entry {i} of {tx_hash}: totals of epoch {epoch}, no "
                                    "report of which landed before it", t.job_id, epoch))
        elif not verify(entry.proof, root[0], totals_leaf(t)):
            findings.append(Finding(Check.TOTALS_PROOF, f"entry {i} of {tx_hash}: totals {_text(t)} "
                                    f"(release/refund/burn): the proof does not prove the leaf against totals root "
                                    f"0x{root[0].hex()}", t.job_id, epoch))
        if applied:
            assert event is not None
            next_event += 1
            until[t.job_id] = epoch + 1
            on_chain = _event_totals(event)
            if on_chain != t:
                findings.append(Finding(Check.ALLOCATION, f"JobAllocated {_text(on_chain)}, the applyTotals entry "
                                        f"proves {_text(t)} (release/refund/burn)", t.job_id, epoch))
        elif epoch >= until.get(t.job_id, 0):
            findings.append(Finding(Check.TOTALS_CALLDATA, f"entry {i} of {tx_hash}: totals of epoch {epoch} "
                                    f"neither applied (no JobAllocated) nor skippable (the job's totals were applied "
                                    f"through epoch {until.get(t.job_id, 0) - 1})", t.job_id, epoch))
    for event in events[next_event:]:
        findings.append(Finding(Check.TOTALS_CALLDATA, f"JobAllocated in {tx_hash} with no applyTotals entry for "
                                f"it in its calldata (it called {', '.join(functions)})", int(event.args["jobId"]),
                                int(event.args["epoch"])))
    return findings


def _text(t: JobTotals) -> str:
    return f"{t.release}/{t.refund}/{t.burn}"


def check_report_totals(report: PublishedReport, applied: Mapping[int, JobTotals]) -> list[Finding]:
    """Each totals entry applied on chain for ``report``'s epoch against the report's row."""
    rows: dict[int, JobTotals] = {t.job_id: t for t in report.totals}
    findings: list[Finding] = []
    for job_id, on_chain in sorted(applied.items()):
        row = rows.get(job_id)
        if row != on_chain:
            findings.append(Finding(Check.REPORT_TOTALS, f"{report.source}: totals "
                                    f"{'none' if row is None else _text(row)}, applied on chain {_text(on_chain)} "
                                    "(release/refund/burn)", job_id, report.epoch))
    return findings


def compute_totals_rows(settled: Sequence[int], reports: Mapping[int, PublishedReport],
                        applied: Mapping[int, Mapping[int, JobTotals]]) -> tuple[TotalsRow, ...]:
    """Per settled epoch, every job's totals: the published report's rows (``reports``: one per
    epoch), else what was applied on chain; by job, then epoch."""
    rows: list[TotalsRow] = []
    for epoch in settled:
        on_chain = applied.get(epoch, {})
        report = reports.get(epoch)
        if report is not None:
            rows += [TotalsRow(t.job_id, epoch, t.release, t.refund, t.burn, t.job_id in on_chain, "report")
                     for t in report.totals]
            on_chain = {j: t for j, t in on_chain.items() if j not in {r.job_id for r in report.totals}}
        rows += [TotalsRow(j, epoch, t.release, t.refund, t.burn, True, "chain") for j, t in on_chain.items()]
    return tuple(sorted(rows, key=lambda r: (r.job_id, r.epoch)))


def compute_pending(rows: Sequence[TotalsRow], status: Mapping[int, JobStatus],
                    settled_until: Mapping[int, int]) -> dict[int, TotalsRow]:
    """Per active job, its row of the newest landed epoch whose totals are not applied yet (none:
    up to date, or no published report says)."""
    pending: dict[int, TotalsRow] = {}
    for row in rows:  # by job, then epoch: the newest one wins
        if status.get(row.job_id) is JobStatus.ACTIVE and row.epoch >= settled_until.get(row.job_id, 0):
            pending[row.job_id] = row
    return pending
