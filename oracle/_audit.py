"""The audit: re-derive every settlement of a deployment from public data, trusting nothing else.

Owns two steps. ``collect`` reads a deployment's history into a frozen ``ChainRecord``: every
escrow and oracle-registry event from the deployment block, the calldata of every report, claim
and forfeit transaction, and the escrow's state at one pinned block (all reads at that block, so a
chain that moves during the audit cannot make it disagree with itself). ``check`` is pure over that
record and the published reports, so a test can alter a record in memory and see what catches it
(the reading is ``_audit_chain``, the report files ``_audit_published``, the findings
``_audit_findings``; the command ``_audit_cli``):

- every report: its calldata matches its ``EpochSettled`` (root, totals hash, signer count); each
  signature is well formed as OpenZeppelin's ECDSA requires (65 bytes, low s, v 27 or 28), recovers
  over the EIP-712 digest under the escrow's domain to an oracle registered *at that block* (the
  registry's events replayed up to it), is distinct, and at least the threshold then in force
  signed; each ``JobAllocated``/``JobAllocationSkipped`` is one of its totals;
- every claim and forfeit: its Merkle proof against the root of its epoch, settled before it, and
  the amount paid (cumulative - what that job and license were paid before);
- every job: its accounts replayed from events, the rule behind each amount (deposit, top-up,
  scale, cancel, close, refund, burn), conservation after every event, and the end state against
  the escrow's ``getJob``; the escrow's balance of each token against what its jobs still hold;
- every published report: its root is the Merkle root of its pay leaves and the root on chain, its
  totals are those the oracles signed, its pay agrees with what claims proved and adds up to each
  job's release total.

Not verified yet: the amounts themselves from the availability a report cites (the hook
``verify_report_amounts`` will call ``oracle/_report.verify_report``); the audit says so in its
output rather than passing silently.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts import (
    Chain,
    Deployment,
    JobStatus,
    JobTotals,
    epoch_report,
    recover,
    release_leaf,
    to_checksum_address,
    totals_hash,
)

from ._audit_chain import ChainEvent, ChainRecord, Position, ReportCall, collect
from ._audit_findings import AuditFailed, Check, Finding
from ._audit_published import (
    AMOUNTS_NOT_VERIFIED,
    PayLeaf,
    PublishedReport,
    compute_pay_root,
    load_published_reports,
    verify_report_amounts,
)
from ._merkle import verify

# OpenZeppelin's ECDSA rejects s above half the curve order (malleable twins of valid signatures).
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


# ---------------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class AuditOptions:
    job_id: int | None = None  # report this job only (the escrow-wide balance check is skipped)
    from_epoch: int = 0  # check reports and published reports of this epoch and later
    require_reports: bool = False  # a settled epoch without a published report is a discrepancy


@dataclass(frozen=True)
class Allocation:
    """A job's cumulative totals as a report set them (or skipped them: job no longer active)."""

    epoch: int
    release: int
    refund: int
    burn: int
    skipped: bool = False


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
    allocations: tuple[Allocation, ...] = ()

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
                "conservation": self.conservation(),
                "allocations": [{"epoch": a.epoch, "release": a.release, "refund": a.refund, "burn": a.burn,
                                 "skipped": a.skipped} for a in self.allocations]}


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    block: int
    tx_hash: str
    root: bytes
    totals_hash: bytes
    signers: tuple[str, ...]  # valid, distinct, registered at the block
    threshold: int  # in force at the block
    oracles: tuple[str, ...]  # registered at the block
    jobs: int  # totals entries
    payouts: int  # claims and forfeits proven against this epoch's root
    report: str  # published report: ok, mismatch, missing, or not checked (before --from-epoch)

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "block": self.block, "tx_hash": self.tx_hash, "root": "0x" + self.root.hex(),
                "totals_hash": "0x" + self.totals_hash.hex(), "signers": list(self.signers),
                "threshold": self.threshold, "oracles": list(self.oracles), "jobs": self.jobs,
                "payouts": self.payouts, "report": self.report}


@dataclass(frozen=True)
class TokenBalance:
    token: str
    balance: int  # the escrow's balance at the audited block
    held: int  # what its jobs in this token still hold

    def as_json(self) -> dict[str, Any]:
        return {"token": self.token, "balance": self.balance, "held": self.held}


@dataclass(frozen=True)
class AuditReport:
    chain_id: int
    escrow: str
    from_block: int
    to_block: int
    options: AuditOptions
    epochs: tuple[EpochRow, ...]
    jobs: tuple[JobAccount, ...]
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
                "balances": [b.as_json() for b in self.balances],
                "discrepancies": [f.as_json() for f in self.errors],
                "warnings": [f.as_json() for f in self.warnings], "not_verified": list(self.not_verified)}


def audit(chain: Chain, deployment: Deployment, *, reports: Iterable[Path] = (),
          options: AuditOptions | None = None) -> AuditReport:
    """Collect the deployment's history from ``chain`` and check it with the published reports
    found under ``reports`` (directories or files)."""
    options = options or AuditOptions()
    record = collect(chain, deployment, from_epoch=options.from_epoch)
    published, problems = load_published_reports(reports)
    return check(record, published, options, problems)


def check(record: ChainRecord, published: Sequence[PublishedReport], options: AuditOptions | None = None,
          load_findings: Sequence[Finding] = ()) -> AuditReport:
    """Every check of the module docstring over ``record``; pure."""
    options = options or AuditOptions()
    findings: list[Finding] = list(load_findings)
    if to_checksum_address(record.oracle_registry) != to_checksum_address(record.deployment.oracle_registry):
        findings.append(Finding(Check.DEPLOYMENT, f"the escrow consults oracle registry {record.oracle_registry}, "
                                f"the deployment record names {record.deployment.oracle_registry}"))
    signed, report_findings = _check_reports(record)
    findings += report_findings
    proven, payout_findings = _check_payouts(record)
    findings += payout_findings
    accounts, ledger_findings = _replay_jobs(record)
    findings += ledger_findings
    findings += _check_state(record, accounts)
    balances = _balances(record, accounts)
    if options.job_id is None:
        findings += [Finding(Check.ESCROW_BALANCE, f"the escrow holds {b.balance} of token {b.token}, its jobs "
                             f"{b.held}: {b.balance - b.held:+d} unaccounted") for b in balances if b.balance != b.held]
    published_findings, report_status, amounts_checked = _check_published(record, published, options, signed, proven)
    findings += published_findings

    if options.job_id is not None:
        findings = [f for f in findings if f.job_id in (None, options.job_id)]
    rows = tuple(replace(row, payouts=len(proven.get(row.epoch, ())), report=report_status.get(row.epoch, row.report))
                 for row in signed.values() if row.epoch >= options.from_epoch)
    jobs = tuple(a for a in accounts.values() if options.job_id in (None, a.job_id))
    not_verified = [] if amounts_checked else [AMOUNTS_NOT_VERIFIED]
    if options.job_id is not None:
        not_verified.append("escrow token balance (it covers every job; --job audits one)")
    return AuditReport(chain_id=record.chain_id, escrow=record.deployment.job_escrow, from_block=record.from_block,
                       to_block=record.to_block, options=options, epochs=rows, jobs=jobs, balances=balances,
                       findings=tuple(findings), not_verified=tuple(not_verified))


def check_signatures(epoch: int, root: bytes, totals_hash_: bytes, signatures: Sequence[bytes], *,
                     domain: dict[str, Any], oracles: frozenset[str], threshold: int,
                     block: int) -> tuple[tuple[str, ...], list[Finding]]:
    """The report's valid, distinct, registered signers (``oracles`` as of ``block``) and what is
    wrong with the others; a quorum needs ``threshold``. As OracleRegistry.verifyQuorum, any bad
    signature is a finding even if enough good ones remain: the contract would have refused it."""
    message = epoch_report(domain, epoch, root, totals_hash_)
    signers: list[str] = []
    findings: list[Finding] = []
    for i, signature in enumerate(signatures):
        problem = _malformed(signature)
        signer = ""
        if problem is None:
            try:
                signer = to_checksum_address(recover(message, signature))
            except Exception as exc:  # eth_keys' BadSignature, ValueError
                problem = f"does not recover: {exc}"
        if problem is not None:
            findings.append(Finding(Check.SIGNATURE_INVALID, f"signature {i}: {problem}", epoch=epoch))
        elif signer not in oracles:
            findings.append(Finding(Check.SIGNER_NOT_REGISTERED, f"signature {i} is by {signer}, not a registered "
                                    f"oracle at block {block}", epoch=epoch))
        elif signer in signers:
            findings.append(Finding(Check.SIGNER_DUPLICATE, f"signature {i}: {signer} signed twice", epoch=epoch))
        else:
            signers.append(signer)
    if len(signers) < threshold:
        findings.append(Finding(Check.QUORUM_NOT_REACHED, f"{len(signers)} valid distinct oracle signatures, the "
                                f"threshold at block {block} was {threshold}", epoch=epoch))
    return tuple(signers), findings


def _malformed(signature: bytes) -> str | None:
    if len(signature) != 65:
        return f"{len(signature)} bytes, not 65"
    if signature[64] not in (27, 28):
        return f"v is {signature[64]}, not 27 or 28"
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if r == 0 or s == 0:
        return "r or s is zero"
    if s > SECP256K1_HALF_N:
        return "s is in the upper half of the curve order (a malleable twin)"
    return None


def _check_reports(record: ChainRecord) -> tuple[dict[int, EpochRow], list[Finding]]:
    """Every EpochSettled against its calldata, the oracle set of its block and its allocations."""
    registry = list(record.registry_events)
    oracles: set[str] = set()
    threshold = 0
    applied = 0
    by_tx: dict[str, list[ChainEvent]] = defaultdict(list)
    for e in record.escrow_events:
        by_tx[e.tx_hash].append(e)
    rows: dict[int, EpochRow] = {}
    findings: list[Finding] = []
    for settled in (e for e in record.escrow_events if e.name == "EpochSettled"):
        while applied < len(registry) and registry[applied].at < settled.at:
            change = registry[applied]
            applied += 1
            if change.name == "OracleAdded":
                oracles.add(to_checksum_address(change.args["oracle"]))
            elif change.name == "OracleRemoved":
                oracles.discard(to_checksum_address(change.args["oracle"]))
            else:
                threshold = int(change.args["current"])
        epoch, root, thash = int(settled.args["epoch"]), bytes(settled.args["root"]), bytes(settled.args["totalsHash"])
        row = EpochRow(epoch, settled.at.block, settled.tx_hash, root, thash, (), threshold,
                       tuple(sorted(oracles)), 0, 0, "not checked")
        rows[epoch] = row
        if epoch < record.from_epoch:
            continue
        if record.roots.get(epoch) != root:
            on_chain = record.roots.get(epoch, b"")
            findings.append(Finding(Check.ROOT_ON_CHAIN, f"rootOf is 0x{on_chain.hex()}, EpochSettled announced "
                                    f"0x{root.hex()}", epoch=epoch))
        call = record.report_calls.get(settled.tx_hash)
        if call is None:
            why = record.undecodable.get(settled.tx_hash, f"no calldata read for {settled.tx_hash}")
            findings.append(Finding(Check.REPORT_CALLDATA, f"{why}; signatures not verified", epoch=epoch))
            continue
        if (call.epoch, call.root) != (epoch, root):
            findings.append(Finding(Check.REPORT_CALLDATA, f"calldata is for epoch {call.epoch} root "
                                    f"0x{call.root.hex()}, the event for epoch {epoch} root 0x{root.hex()}",
                                    epoch=epoch))
        if totals_hash(call.totals) != thash:
            findings.append(Finding(Check.TOTALS_HASH, f"calldata totals hash to 0x{totals_hash(call.totals).hex()}, "
                                    f"the event says 0x{thash.hex()}", epoch=epoch))
        if int(settled.args["signers"]) != len(call.signatures):
            findings.append(Finding(Check.SIGNER_COUNT, f"the event counts {settled.args['signers']} signers, the "
                                    f"calldata carries {len(call.signatures)} signatures", epoch=epoch))
        signers, sig_findings = check_signatures(epoch, root, thash, call.signatures, domain=record.domain,
                                                 oracles=frozenset(oracles), threshold=threshold,
                                                 block=settled.at.block)
        findings += sig_findings
        findings += _check_allocations(epoch, call.totals, by_tx[settled.tx_hash])
        rows[epoch] = replace(row, signers=signers, jobs=len(call.totals))
    return rows, findings


def _check_allocations(epoch: int, totals: Sequence[JobTotals], events: Sequence[ChainEvent]) -> list[Finding]:
    """Each signed totals entry became exactly one JobAllocated with its amounts, or was skipped."""
    findings: list[Finding] = []
    emitted = {int(e.args["jobId"]): e for e in events if e.name in ("JobAllocated", "JobAllocationSkipped")}
    for t in totals:
        e = emitted.pop(t.job_id, None)
        if e is None:
            findings.append(Finding(Check.ALLOCATION, "signed totals were neither allocated nor skipped",
                                    t.job_id, epoch))
        elif e.name == "JobAllocated" and (e.args["release"], e.args["refund"], e.args["burn"]) != (
                t.release, t.refund, t.burn):
            findings.append(Finding(Check.ALLOCATION, f"allocated {e.args['release']}/{e.args['refund']}/"
                                    f"{e.args['burn']}, signed {t.release}/{t.refund}/{t.burn} (release/refund/burn)",
                                    t.job_id, epoch))
    findings += [Finding(Check.ALLOCATION, f"{e.name} for a job the signed totals do not name", job_id, epoch)
                 for job_id, e in emitted.items()]
    return findings


def _check_payouts(record: ChainRecord) -> tuple[dict[int, list[PayLeaf]], list[Finding]]:
    """Every Claimed/Forfeited against its calldata claim: proof, epoch, amount. Returns the leaves
    proven per epoch (for the published reports)."""
    roots: dict[int, tuple[bytes, Position]] = {}
    paid: dict[tuple[int, int], int] = defaultdict(int)
    proven: dict[int, list[PayLeaf]] = defaultdict(list)
    findings: list[Finding] = []
    seen: dict[str, int] = defaultdict(int)  # payout events of each transaction so far
    for e in record.escrow_events:
        if e.name == "EpochSettled":
            roots[int(e.args["epoch"])] = (bytes(e.args["root"]), e.at)
            continue
        if e.name not in ("Claimed", "Forfeited"):
            continue
        job_id, license_id, amount = int(e.args["jobId"]), int(e.args["licenseId"]), int(e.args["amount"])
        previous = paid[(job_id, license_id)]
        paid[(job_id, license_id)] = previous + amount
        index = seen[e.tx_hash]
        seen[e.tx_hash] += 1
        call = record.payout_calls.get(e.tx_hash)
        if call is None:
            why = record.undecodable.get(e.tx_hash)
            if why is not None and index == 0:
                findings.append(Finding(Check.CLAIM_CALLDATA, f"{why}; proofs not verified", job_id))
            continue  # no calldata: before the audited epochs (--from-epoch), or reported just above
        expected = "claim" if e.name == "Claimed" else "forfeit"
        if call.function != expected or index >= len(call.claims):
            findings.append(Finding(Check.CLAIM_CALLDATA, f"{e.name} number {index} of {e.tx_hash} has no claim in "
                                    f"its {call.function} calldata ({len(call.claims)} claims)", job_id))
            continue
        c = call.claims[index]
        if (c.job_id, c.license_id) != (job_id, license_id):
            findings.append(Finding(Check.CLAIM_CALLDATA, f"{e.name} for license {license_id}, the calldata claims "
                                    f"job {c.job_id} license {c.license_id}", job_id, c.epoch))
            continue
        settled = roots.get(c.epoch)
        if settled is None or settled[1] > e.at:
            findings.append(Finding(Check.CLAIM_EPOCH, f"license {license_id} claimed against epoch {c.epoch}, not "
                                    f"settled before block {e.at.block}", job_id, c.epoch))
        elif not verify(c.proof, settled[0], release_leaf(c.job_id, c.license_id, c.cumulative)):
            findings.append(Finding(Check.CLAIM_PROOF, f"license {license_id} cumulative {c.cumulative}: the proof "
                                    f"does not prove the leaf against root 0x{settled[0].hex()}", job_id, c.epoch))
        else:
            proven[c.epoch].append(PayLeaf(job_id, license_id, c.cumulative))
        if c.cumulative - previous != amount:
            findings.append(Finding(Check.CLAIM_AMOUNT, f"license {license_id} was paid {amount}; cumulative "
                                    f"{c.cumulative} - {previous} paid before = {c.cumulative - previous}",
                                    job_id, c.epoch))
    return proven, findings


def _replay_jobs(record: ChainRecord) -> tuple[dict[int, JobAccount], list[Finding]]:
    """Each job's accounts from its events in chain order, each amount checked against its rule."""
    accounts: dict[int, JobAccount] = {}
    findings: list[Finding] = []
    for e in record.escrow_events:
        if "jobId" not in e.args:
            continue
        job_id = int(e.args["jobId"])
        account, problems = apply_event(accounts.get(job_id), e)
        if account is not None:
            accounts[job_id] = account
        epoch = e.args.get("epoch")
        findings += [Finding(Check.LEDGER, p, job_id, None if epoch is None else int(epoch)) for p in problems]
    return accounts, findings


def apply_event(account: JobAccount | None, e: ChainEvent) -> tuple[JobAccount | None, list[str]]:
    """``account`` after event ``e``, and every rule the event's amounts break (JobEscrow's rules,
    re-derived: the contract enforces them, the audit does not take that on trust)."""
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
        new = replace(account, reclaimed=account.reclaimed + int(a["reclaimed"]), status=JobStatus.CLOSED)
    elif e.name == "JobAllocated":
        alloc = Allocation(int(a["epoch"]), int(a["release"]), int(a["refund"]), int(a["burn"]))
        if (alloc.release < account.alloc_release or alloc.refund < account.alloc_refund
                or alloc.burn < account.alloc_burn):
            problems.append(f"{where}: a cumulative total decreased")
        new = replace(account, alloc_release=alloc.release, alloc_refund=alloc.refund, alloc_burn=alloc.burn,
                      allocations=(*account.allocations, alloc))
    elif e.name == "JobAllocationSkipped":
        if account.status is JobStatus.ACTIVE:
            problems.append(f"{where}: skipped while the job is active")
        new = replace(account, allocations=(*account.allocations, Allocation(int(a["epoch"]), account.alloc_release,
                                                                              account.alloc_refund, account.alloc_burn,
                                                                              skipped=True)))
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


def _check_state(record: ChainRecord, accounts: Mapping[int, JobAccount]) -> list[Finding]:
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
                 "burned": (acc.burned, job.burned)}
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


def _balances(record: ChainRecord, accounts: Mapping[int, JobAccount]) -> tuple[TokenBalance, ...]:
    held: dict[str, int] = defaultdict(int)
    for acc in accounts.values():
        held[acc.token] += acc.held
    tokens = sorted(set(held) | set(record.balances))
    return tuple(TokenBalance(t, record.balances.get(t, 0), held.get(t, 0)) for t in tokens)


def _check_published(record: ChainRecord, published: Sequence[PublishedReport], options: AuditOptions,
                     signed: Mapping[int, EpochRow], proven: Mapping[int, Sequence[PayLeaf]],
                     ) -> tuple[list[Finding], dict[int, str], bool]:
    """Published reports against the chain; (findings, report status per epoch, amounts verified)."""
    by_epoch: dict[int, list[PublishedReport]] = defaultdict(list)
    for report in published:
        by_epoch[report.epoch].append(report)
    calls = {c.epoch: c for c in record.report_calls.values()}
    findings: list[Finding] = []
    status: dict[int, str] = {}
    amounts_checked = True
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
            findings += _check_one_report(report, row, calls.get(epoch), proven.get(epoch, ()))
            amounts = verify_report_amounts(report, previous, domain=record.domain, oracles=frozenset(row.oracles),
                                            threshold=row.threshold)
            if amounts is None:
                amounts_checked = False
            else:
                findings += amounts
        status[epoch] = "ok" if len(findings) == before else "mismatch"
    for epoch, reports in sorted(by_epoch.items()):
        if epoch not in signed and epoch >= options.from_epoch:
            findings.append(Finding(Check.REPORT_UNSETTLED, f"{reports[0].source}: no report for this epoch landed on "
                                    f"chain up to block {record.to_block}", epoch=epoch, warning=True))
    return findings, status, amounts_checked


def _check_one_report(report: PublishedReport, row: EpochRow, call: ReportCall | None,
                      proven: Sequence[PayLeaf]) -> list[Finding]:
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
    totals = tuple(sorted(report.totals, key=lambda t: t.job_id))
    if report.totals_hash not in (None, row.totals_hash):
        findings.append(Finding(Check.REPORT_TOTALS, f"{src}: states totals hash 0x{report.totals_hash.hex()}, "
                                f"signed 0x{row.totals_hash.hex()}", epoch=epoch))
    if totals_hash(totals) != row.totals_hash:
        named = _totals_differences(totals, call.totals if call else None)
        findings += [Finding(Check.REPORT_TOTALS, f"{src}: {detail}", job_id, epoch) for job_id, detail in named]
    for leaf in proven:
        if pay.get((leaf.job_id, leaf.license_id)) != leaf.cumulative:
            findings.append(Finding(Check.REPORT_PAY, f"{src}: license {leaf.license_id} pay "
                                    f"{pay.get((leaf.job_id, leaf.license_id))}, a claim proved {leaf.cumulative} "
                                    f"against the chain root", leaf.job_id, epoch))
    for t in totals:
        leaves = sum(c for (job_id, _), c in pay.items() if job_id == t.job_id)
        if leaves != t.release:
            findings.append(Finding(Check.REPORT_PAY, f"{src}: pay leaves add up to {leaves}, the job's release "
                                    f"total is {t.release}", t.job_id, epoch))
    return findings


def _totals_differences(published: Sequence[JobTotals], signed: Sequence[JobTotals] | None,
                        ) -> list[tuple[int | None, str]]:
    """Which jobs' totals differ from the signed ones, or one epoch-wide line without the calldata."""
    if signed is None:
        return [(None, "its totals do not hash to the signed totals hash (calldata unavailable to name the job)")]
    mine, theirs = {t.job_id: t for t in published}, {t.job_id: t for t in signed}
    out: list[tuple[int | None, str]] = []
    for job_id in sorted(set(mine) | set(theirs)):
        a, b = mine.get(job_id), theirs.get(job_id)
        if a != b:
            out.append((job_id, f"totals {_totals_text(a)}, signed {_totals_text(b)} (release/refund/burn)"))
    return out or [(None, "its totals hash differs from the signed one")]


def _totals_text(t: JobTotals | None) -> str:
    return "none" if t is None else f"{t.release}/{t.refund}/{t.burn}"
