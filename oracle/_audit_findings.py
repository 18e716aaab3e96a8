"""What the audit finds: the named checks, one finding per discrepancy, and the error that carries them
(``_audit``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Check(enum.StrEnum):
    """What a finding is about; the name starts every discrepancy line."""

    DEPLOYMENT = "deployment"  # the escrow consults another oracle registry than the record names
    REPORT_CALLDATA = "report-calldata"  # submitReport calldata (epoch, roots) unreadable or unlike its event
    SIGNATURE_INVALID = "signature-invalid"  # malformed, high s, v not 27/28, or does not recover
    SIGNER_NOT_REGISTERED = "signer-not-registered"  # not an oracle at the report's block
    SIGNER_DUPLICATE = "signer-duplicate"
    QUORUM_NOT_REACHED = "quorum-not-reached"  # fewer valid distinct signers than the threshold then
    SIGNER_COUNT = "signer-count"  # the event's signer count is not the number of signatures
    ROOT_ON_CHAIN = "root-on-chain"  # rootOf/totalsRootOf(epoch) is not the root the event announced
    TOTALS_CALLDATA = "totals-calldata"  # applyTotals calldata unreadable, or unlike its JobAllocated events
    TOTALS_PROOF = "totals-proof"  # an applyTotals entry unproven against its epoch's totals root
    ALLOCATION = "allocation"  # a JobAllocated unlike the applyTotals entry that emitted it
    CLAIM_CALLDATA = "claim-calldata"  # claim/forfeit calldata unreadable or unlike its events
    CLAIM_EPOCH = "claim-epoch"  # a claim against an epoch not settled before it
    CLAIM_PROOF = "claim-proof"  # the Merkle proof does not prove the leaf against the epoch root
    CLAIM_AMOUNT = "claim-amount"  # paid != cumulative - previously paid for (job, license)
    LEDGER = "ledger"  # an event's amount breaks the rule behind it, or a term went negative
    JOB_STATE = "job-state"  # the accounts rebuilt from events differ from getJob
    CONSERVATION = "conservation"
    ESCROW_BALANCE = "escrow-balance"  # the escrow's token balance != what its jobs still hold
    REPORT_MISSING = "report-missing"  # a settled epoch has no published report
    REPORT_MALFORMED = "report-malformed"
    REPORT_CONTENT_HASH = "report-content-hash"  # a <sha256>.json file whose content has another hash
    REPORT_CONFLICT = "report-conflict"  # two published reports for one epoch differ
    REPORT_UNSETTLED = "report-unsettled"  # a published report for an epoch never settled
    REPORT_ROOT = "report-root"  # the report's pay leaves do not hash to its root
    REPORT_ROOT_ON_CHAIN = "report-root-on-chain"  # the report's root is not the one on chain
    TOTALS_ROOT = "totals-root"  # the report's totals rows (or totals_root) are not the signed totalsRoot
    REPORT_TOTALS = "report-totals"  # a job's totals row unlike what was applied on chain for its epoch
    REPORT_AMOUNTS = "report-amounts"  # an amount does not follow from what the report cites (verify_report)
    REPORT_PAY = "report-pay"  # pay unlike a proven claim, or not adding up to the release total
    REPORT_INPUTS = "report-inputs"  # a cited chain input (job, license, standing) unlike the chain at the cited block
    REPORT_INPUTS_BLOCK = "report-inputs-block"  # cites a block not before its root landed, or before the deployment


@dataclass(frozen=True)
class Finding:
    """One discrepancy (or, with ``warning``, something the audit could not check)."""

    check: Check
    detail: str
    job_id: int | None = None
    epoch: int | None = None
    warning: bool = False

    @property
    def line(self) -> str:
        job = "-" if self.job_id is None else str(self.job_id)
        epoch = "-" if self.epoch is None else str(self.epoch)
        return f"{self.check}: job {job} epoch {epoch}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {"check": str(self.check), "job_id": self.job_id, "epoch": self.epoch, "detail": self.detail,
                "warning": self.warning, "line": self.line}


class AuditFailed(Exception):
    """The audit found discrepancies (``findings``). ``deedmesh audit`` exits ``exit_code`` with
    one line per finding. Not a ``ChainError``: the chain answered; what it says does not add up."""

    exit_code = 15

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        shown = "; ".join(f.line for f in self.findings[:3])
        more = f" (and {len(self.findings) - 3} more)" if len(self.findings) > 3 else ""
        super().__init__(f"{len(self.findings)} discrepancies: {shown}{more}")


