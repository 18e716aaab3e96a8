"""The audit's replay of every job's accounts (``_audit``): each escrow event applied in chain order,
the rule behind each amount re-derived (deposit, top-up, scale, cancel, close, applied totals,
refund, burn), conservation in both forms, the end state against ``getJob`` and ``settledUntil``,
and each token's escrow balance against what its jobs still hold. Totals of a landed report reach a
job only when applied (``JobAllocated``); until then they are part of its ``locked`` term, on chain
as here, and a job's ``landed`` totals say how much of it (information, not a discrepancy). Pure
over a ``ChainRecord``."""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from contracts import JobStatus, to_checksum_address

from ._audit_chain import ChainEvent, ChainRecord
from ._audit_findings import Check, Finding


@dataclass(frozen=True)
class Allocation:
    """A job's cumulative totals in the report of ``epoch``: applied (``JobAllocated``), or landed
    and not applied yet (``JobAccount.landed``)."""

    epoch: int
    release: int
    refund: int
    burn: int

    def as_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "release": self.release, "refund": self.refund, "burn": self.burn}


@dataclass(frozen=True)
class JobAccount:
    """A job's accounts rebuilt from events alone (names as in JobEscrow's conservation comment)."""

    job_id: int
    csp: str
    token: str
    price: int
    start_epoch: int
    epochs: int
    replicas: int
    spec_hash: bytes
    status: JobStatus = JobStatus.ACTIVE
    deposited: int = 0  # create + top-ups + scale-up pulls
    reclaimed: int = 0  # scale-down refunds + cancel + close
    alloc_release: int = 0
    alloc_refund: int = 0
    alloc_burn: int = 0
    released: int = 0  # Claimed
    forfeited: int = 0
    refunded: int = 0  # RefundTaken
    burned: int = 0  # BurnExecuted
    allocations: tuple[Allocation, ...] = ()  # every JobAllocated, in order
    settled_until: int = 0  # 1 + the epoch of the totals applied last (as the escrow's settledUntil)
    landed: Allocation | None = None  # newest landed totals not applied yet, from a published report

    @property
    def landed_unapplied(self) -> int:
        """How much of ``locked`` a landed report already assigns (0 without ``landed``)."""
        if self.landed is None:
            return 0
        return (self.landed.release + self.landed.refund + self.landed.burn
                - self.alloc_release - self.alloc_refund - self.alloc_burn)

    @property
    def claimable(self) -> int:
        return self.alloc_release - self.released - self.forfeited

    @property
    def pending_refund(self) -> int:
        return self.alloc_refund - self.refunded

    @property
    def pending_burn(self) -> int:
        return self.alloc_burn - self.burned

    @property
    def locked(self) -> int:
        return self.deposited - self.reclaimed - self.alloc_release - self.alloc_refund - self.alloc_burn

    @property
    def held(self) -> int:
        """What the escrow must still hold for this job."""
        return self.deposited - self.released - self.forfeited - self.refunded - self.burned - self.reclaimed

    def terms(self) -> dict[str, int]:
        """JobEscrow's form: deposited = these terms summed (each must be >= 0)."""
        return {"released": self.released, "forfeited": self.forfeited, "refunded": self.refunded,
                "burned": self.burned, "reclaimed": self.reclaimed, "claimable": self.claimable,
                "pending_refund": self.pending_refund, "pending_burn": self.pending_burn, "locked": self.locked}

    def conservation(self) -> dict[str, int]:
        """SETTLEMENT.md's form, as ``Job.conservation``: deposited = released + refunded + burned + locked."""
        return {"deposited": self.deposited, "released": self.alloc_release - self.forfeited,
                "refunded": self.alloc_refund + self.reclaimed, "burned": self.alloc_burn + self.forfeited,
                "locked": self.locked}

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status.name.lower(), "csp": self.csp, "token": self.token,
                "replicas": self.replicas, "deposited": self.deposited, **self.terms(), "held": self.held,
                "conservation": self.conservation(), "allocations": [a.as_json() for a in self.allocations],
                "settled_until": self.settled_until, "landed": None if self.landed is None else self.landed.as_json(),
                "landed_unapplied": self.landed_unapplied}


@dataclass(frozen=True)
class TokenBalance:
    token: str
    balance: int  # the escrow's balance at the audited block
    held: int  # what its jobs in this token still hold

    def as_json(self) -> dict[str, Any]:
        return {"token": self.token, "balance": self.balance, "held": self.held}


def replay_jobs(record: ChainRecord) -> tuple[dict[int, JobAccount], list[Finding]]:
    """Each job's accounts from its events in chain order, each amount checked against its rule."""
    accounts: dict[int, JobAccount] = {}
    findings: list[Finding] = []
    next_epoch = 0  # as the escrow's: 1 + the newest epoch a report landed for
    for e in record.escrow_events:
        if e.name == "EpochSettled":
            next_epoch = int(e.args["epoch"]) + 1
        if "jobId" not in e.args:
            continue
        job_id = int(e.args["jobId"])
        account, problems = apply_event(accounts.get(job_id), e, next_epoch,
                                        record.closed_at_epoch.get(e.at.block), record.close_grace_epochs)
        if account is not None:
            accounts[job_id] = account
        epoch = e.args.get("epoch")
        findings += [Finding(Check.LEDGER, p, job_id, None if epoch is None else int(epoch)) for p in problems]
    return accounts, findings


def apply_event(account: JobAccount | None, e: ChainEvent, next_epoch: int = 0, closed_at: int | None = None,
                grace: int = 0) -> tuple[JobAccount | None, list[str]]:
    """``account`` after event ``e``, and every rule the event's amounts break (JobEscrow's rules,
    re-derived: the contract enforces them, the audit does not take that on trust). ``next_epoch``:
    1 + the newest epoch a report had landed for by then; ``closed_at``: for a ``JobClosed``, the
    escrow's epoch at its block, and ``grace`` its close grace (epochs)."""
    a = e.args
    where = f"{e.name} at block {e.at.block}"
    if e.name == "JobCreated":
        p = a["params"]
        if account is not None:
            return account, [f"{where}: the job was already created"]
        created = JobAccount(job_id=int(a["jobId"]), csp=to_checksum_address(a["csp"]),
                             token=to_checksum_address(p["token"]), price=int(p["pricePerNodeEpoch"]),
                             start_epoch=int(p["startEpoch"]), epochs=int(p["epochs"]), replicas=int(p["replicas"]),
                             spec_hash=bytes(p["specHash"]), deposited=int(a["deposit"]))
        expected = created.price * created.replicas * created.epochs
        return created, [] if expected == created.deposited else [
            f"{where}: deposit {created.deposited}, price x replicas x epochs is {expected}"]
    if account is None:
        return None, [f"{where}: the job was never created"]
    problems: list[str] = []
    if e.name in ("JobToppedUp", "JobSpecUpdated", "JobScaled", "JobCancelled", "JobClosed", "JobAllocated") and (
            account.status is not JobStatus.ACTIVE):
        problems.append(f"{where}: the job is {account.status.name.lower()}")
    new = account
    if e.name == "JobToppedUp":
        new = replace(account, deposited=account.deposited + int(a["amount"]))
        if int(a["deposited"]) != new.deposited:
            problems.append(f"{where}: the event says deposited {a['deposited']}, the events add up to {new.deposited}")
    elif e.name == "JobSpecUpdated":
        if bytes(a["previous"]) != account.spec_hash:
            problems.append(f"{where}: previous spec 0x{bytes(a['previous']).hex()} is not the recorded one")
        new = replace(account, spec_hash=bytes(a["current"]))
    elif e.name == "JobScaled":
        previous, current, from_epoch = int(a["previous"]), int(a["current"]), int(a["fromEpoch"])
        end = account.start_epoch + account.epochs
        per_slot = account.price * (end - from_epoch)
        pull = per_slot * (current - previous) if current > previous else 0
        refund = per_slot * (previous - current) if current < previous else 0
        if previous != account.replicas:
            problems.append(f"{where}: scaled from {previous} replicas, the job had {account.replicas}")
        if not account.start_epoch <= from_epoch < end:
            problems.append(f"{where}: from epoch {from_epoch}, outside the job's epochs "
                            f"{account.start_epoch}..{end - 1}")
        if (int(a["pulled"]), int(a["refunded"])) != (pull, refund):
            problems.append(f"{where}: pulled {a['pulled']} refunded {a['refunded']}; price x replicas changed x "
                            f"epochs left is {pull} pulled, {refund} refunded")
        new = replace(account, replicas=current, deposited=account.deposited + int(a["pulled"]),
                      reclaimed=account.reclaimed + int(a["refunded"]))
    elif e.name == "JobCancelled":
        due = account.deposited - account.reclaimed
        if int(a["refund"]) != due or account.alloc_release + account.alloc_refund + account.alloc_burn:
            problems.append(f"{where}: refunded {a['refund']}; a cancel returns everything not yet returned, {due}, "
                            f"and only before any allocation")
        new = replace(account, reclaimed=account.reclaimed + int(a["refund"]), status=JobStatus.CANCELLED)
    elif e.name == "JobClosed":
        if int(a["reclaimed"]) != account.locked:
            problems.append(f"{where}: returned {a['reclaimed']}, the unallocated remainder was {account.locked}")
        needed = min(next_epoch, account.start_epoch + account.epochs)  # the newest report covering it, + 1
        # required until a second grace period after the job became closable (``closed_at``: the
        # escrow's epoch at the close; unknown, the rule is applied)
        lapsed = closed_at is not None and closed_at >= account.start_epoch + account.epochs + 2 * grace
        if needed > account.start_epoch and account.settled_until < needed and not lapsed:
            problems.append(f"{where}: closed on totals applied through epoch {account.settled_until - 1}; the "
                            f"report of epoch {needed - 1} covers the job and was not applied")
        new = replace(account, reclaimed=account.reclaimed + int(a["reclaimed"]), status=JobStatus.CLOSED)
    elif e.name == "JobAllocated":
        alloc = Allocation(int(a["epoch"]), int(a["release"]), int(a["refund"]), int(a["burn"]))
        if (alloc.release < account.alloc_release or alloc.refund < account.alloc_refund
                or alloc.burn < account.alloc_burn):
            problems.append(f"{where}: a cumulative total decreased")
        if alloc.epoch < account.settled_until:  # the escrow skips these: totals as new or newer applied
            problems.append(f"{where}: totals of epoch {alloc.epoch} applied after those of epoch "
                            f"{account.settled_until - 1}")
        new = replace(account, alloc_release=alloc.release, alloc_refund=alloc.refund, alloc_burn=alloc.burn,
                      allocations=(*account.allocations, alloc), settled_until=alloc.epoch + 1)
    elif e.name == "Claimed":
        new = replace(account, released=account.released + int(a["amount"]))
    elif e.name == "Forfeited":
        new = replace(account, forfeited=account.forfeited + int(a["amount"]))
    elif e.name == "RefundTaken":
        if int(a["amount"]) != account.pending_refund or not account.pending_refund:
            problems.append(f"{where}: took {a['amount']}, the refund due was {account.pending_refund}")
        new = replace(account, refunded=account.refunded + int(a["amount"]))
    elif e.name == "BurnExecuted":
        if int(a["amount"]) != account.pending_burn or not account.pending_burn:
            problems.append(f"{where}: burned {a['amount']}, the burn due was {account.pending_burn}")
        new = replace(account, burned=account.burned + int(a["amount"]))
    negative = {k: v for k, v in new.terms().items() if v < 0}
    if negative:
        problems.append(f"after {where}: " + ", ".join(f"{k} is {v}" for k, v in negative.items()))
    return new, problems


def check_state(record: ChainRecord, accounts: Mapping[int, JobAccount]) -> list[Finding]:
    """The rebuilt accounts against getJob, and conservation in both forms."""
    findings: list[Finding] = []
    for job_id in sorted(set(record.jobs) - set(accounts)):
        findings.append(Finding(Check.JOB_STATE, "getJob knows the job, no JobCreated event does", job_id))
    for job_id, acc in sorted(accounts.items()):
        job = record.jobs.get(job_id)
        if job is None:
            findings.append(Finding(Check.JOB_STATE, f"created by events, beyond lastJobId {len(record.jobs)}", job_id))
            continue
        pairs = {"csp": (acc.csp, job.csp), "token": (acc.token, job.token), "status": (acc.status, job.status),
                 "replicas": (acc.replicas, job.replicas), "spec_hash": (acc.spec_hash, job.spec_hash),
                 "price": (acc.price, job.price_per_node_epoch), "deposited": (acc.deposited, job.deposited),
                 "reclaimed": (acc.reclaimed, job.reclaimed), "alloc_release": (acc.alloc_release, job.alloc_release),
                 "alloc_refund": (acc.alloc_refund, job.alloc_refund), "alloc_burn": (acc.alloc_burn, job.alloc_burn),
                 "release_spent": (acc.released + acc.forfeited, job.release_spent),
                 "forfeited": (acc.forfeited, job.forfeited), "refunded": (acc.refunded, job.refunded),
                 "burned": (acc.burned, job.burned),
                 "settled_until": (acc.settled_until, record.settled_until.get(job_id))}
        for name, (from_events, on_chain) in pairs.items():
            if from_events != on_chain:
                findings.append(Finding(Check.JOB_STATE, f"{name}: events give {_show(from_events)}, getJob "
                                        f"{_show(on_chain)}", job_id))
        terms, settlement = acc.terms(), acc.conservation()
        moved = sum(terms.values())
        parts = settlement["released"] + settlement["refunded"] + settlement["burned"] + settlement["locked"]
        negative = {k: v for k, v in {**terms, **settlement}.items() if v < 0}
        if moved != acc.deposited or parts != acc.deposited or negative:
            findings.append(Finding(Check.CONSERVATION, f"deposited {acc.deposited}, parts {moved} (escrow form), "
                                    f"{parts} (released + refunded + burned + locked), negative: {negative}", job_id))
    return findings


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return str(value)


def compute_balances(record: ChainRecord, accounts: Mapping[int, JobAccount]) -> tuple[TokenBalance, ...]:
    held: dict[str, int] = defaultdict(int)
    for acc in accounts.values():
        held[acc.token] += acc.held
    tokens = sorted(set(held) | set(record.balances))
    return tuple(TokenBalance(t, record.balances.get(t, 0), held.get(t, 0)) for t in tokens)
