"""The audit's checks of what landed on chain (``_audit``): each ``EpochSettled`` against its
``submitReport`` calldata, its signatures against the oracle registry as it was at that block, its
``JobAllocated``/``JobAllocationSkipped`` events against the signed totals; each claim and forfeit
against its calldata, its Merkle proof and the amount paid. Pure over a ``ChainRecord``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from contracts import JobTotals, epoch_report, recover, release_leaf, to_checksum_address, totals_hash

from ._audit_chain import ChainEvent, ChainRecord, Position
from ._audit_findings import Check, Finding
from ._audit_published import PayLeaf
from ._merkle import verify

# OpenZeppelin's ECDSA rejects s above half the curve order (malleable twins of valid signatures).
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


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


def check_reports(record: ChainRecord) -> tuple[dict[int, EpochRow], list[Finding]]:
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


def check_payouts(record: ChainRecord) -> tuple[dict[int, list[PayLeaf]], list[Finding]]:
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
