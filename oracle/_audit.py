"""The audit: re-derive every settlement of a deployment from public data, trusting nothing else.

Owns the steps and their order. ``collect`` reads a deployment's history into a frozen
``ChainRecord``: every escrow and oracle-registry event from the deployment block, the calldata of
every transaction that landed a report, applied totals, claimed or forfeited (``multicall``
unwrapped), and the escrow's state at one pinned block (all reads at that block, so a chain that
moves during the audit cannot make it disagree with itself);
``read_cited_inputs`` adds the chain inputs each published report cites, read at the block it
cites. ``check`` is pure over that record and the published reports, so a test can alter a record
in memory and see what catches it:

- every report (``_audit_signed``): its calldata (epoch, root, totals root) matches its
  ``EpochSettled`` and the roots the escrow stored (``rootOf``, ``totalsRootOf``); each signature
  is well formed as OpenZeppelin's ECDSA requires (65 bytes, low s, v 27 or 28), recovers over the
  EIP-712 ``EpochReport(epoch, root, totalsRoot)`` digest under the escrow's domain to an oracle
  registered *at that block* (the registry's events replayed up to it), is distinct, and at least
  the threshold then in force signed;
- every application of totals (``_audit_totals``): each ``JobAllocated`` is an ``applyTotals``
  entry of its transaction's calldata (``multicall`` unwrapped), with its amounts, proven against
  the totals root of its epoch, landed before it; an entry without an event is one the escrow
  skips (totals of that epoch or a newer one already applied);
- every claim and forfeit (``_audit_signed``): its Merkle proof against the root of its epoch,
  settled before it, and the amount paid (cumulative - what that job and license were paid before);
- every job (``_audit_ledger``): its accounts replayed from events, the rule behind each amount
  (deposit, top-up, scale, cancel, close, applied totals, refund, burn), conservation after every
  event, and the end state against the escrow's ``getJob`` and ``settledUntil``; the escrow's
  balance of each token against what its jobs still hold. Totals landed and not applied yet are
  still locked on chain: shown per job (``landed``), not a discrepancy;
- every published report (here, ``_audit_published``, ``_audit_inputs``): its root is the Merkle
  root of its pay leaves and the root on chain; its totals rows hash to the totals root signed on
  chain, and each totals entry applied on chain for its epoch is its row; its pay agrees with what
  claims proved and adds up to each job's release total; in the oracles' full format, its amounts
  follow from the observations and chain inputs it cites (``_report.verify_report``), and those
  inputs are the chain's at the block it cites, a block before its root landed.

The per job and epoch totals (``AuditReport.totals``) come from the published reports (every
report carries every active job's row), or, for an epoch without one, from what was applied.

Not verified, and said so in the output rather than passed silently: the amounts of a report in
the minimal format (it cites nothing to recompute from), and the inputs of a report whose cited
block the chain no longer serves (a pruned node). The findings are ``_audit_findings``, the
command ``_audit_cli``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts import Chain, Deployment, JobTotals, to_checksum_address, totals_root

from ._audit_chain import ChainEvent, ChainRecord, EscrowCalls, ReportCall, collect
from ._audit_findings import AuditFailed, Check, Finding
from ._audit_inputs import check_cited_inputs, read_cited_inputs
from ._audit_ledger import Allocation, JobAccount, TokenBalance, check_state, compute_balances, replay_jobs
from ._audit_published import (
    AMOUNTS_NOT_VERIFIED,
    PayLeaf,
    PublishedReport,
    compute_pay_root,
    load_published_reports,
    verify_report_amounts,
)
from ._audit_signed import EpochRow, check_payouts, check_reports, check_signatures
from ._audit_totals import (
    TotalsRow,
    applied_totals,
    check_applied_totals,
    check_report_totals,
    compute_pending,
    compute_totals_rows,
)

__all__ = [  # what the command and the tests use; the rest is in the _audit_* modules
    "AMOUNTS_NOT_VERIFIED",
    "AuditFailed",
    "AuditOptions",
    "AuditReport",
    "ChainEvent",
    "ChainRecord",
    "Check",
    "EscrowCalls",
    "ReportCall",
    "TotalsRow",
    "Finding",
    "audit",
    "check",
    "check_signatures",
    "collect",
    "load_published_reports",
    "read_cited_inputs",
]


# ---------------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class AuditOptions:
    job_id: int | None = None  # report this job only (the escrow-wide balance check is skipped)
    from_epoch: int = 0  # check reports and published reports of this epoch and later
    require_reports: bool = False  # a settled epoch without a published report is a discrepancy


@dataclass(frozen=True)
class AuditReport:
    chain_id: int
    escrow: str
    from_block: int
    to_block: int
    options: AuditOptions
    epochs: tuple[EpochRow, ...]
    jobs: tuple[JobAccount, ...]
    totals: tuple[TotalsRow, ...]  # per job and epoch (module docstring)
    balances: tuple[TokenBalance, ...]
    findings: tuple[Finding, ...]
    not_verified: tuple[str, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.warning)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.warning)

    @property
    def ok(self) -> bool:
        """Everything balances and verifies (warnings aside)."""
        return not self.errors

    def raise_for_findings(self) -> None:
        if not self.ok:
            raise AuditFailed(self.errors)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "chain_id": self.chain_id, "escrow": self.escrow,
                "blocks": {"from": self.from_block, "to": self.to_block},
                "options": {"job_id": self.options.job_id, "from_epoch": self.options.from_epoch,
                            "require_reports": self.options.require_reports},
                "epochs": [e.as_json() for e in self.epochs], "jobs": [j.as_json() for j in self.jobs],
                "totals": [t.as_json() for t in self.totals], "balances": [b.as_json() for b in self.balances],
                "discrepancies": [f.as_json() for f in self.errors],
                "warnings": [f.as_json() for f in self.warnings], "not_verified": list(self.not_verified)}


def audit(chain: Chain, deployment: Deployment, *, reports: Iterable[Path] = (),
          options: AuditOptions | None = None) -> AuditReport:
    """Collect the deployment's history from ``chain`` and check it with the published reports
    found under ``reports`` (directories or files)."""
    options = options or AuditOptions()
    record = collect(chain, deployment, from_epoch=options.from_epoch)
    published, problems = load_published_reports(reports)
    record = read_cited_inputs(chain, record, published)
    return check(record, published, options, problems)


def check(record: ChainRecord, published: Sequence[PublishedReport], options: AuditOptions | None = None,
          load_findings: Sequence[Finding] = ()) -> AuditReport:
    """Every check of the module docstring over ``record``; pure."""
    options = options or AuditOptions()
    findings: list[Finding] = list(load_findings)
    if to_checksum_address(record.oracle_registry) != to_checksum_address(record.deployment.oracle_registry):
        findings.append(Finding(Check.DEPLOYMENT, f"the escrow consults oracle registry {record.oracle_registry}, "
                                f"the deployment record names {record.deployment.oracle_registry}"))
    signed, report_findings = check_reports(record)
    findings += report_findings
    findings += check_applied_totals(record)
    applied = applied_totals(record)
    proven, payout_findings = check_payouts(record)
    findings += payout_findings
    accounts, ledger_findings = replay_jobs(record)
    findings += ledger_findings
    findings += check_state(record, accounts)
    balances = compute_balances(record, accounts)
    if options.job_id is None:
        findings += [Finding(Check.ESCROW_BALANCE, f"the escrow holds {b.balance} of token {b.token}, its jobs "
                             f"{b.held}: {b.balance - b.held:+d} unaccounted") for b in balances if b.balance != b.held]
    published_findings, report_status, not_verified, trusted = _check_published(record, published, options, signed,
                                                                                 proven, applied)
    findings += published_findings

    epochs = [e for e in signed if e >= options.from_epoch]
    totals = compute_totals_rows(epochs, trusted, applied)
    landed = compute_pending(totals, {j: a.status for j, a in accounts.items()},
                             {j: a.settled_until for j, a in accounts.items()})
    accounts = {j: replace(a, landed=_allocation(landed.get(j))) for j, a in accounts.items()}
    if options.job_id is not None:
        findings = [f for f in findings if f.job_id in (None, options.job_id)]
    rows = tuple(replace(row, payouts=len(proven.get(row.epoch, ())), report=report_status.get(row.epoch, row.report),
                         jobs=None if row.epoch not in trusted else len(trusted[row.epoch].totals))
                 for row in signed.values() if row.epoch >= options.from_epoch)
    jobs = tuple(a for a in accounts.values() if options.job_id in (None, a.job_id))
    if options.job_id is not None:
        not_verified.append("escrow token balance (it covers every job; --job audits one)")
    return AuditReport(chain_id=record.chain_id, escrow=record.deployment.job_escrow, from_block=record.from_block,
                       to_block=record.to_block, options=options, epochs=rows, jobs=jobs,
                       totals=tuple(t for t in totals if options.job_id in (None, t.job_id)), balances=balances,
                       findings=tuple(findings), not_verified=tuple(not_verified))


def _allocation(row: TotalsRow | None) -> Allocation | None:
    return None if row is None else Allocation(row.epoch, row.release, row.refund, row.burn)


def _check_published(record: ChainRecord, published: Sequence[PublishedReport], options: AuditOptions,
                     signed: Mapping[int, EpochRow], proven: Mapping[int, Sequence[PayLeaf]],
                     applied: Mapping[int, Mapping[int, JobTotals]],
                     ) -> tuple[list[Finding], dict[int, str], list[str], dict[int, PublishedReport]]:
    """Published reports against the chain; (findings, report status per epoch, what was not
    verified, per epoch a report whose totals are the ones signed on chain)."""
    by_epoch: dict[int, list[PublishedReport]] = defaultdict(list)
    for report in published:
        by_epoch[report.epoch].append(report)
    findings: list[Finding] = []
    status: dict[int, str] = {}
    trusted: dict[int, PublishedReport] = {}
    amounts_checked = True
    inputs_unread: list[str] = []
    for epoch, row in signed.items():
        if epoch < options.from_epoch:
            continue
        reports = by_epoch.get(epoch, [])
        if not reports:
            findings.append(Finding(Check.REPORT_MISSING, "no published report for this settled epoch", epoch=epoch,
                                    warning=not options.require_reports))
            status[epoch] = "missing"
            continue
        before = len(findings)
        if len({r.content() for r in reports}) > 1:
            findings.append(Finding(Check.REPORT_CONFLICT, "published reports differ: "
                                    + ", ".join(r.source for r in reports), epoch=epoch))
        earlier = [r for e, rs in by_epoch.items() if e < epoch for r in rs]
        previous = max(earlier, key=lambda r: r.epoch, default=None)
        for report in reports:
            one = _check_one_report(report, row, proven.get(epoch, ()), applied.get(epoch, {}))
            findings += one
            if epoch not in trusted and not any(f.check in (Check.TOTALS_ROOT, Check.REPORT_MALFORMED) for f in one):
                trusted[epoch] = report
            amounts = verify_report_amounts(report, previous, domain=record.domain, oracles=frozenset(row.oracles),
                                            threshold=row.threshold)
            if amounts is None:
                amounts_checked = False
            else:
                findings += amounts
            inputs, unread = check_cited_inputs(report, row.block, record)
            findings += inputs
            inputs_unread += [] if unread is None else [unread]
        status[epoch] = "ok" if len(findings) == before else "mismatch"
    for epoch, reports in sorted(by_epoch.items()):
        if epoch not in signed and epoch >= options.from_epoch:
            findings.append(Finding(Check.REPORT_UNSETTLED, f"{reports[0].source}: no report for this epoch landed on "
                                    f"chain up to block {record.to_block}", epoch=epoch, warning=True))
    return findings, status, ([] if amounts_checked else [AMOUNTS_NOT_VERIFIED]) + inputs_unread, trusted


def _check_one_report(report: PublishedReport, row: EpochRow, proven: Sequence[PayLeaf],
                      applied: Mapping[int, JobTotals]) -> list[Finding]:
    epoch, src = report.epoch, report.source
    findings: list[Finding] = []
    pay = {(p.job_id, p.license_id): p.cumulative for p in report.pay}
    if len(pay) != len(report.pay):
        findings.append(Finding(Check.REPORT_MALFORMED, f"{src}: a (job, license) has more than one pay leaf",
                                epoch=epoch))
    computed = compute_pay_root(report.pay)
    if computed != report.root:
        findings.append(Finding(Check.REPORT_ROOT, f"{src}: its pay leaves hash to 0x{computed.hex()}, it says "
                                f"0x{report.root.hex()}", epoch=epoch))
    if report.root != row.root:
        findings.append(Finding(Check.REPORT_ROOT_ON_CHAIN, f"{src}: root 0x{report.root.hex()}, on chain "
                                f"0x{row.root.hex()}", epoch=epoch))
    if len({t.job_id for t in report.totals}) != len(report.totals):
        # a second leaf for a job would let anyone apply whichever suits them
        findings.append(Finding(Check.REPORT_MALFORMED, f"{src}: a job has more than one totals row", epoch=epoch))
    else:
        hashed = totals_root(report.totals)
        if hashed != row.totals_root:
            findings.append(Finding(Check.TOTALS_ROOT, f"{src}: its totals rows hash to 0x{hashed.hex()}, the "
                                    f"totals root signed on chain is 0x{row.totals_root.hex()}", epoch=epoch))
    if report.totals_root not in (None, row.totals_root):
        findings.append(Finding(Check.TOTALS_ROOT, f"{src}: states totals root 0x{report.totals_root.hex()}, the "
                                f"one signed on chain is 0x{row.totals_root.hex()}", epoch=epoch))
    findings += check_report_totals(report, applied)
    for leaf in proven:
        if pay.get((leaf.job_id, leaf.license_id)) != leaf.cumulative:
            findings.append(Finding(Check.REPORT_PAY, f"{src}: license {leaf.license_id} pay "
                                    f"{pay.get((leaf.job_id, leaf.license_id))}, a claim proved {leaf.cumulative} "
                                    f"against the chain root", leaf.job_id, epoch))
    for t in sorted(report.totals, key=lambda t: t.job_id):
        leaves = sum(c for (job_id, _), c in pay.items() if job_id == t.job_id)
        if leaves != t.release:
            findings.append(Finding(Check.REPORT_PAY, f"{src}: pay leaves add up to {leaves}, the job's release "
                                    f"total is {t.release}", t.job_id, epoch))
    return findings
