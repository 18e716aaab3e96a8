"""What ``deedmesh claim``, ``refund`` and ``burn`` do, apart from the command line: find the
latest settled report and check it against the chain, decide what is due, and send it.

Claims are cumulative (``JobEscrow.claim``): claiming a (job, license)'s amount in the latest
settled report pays everything not paid yet, so one claim per pay row against the newest root is
all a license owner ever needs. The report comes from files (an oracle's ``<dir>/reports``, or
copies of it) or from oracles over libp2p (``/deedmesh/oracle/1``, ``{"kind": "report"}``); a
report is used only if its epoch is the latest settled one and its pay hashes to the root the
chain holds for it, so a stale, forged or corrupted report cannot cost a reverted transaction.

The decisions (``plan_claims``, ``plan_refunds``, ``plan_burns``) are pure functions over frozen
values; ``claim_round``, ``refund_round`` and ``burn_round`` read the chain, decide, and send one
transaction each, reporting what the escrow's events say it paid.

Errors, beside the chain's (``contracts.ChainError``) and the mesh's (``mesh.MeshError``)::

    SettleError                  a settlement command cannot go on (``exit_code`` for the CLI)
    ├── ReportUnavailable        (epoch, failures): no source had the epoch's report; exit 9
    ├── ReportRootMismatch       (epoch, refusals): reports were found, none matches the chain; exit 16
    └── TargetRefused            (kind, number, reason): a --job or --license that cannot be settled; exit 2
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from contracts import (
    BURN_ADDRESS,
    Chain,
    ChainError,
    ChainUnreachable,
    Deployment,
    Event,
    Job,
    JobStatus,
    LicenseStatus,
    to_checksum_address,
)
from mesh import MeshError, request_once

from ._report import EMPTY_ROOT, EpochReport, claim
from ._service import MAX_MESSAGE_BYTES, PROTOCOL

log = logging.getLogger("deedmesh.settle")

EXIT_REPORT_UNAVAILABLE = 9  # deedmesh's "node error (or a node unreachable)"
EXIT_REPORT_MISMATCH = 16
EXIT_TARGET_REFUSED = 2  # a bad --job or --license is a usage error


# ------------------------------------------------------------------ errors


class SettleError(Exception):
    """A settlement command cannot go on (module docstring: the subclasses)."""

    exit_code = 1


class ReportUnavailable(SettleError):
    """No source served a report of ``epoch``; ``failures``: (source, why) for each one tried."""

    exit_code = EXIT_REPORT_UNAVAILABLE

    def __init__(self, epoch: int, failures: Sequence[tuple[str, str]]) -> None:
        tried = "; ".join(f"{source}: {why}" for source, why in failures) or "no source given"
        super().__init__(f"no report of epoch {epoch} (the latest settled) from any source: {tried}")
        self.epoch, self.failures = epoch, tuple(failures)


class ReportRootMismatch(SettleError):
    """Reports of ``epoch`` were found and every one was refused; ``refusals``: (source, why)."""

    exit_code = EXIT_REPORT_MISMATCH

    def __init__(self, epoch: int, refusals: Sequence[tuple[str, str]],
                 failures: Sequence[tuple[str, str]] = ()) -> None:
        shown = "; ".join(f"{source}: {why}" for source, why in refusals)
        others = "".join(f"; {source}: {why}" for source, why in failures)
        super().__init__(f"refused every report of epoch {epoch} (nothing was sent): {shown}{others}")
        self.epoch, self.refusals, self.failures = epoch, tuple(refusals), tuple(failures)


class TargetRefused(SettleError):
    """A job or license named on the command line that this command cannot settle: unknown, or
    (refunds) not the CSP's. Checked before anything is sent."""

    exit_code = EXIT_TARGET_REFUSED

    def __init__(self, kind: str, number: int, reason: str) -> None:
        super().__init__(f"{kind} {number}: {reason}")
        self.kind, self.number, self.reason = kind, number, reason


# ------------------------------------------------------------------ reports


def refusal(report: EpochReport, epoch: int, root: bytes) -> str | None:
    """Why ``report`` cannot be claimed against ``epoch``'s ``root`` on chain (None: it can). Its
    pay is hashed again: a report whose root field is right but whose amounts were edited would
    only make the whole claim transaction revert."""
    if report.epoch != epoch:
        return f"it is the report of epoch {report.epoch}"
    if report.root_bytes != root:
        return f"its root {report.root} is not the chain's 0x{root.hex()}"
    tree = report.tree
    if (tree.root if tree is not None else EMPTY_ROOT) != root:
        return "its pay rows do not hash to its root (edited)"
    return None


@dataclass
class _Search:
    """The outcome of looking for one epoch's report across sources."""

    epoch: int
    root: bytes
    failures: list[tuple[str, str]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)

    def judge(self, report: EpochReport, source: str) -> bool:
        why = refusal(report, self.epoch, self.root)
        if why is not None:
            log.warning("refused a report: %s", why, extra={"source": source, "epoch": self.epoch})
            self.refusals.append((source, why))
        return why is None

    def error(self) -> SettleError:
        if self.refusals:
            return ReportRootMismatch(self.epoch, self.refusals, self.failures)
        return ReportUnavailable(self.epoch, self.failures)


def _report_files(paths: Iterable[Path]) -> list[Path]:
    """The ``*.json`` of the given directories and the given files, newest first (the latest
    settled report is usually the newest file: one is parsed, not the whole history)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return sorted(files, key=lambda f: f.stat().st_mtime if f.exists() else 0.0, reverse=True)


def _from_files(search: _Search, paths: Sequence[Path]) -> tuple[EpochReport, str] | None:
    files = _report_files(paths)
    newest: int | None = None
    for path in files:
        try:
            report = EpochReport.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.debug("not a report file", extra={"path": str(path), "error": str(exc)[:200]})
            continue
        newest = report.epoch if newest is None else max(newest, report.epoch)
        if report.epoch == search.epoch and search.judge(report, str(path)):
            return report, str(path)
    if not search.refusals:
        where = ", ".join(str(p) for p in paths)
        there = "" if newest is None else f" (the newest there is of epoch {newest})"
        search.failures.append((where, f"none of {len(files)} files is a report of epoch {search.epoch}{there}"))
    return None


async def fetch_report(oracles: Sequence[str], epoch: int, root: bytes, *,
                       timeout_s: float) -> tuple[EpochReport, str]:
    """``epoch``'s report from the first of ``oracles`` (multiaddrs ending in ``/p2p/<peer id>``),
    asked in turn, whose answer matches ``root`` (``refusal``), and that oracle.
    ``ReportRootMismatch`` if some answered with reports and none matched, else
    ``ReportUnavailable`` naming why each failed."""
    search = _Search(epoch, root)
    found = await _from_oracles(search, oracles, timeout_s)
    if found is None:
        raise search.error()
    return found


async def _from_oracles(search: _Search, oracles: Sequence[str],
                        timeout_s: float) -> tuple[EpochReport, str] | None:
    request = json.dumps({"kind": "report", "epoch": search.epoch}).encode()
    for oracle in oracles:
        try:
            raw = await request_once(oracle, PROTOCOL, request, timeout_s=timeout_s,
                                     max_response_bytes=MAX_MESSAGE_BYTES)
        except MeshError as exc:
            search.failures.append((oracle, str(exc)))
            continue
        try:
            answer = json.loads(raw)
            if not isinstance(answer, dict) or "report" not in answer:
                why = answer.get("error", "?") if isinstance(answer, dict) else "?"
                search.failures.append((oracle, f"does not serve it (answered {str(why)[:100]!r})"))
                continue
            report = EpochReport.model_validate_json(json.dumps(answer["report"]))
        except ValueError as exc:
            search.failures.append((oracle, f"answered something that is not a report: {str(exc)[:200]}"))
            continue
        if search.judge(report, oracle):
            return report, oracle
    return None


def find_report(epoch: int, root: bytes, *, report_paths: Sequence[Path] = (), oracles: Sequence[str] = (),
                timeout_s: float = 30.0) -> tuple[EpochReport, str]:
    """``epoch``'s report matching ``root`` (``refusal``) and where it came from: the files first
    (no network), then the oracles in turn. Raises as ``fetch_report``. Not callable from inside
    a trio run (the oracles are asked in one of its own)."""
    search = _Search(epoch, root)
    found = _from_files(search, report_paths) if report_paths else None
    if found is None and oracles:
        found = trio.run(_from_oracles, search, oracles, timeout_s)
    if found is None:
        raise search.error()
    return found


# ------------------------------------------------------------------ what is due (pure)


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
    agreed keeps its earlier allocation, the report's totals for it were skipped on chain).
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
    """One refund or burn: what the escrow moved (from its events) in transaction ``tx``, or
    ``note``: why nothing was sent."""

    sender: str
    moved: tuple[Due, ...] = ()
    tx: str | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"sender": self.sender, "tx": self.tx, "moved": [d.as_json() for d in self.moved],
                "totals": totals_by_token(self.moved), "note": self.note}


def _logs(client: Any, event: str, from_block: int) -> list[Event]:
    """``client.logs``, with web3's own errors (it reads logs past ``Chain``'s translation) turned
    into ``ChainError``s: a chain gone down mid-command is "unreachable", not a traceback."""
    try:
        return list(client.logs(event, from_block))
    except ChainError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) or type(exc).__name__ in {"ConnectionError", "ReadTimeout"}:
            raise ChainUnreachable(client.chain.url, str(exc)) from exc
        raise ChainError(f"reading {event} events: {type(exc).__name__}: {exc}") from exc


def latest_settled(chain: Chain, deployment: Deployment) -> tuple[int, bytes] | None:
    """The latest settled epoch (by the escrow's ``EpochSettled`` events: a report with no node
    pay lands with a zero root) and the root the escrow holds for it; None before the first."""
    escrow = deployment.escrow(chain)
    epochs = [int(e.args["epoch"]) for e in _logs(escrow, "EpochSettled", deployment.block)]
    if not epochs:
        return None
    return max(epochs), escrow.root_of(max(epochs))


def _tx_hash(receipt: Any) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def claim_round(chain: Chain, deployment: Deployment, sender: str, *, report_paths: Sequence[Path] = (),
                oracles: Sequence[str] = (), licenses: Sequence[int] = (), timeout_s: float = 30.0,
                progress: Progress = lambda _: None) -> ClaimOutcome:
    """Claim, in one transaction sent by ``sender``, every unpaid amount of the latest settled
    report for ``licenses`` (default: every license ``sender`` owns). The report comes from
    ``report_paths`` or ``oracles`` (``find_report``); pay goes to each license's owner."""
    escrow, registry = deployment.escrow(chain), deployment.licenses(chain)
    progress("reading the latest settled epoch")
    latest = latest_settled(chain, deployment)
    if latest is None:
        return ClaimOutcome(sender, None, note="no epoch has been settled yet")
    epoch, root = latest
    if root == EMPTY_ROOT:  # pay is cumulative: no report so far has paid anybody
        return ClaimOutcome(sender, epoch, note=f"nobody has earned anything yet (epoch {epoch}'s report pays no node)")
    progress(f"getting the report of epoch {epoch}")
    report, source = find_report(epoch, root, report_paths=report_paths, oracles=oracles, timeout_s=timeout_s)

    progress("reading the licenses' owners and what was claimed")
    if licenses:
        last = registry.last_license_id()
        for license_id in licenses:
            if not 1 <= license_id <= last:
                raise TargetRefused("license", license_id, f"no such license (the last one is {last})")
        wanted = set(licenses)
    else:  # the licenses ever transferred to the sender (minting is a transfer) that the report pays
        received = {int(e.args["tokenId"]) for e in _logs(registry, "Transfer", deployment.block)
                    if str(e.args["to"]).lower() == sender.lower()}
        wanted = received & {license_id for _, license_id, _ in report.pay}
    holders: dict[int, LicenseHolder] = {}
    for license_id in sorted(wanted):
        owner, status = registry.owner_and_status_of(license_id)
        if licenses or owner.lower() == sender.lower():
            holders[license_id] = LicenseHolder(license_id, to_checksum_address(owner), status)
    rows = [(job_id, license_id) for job_id, license_id, _ in report.pay if license_id in holders]
    claimed = {row: int(escrow.claimed_of(*row)) for row in rows}
    job_ids = sorted({job_id for job_id, _ in rows})
    jobs = {job.job_id: job for job in chain.read_many([escrow.job_call(j) for j in job_ids])}
    plan = plan_claims(report, holders, claimed, jobs)
    if not plan.payouts:
        whose = (f"licenses {', '.join(map(str, sorted(holders)))}" if holders
                 else f"any license of {sender}")
        return ClaimOutcome(sender, epoch, source, skipped=plan.skipped,
                            note=f"nothing to claim: the report of epoch {epoch} owes nothing unpaid to {whose}")

    progress(f"claiming {len(plan.payouts)} amounts")
    receipt = escrow.claim([claim(report, p.job_id, p.license_id) for p in plan.payouts], sender=sender)
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


def refund_round(chain: Chain, deployment: Deployment, csp: str, *, job_ids: Sequence[int] = (),
                 progress: Progress = lambda _: None) -> DueOutcome:
    """Take, in one transaction, every refund due to ``csp`` on ``job_ids`` (default: every job
    it created). A named job of another CSP is refused before anything is sent: the escrow would
    pay that CSP, not this one."""
    escrow = deployment.escrow(chain)
    progress("reading the CSP's jobs")
    if job_ids:
        jobs = _jobs_named(chain, deployment, job_ids)
        for job in jobs:
            if job.csp.lower() != csp.lower():
                raise TargetRefused("job", job.job_id, f"belongs to CSP {job.csp}, not to {csp} (the key's address)")
    else:
        own = sorted({int(e.args["jobId"]) for e in _logs(escrow, "JobCreated", deployment.block)
                      if str(e.args["csp"]).lower() == csp.lower()})
        jobs = chain.read_many([escrow.job_call(j) for j in own])
    due = plan_refunds(jobs)
    if not due:
        return DueOutcome(csp, note=f"nothing to refund: no refund is due on {_named(jobs, 'of ' + csp)}")
    progress(f"taking the refunds of {len(due)} jobs")
    receipt = escrow.take_refund([d.job_id for d in due], sender=csp)
    planned = {d.job_id: d for d in due}
    moved = tuple(replace(planned[int(e.args["jobId"])], to=to_checksum_address(e.args["csp"]),
                          amount=int(e.args["amount"]))
                  for e in escrow.events(receipt) if e.name == "RefundTaken")
    return DueOutcome(csp, moved, _tx_hash(receipt))


def burn_round(chain: Chain, deployment: Deployment, sender: str, *, job_ids: Sequence[int] = (),
               progress: Progress = lambda _: None) -> DueOutcome:
    """Execute, in one transaction, every burn due on ``job_ids`` (default: every job)."""
    escrow = deployment.escrow(chain)
    progress("reading the jobs")
    if job_ids:
        jobs = _jobs_named(chain, deployment, job_ids)
    else:
        jobs = chain.read_many([escrow.job_call(j) for j in range(1, escrow.last_job_id() + 1)])
    due = plan_burns(jobs)
    if not due:
        return DueOutcome(sender, note=f"nothing to burn: no burn is due on {_named(jobs, 'of the escrow')}")
    progress(f"burning for {len(due)} jobs")
    receipt = escrow.execute_burn([d.job_id for d in due], sender=sender)
    planned = {d.job_id: d for d in due}
    moved = tuple(replace(planned[int(e.args["jobId"])], amount=int(e.args["amount"]))
                  for e in escrow.events(receipt) if e.name == "BurnExecuted")
    return DueOutcome(sender, moved, _tx_hash(receipt))


def _named(jobs: Sequence[Job], whose: str) -> str:
    if not jobs:
        return f"any job {whose}"
    return f"job{'s' if len(jobs) > 1 else ''} {', '.join(str(j.job_id) for j in jobs)}"
