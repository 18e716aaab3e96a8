"""What ``deedmesh claim``, ``refund`` and ``burn`` do, apart from the command line: take the
latest settled report (``_fetch``), decide what is due, and send it.

Reports land on chain as two roots (``JobEscrow.submitReport``); a job's totals reach its accounts
when they are applied (``applyTotals``), which each of these does in the same transaction for
the jobs it settles (``JobEscrow.multicall``): so claims, refunds and burns pay what the newest
report says, and a report's landing costs the same however many jobs it settles.

Claims are cumulative (``JobEscrow.claim``): claiming a (job, license)'s amount in the latest
settled report pays everything not paid yet, so one claim per pay row against the newest root is
all a license owner ever needs.

The decisions (``pending_totals``, ``plan_claims``, ``plan_refunds``, ``plan_burns``) are pure
functions over frozen values; ``claim_round``, ``refund_round`` and ``burn_round`` read the chain,
decide, and send one transaction each, reporting what the escrow's events say it paid. Errors:
``_fetch``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from contracts import (
    BURN_ADDRESS,
    Chain,
    Deployment,
    Job,
    JobStatus,
    JobTotals,
    LicenseStatus,
    TokenUnits,
    TotalsProof,
    to_checksum_address,
)

from ._fetch import TargetRefused, find_report, latest_settled, read_logs
from ._report import EMPTY_ROOT, EpochReport, claim

# ------------------------------------------------------------------ what is due (pure)


def pending_totals(report: EpochReport, jobs: Mapping[int, Job],
                   settled_until: Mapping[int, int]) -> dict[int, JobTotals]:
    """The totals ``report`` holds for each of ``jobs`` that the escrow would still apply: the job is
    active and its last applied totals (``settled_until``: 1 + their epoch) are of an older epoch,
    and they change one of its allocations (applying equal ones would only cost gas)."""
    out: dict[int, JobTotals] = {}
    for job_id, release, refund, burn in report.totals:
        job = jobs.get(job_id)
        if job is None or job.status is not JobStatus.ACTIVE or settled_until.get(job_id, 0) > report.epoch:
            continue
        if (release, refund, burn) != (job.alloc_release, job.alloc_refund, job.alloc_burn):
            out[job_id] = JobTotals(job.job_id, TokenUnits(release), TokenUnits(refund), TokenUnits(burn))
    return out


def as_applied(job: Job, totals: JobTotals | None) -> Job:
    """``job`` as its accounts will be once ``totals`` (None: nothing) are applied."""
    if totals is None:
        return job
    return replace(job, alloc_release=totals.release, alloc_refund=totals.refund, alloc_burn=totals.burn)


@dataclass(frozen=True)
class LicenseHolder:
    """A license's owner and status now (the escrow pays the owner at the time of the claim)."""

    license_id: int
    owner: str
    status: LicenseStatus


@dataclass(frozen=True)
class Payout:
    """One claim: ``amount`` token units of (job, license)'s node pay to ``owner``, which brings
    what was paid to ``cumulative``, proven against ``epoch``'s root."""

    job_id: int
    license_id: int
    owner: str
    epoch: int
    cumulative: int
    amount: int
    token: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """Pay that is not claimed this time, and why (``job_id`` None: the license as a whole)."""

    license_id: int
    job_id: int | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClaimPlan:
    payouts: tuple[Payout, ...]
    skipped: tuple[Skipped, ...]


def plan_claims(report: EpochReport, holders: Mapping[int, LicenseHolder], claimed: Mapping[tuple[int, int], int],
                jobs: Mapping[int, Job]) -> ClaimPlan:
    """The claims to send against ``report`` for the licenses in ``holders``: every pay row whose
    cumulative amount exceeds what was ``claimed`` pays the difference. Left out, with the reason
    (any of them would revert the whole transaction): a license that is not active (the escrow
    pays only active ones; a blacklisted one's pay is forfeited), and pay beyond what the escrow
    still holds for the job's node pay (``jobs``: a job closed or cancelled while the report was
    agreed keeps its earlier allocation: the escrow applies no totals to it any more). ``jobs``
    are as they will be with the report's totals applied (``as_applied``).
    Sorted by owner, token and job: the escrow pays each owner's run of claims in one transfer."""
    unspent = {job_id: job.alloc_release - job.release_spent for job_id, job in jobs.items()}
    payouts: list[Payout] = []
    skipped: list[Skipped] = []
    with_pay: set[int] = set()
    for job_id, license_id, cumulative in report.pay:
        holder = holders.get(license_id)
        if holder is None:
            continue
        with_pay.add(license_id)
        amount = cumulative - claimed.get((job_id, license_id), 0)
        if amount <= 0:
            continue
        if holder.status is LicenseStatus.BLACKLISTED:
            skipped.append(Skipped(license_id, job_id, "blacklisted: its pay is forfeited (burned), never paid"))
        elif holder.status is not LicenseStatus.ACTIVE:
            skipped.append(Skipped(license_id, job_id,
                                   f"{holder.status.name.lower()}: the escrow pays a license only while it is active"))
        elif amount > unspent.get(job_id, 0):
            skipped.append(Skipped(license_id, job_id,
                                   f"{amount} is more than the {unspent.get(job_id, 0)} the escrow holds for the job's "
                                   "node pay (the job was closed or cancelled before this report landed)"))
        else:
            unspent[job_id] -= amount
            payouts.append(Payout(job_id, license_id, holder.owner, report.epoch, cumulative, amount,
                                  jobs[job_id].token))
    skipped.extend(Skipped(license_id, None, f"no pay in the report of epoch {report.epoch}")
                   for license_id in sorted(set(holders) - with_pay))
    payouts.sort(key=lambda p: (p.owner.lower(), p.token.lower(), p.job_id, p.license_id))
    return ClaimPlan(tuple(payouts), tuple(skipped))


@dataclass(frozen=True)
class Due:
    """What a job owes now: ``amount`` of ``token`` to ``to`` (its CSP, or the burn address)."""

    job_id: int
    token: str
    to: str
    amount: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_refunds(jobs: Iterable[Job]) -> tuple[Due, ...]:
    """Each job's refund allocated by reports and not taken yet, to its CSP, by job id."""
    return tuple(Due(j.job_id, j.token, j.csp, j.alloc_refund - j.refunded)
                 for j in sorted(jobs, key=lambda j: j.job_id) if j.alloc_refund > j.refunded)


def plan_burns(jobs: Iterable[Job]) -> tuple[Due, ...]:
    """Each job's burn allocated by reports and not executed yet, to the burn address, by job id."""
    return tuple(Due(j.job_id, j.token, BURN_ADDRESS, j.alloc_burn - j.burned)
                 for j in sorted(jobs, key=lambda j: j.job_id) if j.alloc_burn > j.burned)


def totals_by_token(rows: Iterable[Payout | Due]) -> dict[str, int]:
    """The sum of ``rows``' amounts per token (jobs may pay in different tokens)."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.token] = totals.get(row.token, 0) + row.amount
    return totals


# ------------------------------------------------------------------ on chain


Progress = Callable[[str], object]


@dataclass(frozen=True)
class ClaimOutcome:
    """One claim round: the latest settled ``epoch`` (None: none yet), where its report came
    from, what the escrow paid (from its ``Claimed`` events) in transaction ``tx``, what was left
    out and why, and ``note``: why nothing was sent, if nothing was."""

    sender: str
    epoch: int | None
    source: str | None = None
    paid: tuple[Payout, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    tx: str | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"sender": self.sender, "epoch": self.epoch, "source": self.source, "tx": self.tx,
                "paid": [p.as_json() for p in self.paid], "totals": totals_by_token(self.paid),
                "skipped": [s.as_json() for s in self.skipped], "note": self.note}


@dataclass(frozen=True)
class DueOutcome:
    """One refund or burn: what the escrow moved (from its events) in transaction ``tx``, after
    applying the totals of the report of ``epoch`` from ``source`` (None: no report was asked for,
    only totals already applied on chain count), or ``note``: why nothing was sent."""

    sender: str
    moved: tuple[Due, ...] = ()
    tx: str | None = None
    note: str = ""
    epoch: int | None = None
    source: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"sender": self.sender, "epoch": self.epoch, "source": self.source, "tx": self.tx,
                "moved": [d.as_json() for d in self.moved], "totals": totals_by_token(self.moved),
                "note": self.note}


def _tx_hash(receipt: Any) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def _read_jobs(chain: Chain, deployment: Deployment, job_ids: Iterable[int]) -> tuple[dict[int, Job], dict[int, int]]:
    """The jobs ``job_ids`` and 1 + the epoch of the totals each has applied, in one trip."""
    escrow = deployment.escrow(chain)
    ids = sorted(set(job_ids))
    read = chain.read_many([escrow.job_call(j) for j in ids] + [escrow.settled_until_call(j) for j in ids])
    return {job.job_id: job for job in read[:len(ids)]}, dict(zip(ids, read[len(ids):], strict=True))


def _proofs(report: EpochReport, pending: Mapping[int, JobTotals], job_ids: Iterable[int]) -> list[TotalsProof]:
    """The proofs of the pending totals of ``job_ids`` (those the transaction needs applied)."""
    return report.totals_proofs(sorted({j for j in job_ids if j in pending}))


def claim_round(chain: Chain, deployment: Deployment, sender: str, *, report_paths: Sequence[Path] = (),
                oracles: Sequence[str] = (), licenses: Sequence[int] = (), timeout_s: float = 30.0,
                progress: Progress = lambda _: None) -> ClaimOutcome:
    """Claim, in one transaction sent by ``sender``, every unpaid amount of the latest settled
    report for ``licenses`` (default: every license ``sender`` owns), applying the report's totals
    of the jobs it claims from first. The report comes from ``report_paths`` or ``oracles``
    (``find_report``); pay goes to each license's owner."""
    escrow, registry = deployment.escrow(chain), deployment.licenses(chain)
    progress("reading the latest settled epoch")
    settled = latest_settled(chain, deployment)
    if settled is None:
        return ClaimOutcome(sender, None, note="no epoch has been settled yet")
    epoch = settled.epoch
    if settled.root == EMPTY_ROOT:  # pay is cumulative: no report so far has paid anybody
        return ClaimOutcome(sender, epoch, note=f"nobody has earned anything yet (epoch {epoch}'s report pays no node)")
    progress(f"getting the report of epoch {epoch}")
    report, source = find_report(settled, report_paths=report_paths, oracles=oracles, timeout_s=timeout_s)

    progress("reading the licenses' owners and what was claimed")
    if licenses:
        last = registry.last_license_id()
        for license_id in licenses:
            if not 1 <= license_id <= last:
                raise TargetRefused("license", license_id, f"no such license (the last one is {last})")
        wanted = set(licenses)
    else:  # the licenses ever transferred to the sender (minting is a transfer) that the report pays
        received = {int(e.args["tokenId"]) for e in read_logs(registry, "Transfer", deployment.block)
                    if str(e.args["to"]).lower() == sender.lower()}
        wanted = received & {license_id for _, license_id, _ in report.pay}
    holders: dict[int, LicenseHolder] = {}
    for license_id in sorted(wanted):
        owner, status = registry.owner_and_status_of(license_id)
        if licenses or owner.lower() == sender.lower():
            holders[license_id] = LicenseHolder(license_id, to_checksum_address(owner), status)
    rows = [(job_id, license_id) for job_id, license_id, _ in report.pay if license_id in holders]
    claimed = {row: int(escrow.claimed_of(*row)) for row in rows}
    jobs_now, settled_until = _read_jobs(chain, deployment, (job_id for job_id, _ in rows))
    pending = pending_totals(report, jobs_now, settled_until)
    jobs = {job_id: as_applied(job, pending.get(job_id)) for job_id, job in jobs_now.items()}
    plan = plan_claims(report, holders, claimed, jobs)
    if not plan.payouts:
        whose = (f"licenses {', '.join(map(str, sorted(holders)))}" if holders
                 else f"any license of {sender}")
        return ClaimOutcome(sender, epoch, source, skipped=plan.skipped,
                            note=f"nothing to claim: the report of epoch {epoch} owes nothing unpaid to {whose}")

    progress(f"claiming {len(plan.payouts)} amounts")
    receipt = escrow.claim([claim(report, p.job_id, p.license_id) for p in plan.payouts], sender=sender,
                           totals=_proofs(report, pending, (p.job_id for p in plan.payouts)))
    planned = {(p.job_id, p.license_id): p for p in plan.payouts}
    paid = tuple(replace(planned[(int(e.args["jobId"]), int(e.args["licenseId"]))],
                         owner=to_checksum_address(e.args["owner"]), amount=int(e.args["amount"]))
                 for e in escrow.events(receipt) if e.name == "Claimed")
    return ClaimOutcome(sender, epoch, source, paid, plan.skipped, _tx_hash(receipt))


def _jobs_named(chain: Chain, deployment: Deployment, job_ids: Sequence[int]) -> list[Job]:
    escrow = deployment.escrow(chain)
    jobs = chain.read_many([escrow.job_call(j) for j in sorted(set(job_ids))])
    for job in jobs:
        if job.status is JobStatus.NONE:
            raise TargetRefused("job", job.job_id, f"no such job (the last one is {escrow.last_job_id()})")
    return jobs


def _with_report(chain: Chain, deployment: Deployment, jobs: Sequence[Job], report_paths: Sequence[Path],
                 oracles: Sequence[str], timeout_s: float,
                 progress: Progress) -> tuple[list[Job], EpochReport | None, str | None, dict[int, JobTotals]]:
    """``jobs`` as they will be with the latest settled report's totals applied, that report, where
    it came from and its pending totals; with no report source, as they are on chain."""
    if not (report_paths or oracles):
        return list(jobs), None, None, {}
    settled = latest_settled(chain, deployment)
    if settled is None:
        return list(jobs), None, None, {}
    progress(f"getting the report of epoch {settled.epoch}")
    report, source = find_report(settled, report_paths=report_paths, oracles=oracles, timeout_s=timeout_s)
    now, settled_until = _read_jobs(chain, deployment, (j.job_id for j in jobs))
    pending = pending_totals(report, now, settled_until)
    return [as_applied(now[j.job_id], pending.get(j.job_id)) for j in jobs], report, source, pending


_NO_SOURCE = (" (only totals already applied on chain were counted: --oracle or --reports applies the newest "
              "report's)")


def refund_round(chain: Chain, deployment: Deployment, csp: str, *, job_ids: Sequence[int] = (),
                 report_paths: Sequence[Path] = (), oracles: Sequence[str] = (), timeout_s: float = 30.0,
                 progress: Progress = lambda _: None) -> DueOutcome:
    """Take, in one transaction, every refund due to ``csp`` on ``job_ids`` (default: every job
    it created), applying the latest settled report's totals first when it comes from
    ``report_paths`` or ``oracles``. A named job of another CSP is refused before anything is
    sent: the escrow would pay that CSP, not this one."""
    escrow = deployment.escrow(chain)
    progress("reading the CSP's jobs")
    if job_ids:
        jobs = _jobs_named(chain, deployment, job_ids)
        for job in jobs:
            if job.csp.lower() != csp.lower():
                raise TargetRefused("job", job.job_id, f"belongs to CSP {job.csp}, not to {csp} (the key's address)")
    else:
        own = sorted({int(e.args["jobId"]) for e in read_logs(escrow, "JobCreated", deployment.block)
                      if str(e.args["csp"]).lower() == csp.lower()})
        jobs = chain.read_many([escrow.job_call(j) for j in own])
    jobs, report, source, pending = _with_report(chain, deployment, jobs, report_paths, oracles, timeout_s, progress)
    epoch = None if report is None else report.epoch
    due = plan_refunds(jobs)
    if not due:
        hint = _NO_SOURCE if not (report_paths or oracles) else ""
        return DueOutcome(csp, note=f"nothing to refund: no refund is due on {_named(jobs, 'of ' + csp)}{hint}",
                          epoch=epoch, source=source)
    progress(f"taking the refunds of {len(due)} jobs")
    totals = [] if report is None else _proofs(report, pending, (d.job_id for d in due))
    receipt = escrow.take_refund([d.job_id for d in due], sender=csp, totals=totals)
    planned = {d.job_id: d for d in due}
    moved = tuple(replace(planned[int(e.args["jobId"])], to=to_checksum_address(e.args["csp"]),
                          amount=int(e.args["amount"]))
                  for e in escrow.events(receipt) if e.name == "RefundTaken")
    return DueOutcome(csp, moved, _tx_hash(receipt), epoch=epoch, source=source)


def burn_round(chain: Chain, deployment: Deployment, sender: str, *, job_ids: Sequence[int] = (),
               report_paths: Sequence[Path] = (), oracles: Sequence[str] = (), timeout_s: float = 30.0,
               progress: Progress = lambda _: None) -> DueOutcome:
    """Execute, in one transaction, every burn due on ``job_ids`` (default: every job), applying
    the latest settled report's totals first when it comes from ``report_paths`` or ``oracles``."""
    escrow = deployment.escrow(chain)
    progress("reading the jobs")
    if job_ids:
        jobs = _jobs_named(chain, deployment, job_ids)
    else:
        jobs = chain.read_many([escrow.job_call(j) for j in range(1, escrow.last_job_id() + 1)])
    jobs, report, source, pending = _with_report(chain, deployment, jobs, report_paths, oracles, timeout_s, progress)
    epoch = None if report is None else report.epoch
    due = plan_burns(jobs)
    if not due:
        hint = _NO_SOURCE if not (report_paths or oracles) else ""
        return DueOutcome(sender, note=f"nothing to burn: no burn is due on {_named(jobs, 'of the escrow')}{hint}",
                          epoch=epoch, source=source)
    progress(f"burning for {len(due)} jobs")
    totals = [] if report is None else _proofs(report, pending, (d.job_id for d in due))
    receipt = escrow.execute_burn([d.job_id for d in due], sender=sender, totals=totals)
    planned = {d.job_id: d for d in due}
    moved = tuple(replace(planned[int(e.args["jobId"])], amount=int(e.args["amount"]))
                  for e in escrow.events(receipt) if e.name == "BurnExecuted")
    return DueOutcome(sender, moved, _tx_hash(receipt), epoch=epoch, source=source)


def _named(jobs: Sequence[Job], whose: str) -> str:
    if not jobs:
        return f"any job {whose}"
    return f"job{'s' if len(jobs) > 1 else ''} {', '.join(str(j.job_id) for j in jobs)}"
