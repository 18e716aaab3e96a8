"""The audit's checks of what landed on chain (``_audit``): each ``EpochSettled`` against its
``submitReport`` calldata (epoch, root, totals root) and the roots the escrow stored, its signatures
against the oracle registry as it was at that block; each claim and forfeit against its calldata
(``multicall`` unwrapped), its Merkle proof and the amount paid. (Applied totals: ``_audit_totals``.)
Pure over a ``ChainRecord``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from contracts import epoch_report, recover, release_leaf, to_checksum_address, verify

from ._audit_chain import ChainRecord, Position
from ._audit_findings import Check, Finding
from ._audit_published import PayLeaf

# OpenZeppelin's ECDSA rejects s above half the curve order (malleable twins of valid signatures).
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    block: int
    tx_hash: str
    root: bytes
    totals_root: bytes
    signers: tuple[str, ...]  # valid, distinct, registered at the block
    threshold: int  # in force at the block
    oracles: tuple[str, ...]  # registered at the block
    jobs: int | None  # totals rows of its published report (None: no report checked)
    applied: int  # JobAllocated events of this epoch's totals (applyTotals, any time later)
    payouts: int  # claims and forfeits proven against this epoch's root
    report: str  # published report: ok, mismatch, missing, or not checked (before --from-epoch)

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "block": self.block, "tx_hash": self.tx_hash, "root": "0x" + self.root.hex(),
                "totals_root": "0x" + self.totals_root.hex(), "signers": list(self.signers),
                "threshold": self.threshold, "oracles": list(self.oracles), "jobs": self.jobs,
                "applied": self.applied, "payouts": self.payouts, "report": self.report}


def check_signatures(epoch: int, root: bytes, totals_root_: bytes, signatures: Sequence[bytes], *,
                     domain: dict[str, Any], oracles: frozenset[str], threshold: int,
                     block: int) -> tuple[tuple[str, ...], list[Finding]]:
    """The report's valid, distinct, registered signers (``oracles`` as of ``block``) and what is
    wrong with the others; a quorum needs ``threshold``. As OracleRegistry.verifyQuorum, any bad
    signature is a finding even if enough good ones remain: the contract would have refused it."""
    message = epoch_report(domain, epoch, root, totals_root_)
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
    """Every EpochSettled against its calldata, the roots stored and the oracle set of its block."""
    registry = list(record.registry_events)
    oracles: set[str] = set()
    threshold = 0
    applied = 0
    seen: dict[str, int] = defaultdict(int)  # EpochSettled events of each transaction so far
    allocated: dict[int, int] = defaultdict(int)
    for e in record.escrow_events:
        if e.name == "JobAllocated":
            allocated[int(e.args["epoch"])] += 1
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
        index = seen[settled.tx_hash]
        seen[settled.tx_hash] += 1
        epoch, root = int(settled.args["epoch"]), bytes(settled.args["root"])
        troot = bytes(settled.args["totalsRoot"])
        row = EpochRow(epoch, settled.at.block, settled.tx_hash, root, troot, (), threshold,
                       tuple(sorted(oracles)), None, allocated[epoch], 0, "not checked")
        rows[epoch] = row
        if epoch < record.from_epoch:
            continue
        for what, stored, announced in (("rootOf", record.roots.get(epoch), root),
                                        ("totalsRootOf", record.totals_roots.get(epoch), troot)):
            if stored != announced:
                findings.append(Finding(Check.ROOT_ON_CHAIN, f"{what} is 0x{(stored or b'').hex()}, EpochSettled "
                                        f"announced 0x{announced.hex()}", epoch=epoch))
        calls = record.calls.get(settled.tx_hash)
        if calls is None:
            why = record.undecodable.get(settled.tx_hash, f"no calldata read for {settled.tx_hash}")
            findings.append(Finding(Check.REPORT_CALLDATA, f"{why}; signatures not verified", epoch=epoch))
            continue
        if index >= len(calls.reports):
            findings.append(Finding(Check.REPORT_CALLDATA, f"EpochSettled number {index} of {settled.tx_hash} has "
                                    f"no submitReport in its calldata ({', '.join(calls.functions)}); signatures "
                                    "not verified", epoch=epoch))
            continue
        call = calls.reports[index]
        if (call.epoch, call.root, call.totals_root) != (epoch, root, troot):
            findings.append(Finding(Check.REPORT_CALLDATA, f"calldata is for epoch {call.epoch} root "
                                    f"0x{call.root.hex()} totals root 0x{call.totals_root.hex()}, the event for "
                                    f"epoch {epoch} root 0x{root.hex()} totals root 0x{troot.hex()}", epoch=epoch))
        if int(settled.args["signers"]) != len(call.signatures):
            findings.append(Finding(Check.SIGNER_COUNT, f"the event counts {settled.args['signers']} signers, the "
                                    f"calldata carries {len(call.signatures)} signatures", epoch=epoch))
        signers, sig_findings = check_signatures(epoch, root, troot, call.signatures, domain=record.domain,
                                                 oracles=frozenset(oracles), threshold=threshold,
                                                 block=settled.at.block)
        findings += sig_findings
        rows[epoch] = replace(row, signers=signers)
    return rows, findings


def check_payouts(record: ChainRecord) -> tuple[dict[int, list[PayLeaf]], list[Finding]]:
    """Every Claimed/Forfeited against its calldata claim: proof, epoch, amount. Returns the leaves
    proven per epoch (for the published reports)."""
    roots: dict[int, tuple[bytes, Position]] = {}
    paid: dict[tuple[int, int], int] = defaultdict(int)
    proven: dict[int, list[PayLeaf]] = defaultdict(list)
    findings: list[Finding] = []
    seen: dict[tuple[str, str], int] = defaultdict(int)  # Claimed and Forfeited events of each transaction so far
    for e in record.escrow_events:
        if e.name == "EpochSettled":
            roots[int(e.args["epoch"])] = (bytes(e.args["root"]), e.at)
            continue
        if e.name not in ("Claimed", "Forfeited"):
            continue
        job_id, license_id, amount = int(e.args["jobId"]), int(e.args["licenseId"]), int(e.args["amount"])
        previous = paid[(job_id, license_id)]
        paid[(job_id, license_id)] = previous + amount
        index = seen[(e.tx_hash, e.name)]
        seen[(e.tx_hash, e.name)] += 1
        calls = record.calls.get(e.tx_hash)
        if calls is None:
            why = record.undecodable.get(e.tx_hash)
            if why is not None and index == 0:
                findings.append(Finding(Check.CLAIM_CALLDATA, f"{why}; proofs not verified", job_id))
            continue  # no calldata: before the audited epochs (--from-epoch), or reported just above
        function = "claim" if e.name == "Claimed" else "forfeit"
        claims = calls.claims_of(function)
        if index >= len(claims):
            findings.append(Finding(Check.CLAIM_CALLDATA, f"{e.name} number {index} of {e.tx_hash} has no claim in "
                                    f"its calldata ({len(claims)} in its {function} calls; it called "
                                    f"{', '.join(calls.functions)})", job_id))
            continue
        c = claims[index]
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
