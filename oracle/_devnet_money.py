"""The devnet's money as the oracles settled it: each job's totals in the newest settled report
and the node shares the reports withheld (SETTLEMENT.md rule 2: a holder whose availability
during its tenure fell below the job's release threshold, or whose license was restricted). The
escrow applies totals only when they are claimed, refunded or burned, so during a run the chain
shows little; the reports show it all as each epoch lands. Pure, apart from reading report files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._report import EpochReport, judge_epoch


def read_reports(directories: Iterable[Path]) -> dict[int, EpochReport]:
    """Every settled report in the oracles' report directories, by epoch (unreadable files skipped:
    one being written)."""
    found: dict[int, EpochReport] = {}
    for directory in directories:
        for path in directory.glob("*.json"):
            try:
                report = EpochReport.model_validate_json(path.read_bytes())
            except (OSError, ValueError):
                continue
            found.setdefault(report.epoch, report)
    return found


@dataclass(frozen=True)
class Withheld:
    """A holder's share of a slot-epoch that was withheld for the CSP, and why."""

    epoch: int
    job_id: int
    replica: int
    node: str
    share: int
    availability: int  # during its tenure, 0-255
    threshold: int

    def as_json(self) -> dict[str, int | str]:
        return {"epoch": self.epoch, "job_id": self.job_id, "replica": self.replica, "node": self.node,
                "share": self.share, "availability_in_tenure": self.availability, "release_threshold": self.threshold}


def withheld_shares(report: EpochReport) -> list[Withheld]:
    """The shares ``report`` withheld from the nodes that held them (refunded to the CSP, neither
    released nor burned), judged as ``build_report`` judges them (``judge_epoch``)."""
    nodes = {n.node: n for n in report.inputs.nodes}
    epoch_ms = report.inputs.end_ms - report.inputs.start_ms
    return [Withheld(report.epoch, job.job_id, s.replica, s.node, s.share, s.availability,
                     job.policy.release_threshold)
            for job, _, judged in judge_epoch(report.epoch, report.inputs.jobs, report.tenure, nodes, epoch_ms)
            for s in judged
            # no license: the share is the CSP's like unserved time, not withheld from a node
            if s.holder is not None and s.share and s.outcome.refund == s.share]


def settled_money(reports: Mapping[int, EpochReport], deposited: Mapping[int, int]) -> dict[int, dict[str, int]]:
    """Each job of ``deposited`` (job id -> deposit): released, refunded, burned by the newest
    report, what is still locked, and the part of the refund that was withheld node pay."""
    newest = reports[max(reports)] if reports else None
    totals = {j: (r, f, b) for j, r, f, b in newest.totals} if newest else {}
    withheld: dict[int, int] = {}
    for report in reports.values():
        for w in withheld_shares(report):
            withheld[w.job_id] = withheld.get(w.job_id, 0) + w.share
    money = {}
    for job_id, deposit in deposited.items():
        released, refunded, burned = totals.get(job_id, (0, 0, 0))
        money[job_id] = {"deposited": deposit, "released": released, "withheld": withheld.get(job_id, 0),
                         "refunded": refunded, "burned": burned, "locked": deposit - released - refunded - burned}
    return money
