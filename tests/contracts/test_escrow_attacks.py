"""Attacks on JobEscrow: each must revert with its named error and move nothing.

"Nothing" is checked on a ``Ledger``: token balances of the escrow, both CSPs, the license owners
the attacks involve, the outsider and the burn address; every job's accounts; the claimed amounts;
the report cursor and settable roots; and the governance settings, all read before and after.
Epochs are relative to the current one (the embedded chain's clock follows wall time after a
snapshot revert, so a test late in a session does not start at epoch 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from contracts import (
    BURN_ADDRESS,
    Claim,
    CspStatus,
    Epoch,
    Job,
    JobId,
    JobTotals,
    LicenseId,
    LicenseStatus,
    MerkleTree,
    TokenClient,
    TokenUnits,
    TotalsProof,
    csp_admission,
    epoch_report,
    escrow_domain,
    recover,
    release_leaf,
    reverts,
    sign,
    totals_proofs,
    totals_root,
)

from .world import GRACE_EPOCHS, PRICE, World, key

DEPOSIT = PRICE * 2 * 3  # the default new_job: 2 replicas x 3 epochs
BURN = to_checksum_address(BURN_ADDRESS)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
KYC = b"\x11" * 32


# ---------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Ledger:
    """Everything an attack could move, read from the chain."""

    balances: dict[tuple[str, str], int]
    jobs: list[Job]
    settled_until: list[int]
    claimed: dict[tuple[int, int], int]
    next_epoch: int
    roots: list[bytes]
    totals_roots: list[bytes]
    governance: tuple[object, ...]


def ledger(world: World, *tokens: TokenClient) -> Ledger:
    escrow = world.escrow
    # the escrow's balance catches any outflow; the others show who would have received it
    accounts = [escrow.address, world.csp, world.csp2, world.outsider, BURN, *world.owners[:3]]
    last, next_epoch = escrow.last_job_id(), escrow.next_epoch()
    gov = keccak(text="GOVERNANCE_ROLE")
    return Ledger(
        balances={(t.address, a): t.balance_of(a) for t in (world.token, *tokens) for a in accounts},
        jobs=[escrow.get_job(j) for j in range(1, last + 2)],  # one past the last: no job was created
        settled_until=[escrow.settled_until(j) for j in range(1, last + 1)],
        # the licenses the attacks use; any other payout would still show in balances and jobs
        claimed={(j, lic): escrow.claimed_of(j, lic) for j in range(1, last + 1) for lic in world.license_ids[:3]},
        next_epoch=next_epoch,
        roots=[escrow.root_of(e) for e in range(next_epoch, escrow.current_epoch())],  # the ones a report could set
        totals_roots=[escrow.totals_root_of(e) for e in range(next_epoch, escrow.current_epoch())],
        governance=(escrow.attester(), escrow.is_token_allowed(world.outsider), escrow.csp_status(world.csp),
                    escrow.admitted_until(world.csp2), escrow.has_role(gov, world.outsider),
                    escrow.has_role(gov, world.admin)),
    )


@dataclass(frozen=True)
class Settled:
    """A default job whose first epoch is reported (lic0 earned PRICE, lic1 PRICE // 2) and whose
    second epoch (``nxt``) is over but not reported. Epochs are relative: a test may start at any."""

    job: JobId
    epoch: int
    tree: MerkleTree
    totals: list[JobTotals]

    @property
    def nxt(self) -> int:
        return self.epoch + 1


def settled(world: World) -> Settled:
    job = world.new_job()
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start + 2)  # its first two epochs are over
    lic = world.license_ids
    totals = [JobTotals(job, TokenUnits(PRICE + PRICE // 2), TokenUnits(PRICE // 4), TokenUnits(0))]
    tree = world.post_report(start, {(job, lic[0]): PRICE, (job, lic[1]): PRICE // 2}, totals)
    return Settled(job, start, tree, totals)


def next_report(world: World, s: Settled) -> tuple[list[JobTotals], bytes, bytes, list[bytes]]:
    """An honest, unposted report for epoch ``s.nxt``: (totals, root, totals root, signatures)."""
    lic = world.license_ids
    totals = [JobTotals(s.job, TokenUnits(3 * PRICE), TokenUnits(PRICE // 2), TokenUnits(0))]
    _, root, sigs = world.signed_report(s.nxt, {(s.job, lic[0]): 2 * PRICE, (s.job, lic[1]): PRICE}, totals)
    return totals, root, totals_root(totals), sigs


def recovered_by_escrow(world: World, epoch: int, root: bytes, th: bytes, signature: bytes) -> str:
    """The address the escrow's ecrecover sees for ``signature`` over the report it was given."""
    return recover(epoch_report(world.escrow.domain(), epoch, root, th), signature)


@pytest.fixture(autouse=True)
def _epoch_start(world: World) -> None:
    """Start 1 s into a fresh epoch, so that a test's few transactions never straddle an epoch boundary."""
    world.advance_to_epoch(world.escrow.current_epoch() + 1)


# ---------------------------------------------------------------------------------------- the ledger itself


def test_ledger_sees_every_kind_of_move(world: World) -> None:
    # the "moves nothing" checks below are only as good as the ledger: each change must show in it
    s = settled(world)
    snapshots = [ledger(world)]
    world.escrow.claim([world.claim_of(s.tree, s.epoch, s.job, world.license_ids[0], PRICE)], sender=world.outsider)
    snapshots.append(ledger(world))
    totals, root, th, sigs = next_report(world, s)
    world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    snapshots.append(ledger(world))
    world.apply(s.nxt, totals)
    snapshots.append(ledger(world))
    world.escrow.set_token_allowed(world.outsider, True, sender=world.admin)
    snapshots.append(ledger(world))
    world.new_job()
    snapshots.append(ledger(world))
    a, b, c, d, e, f = snapshots
    assert (a.balances != b.balances, a.claimed != b.claimed, a.jobs != b.jobs) == (True, True, True)
    assert (b.next_epoch != c.next_epoch, b.roots != c.roots, b.totals_roots != c.totals_roots) == (True, True, True)
    assert b.jobs == c.jobs  # a report touches no job
    assert (c.jobs != d.jobs, c.settled_until != d.settled_until) == (True, True)
    assert d.governance != e.governance
    assert (e.jobs != f.jobs, e.balances != f.balances) == (True, True)
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- report signatures


@pytest.mark.parametrize("genuine", [2, 3])
def test_forged_signature_rejected(world: World, genuine: int) -> None:
    # two genuine + a forger, or a full quorum with a forged extra riding along
    s = settled(world)
    totals = next_report(world, s)[0]
    forger = key(300)
    lic = world.license_ids
    _, root, sigs = world.signed_report(s.nxt, {(s.job, lic[0]): 2 * PRICE, (s.job, lic[1]): PRICE}, totals,
                                        signers=[*world.oracle_keys[:genuine], forger])
    before = ledger(world)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.escrow.submit_report(s.nxt, root, totals_root(totals), sigs, sender=world.outsider)
    assert err.value.args_by_name == {"account": forger.address}
    assert ledger(world) == before
    world.assert_conserved()


def test_duplicated_signature_rejected(world: World) -> None:
    s = settled(world)
    _, root, th, sigs = next_report(world, s)
    first = recovered_by_escrow(world, s.nxt, root, th, sigs[0])
    assert first in {k.address for k in world.oracle_keys}
    before = ledger(world)
    # two distinct oracles, one of them counted twice to fake a third
    with pytest.raises(reverts.OracleRegistryDuplicateSigner) as err:
        world.escrow.submit_report(s.nxt, root, th, [sigs[0], sigs[1], sigs[0]], sender=world.outsider)
    assert err.value.args_by_name == {"oracle": first}
    assert ledger(world) == before
    world.assert_conserved()


@pytest.mark.parametrize("count", [0, 2])
def test_too_few_signatures_rejected(world: World, count: int) -> None:
    s = settled(world)
    _, root, th, sigs = next_report(world, s)
    before = ledger(world)
    with pytest.raises(reverts.OracleRegistryQuorumNotReached) as err:
        world.escrow.submit_report(s.nxt, root, th, sigs[:count], sender=world.outsider)
    assert err.value.args_by_name == {"signers": count, "threshold": 3}
    assert ledger(world) == before
    world.assert_conserved()


@pytest.mark.parametrize("other", ["chain id", "verifying contract"])
def test_signature_for_another_domain_rejected(world: World, other: str) -> None:
    s = settled(world)
    totals, root, th, _ = next_report(world, s)
    chain_id, escrow = world.chain.chain_id, world.escrow.address
    domain = (escrow_domain(chain_id + 1, escrow) if other == "chain id"
              else escrow_domain(chain_id, world.licenses.address))
    lic = world.license_ids
    _, root, sigs = world.signed_report(s.nxt, {(s.job, lic[0]): 2 * PRICE, (s.job, lic[1]): PRICE}, totals,
                                        domain=domain)
    # under this escrow's domain the signature recovers to some unrelated address
    stranger = recovered_by_escrow(world, s.nxt, root, th, sigs[0])
    assert stranger not in {k.address for k in world.oracle_keys}
    before = ledger(world)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    assert err.value.args_by_name == {"account": stranger}
    assert ledger(world) == before
    world.assert_conserved()


def test_high_s_signature_rejected(world: World) -> None:
    s = settled(world)
    _, root, th, sigs = next_report(world, s)
    r, s_value, v = sigs[2][:32], int.from_bytes(sigs[2][32:64], "big"), sigs[2][64]
    flipped = r + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    # the malleated signature is mathematically valid for the same oracle...
    signed = world.escrow.epoch_report_digest(s.nxt, root, th)
    sig = keys.Signature(vrs=(flipped[64] - 27, int.from_bytes(r, "big"), SECP256K1_N - s_value))
    assert sig.recover_public_key_from_msg_hash(signed).to_checksum_address() == recovered_by_escrow(
        world, s.nxt, root, th, sigs[2])
    # ...and still refused: only low-s signatures are accepted
    before = ledger(world)
    with pytest.raises(reverts.OracleRegistryInvalidSignature) as err:
        world.escrow.submit_report(s.nxt, root, th, [*sigs[:2], flipped], sender=world.outsider)
    assert err.value.args_by_name == {"index": 2}
    assert ledger(world) == before
    world.assert_conserved()


@pytest.mark.parametrize("tamper", ["totals", "root", "epoch"])
def test_tampered_report_rejected(world: World, tamper: str) -> None:
    s = settled(world)
    totals, root, th, sigs = next_report(world, s)
    world.advance_to_epoch(s.nxt + 2)
    epoch = s.nxt
    if tamper == "totals":  # the totals root swapped after signing: more node pay, still within the deposit
        totals = [JobTotals(s.job, TokenUnits(DEPOSIT - PRICE), totals[0].refund, totals[0].burn)]
    elif tamper == "root":  # a root whose only leaf pays another license everything
        root = MerkleTree([release_leaf(s.job, world.license_ids[2], 3 * PRICE)]).root
    else:
        epoch = s.nxt + 1
    # the escrow hashes what it was given, so the oracles' signatures recover to strangers
    stranger = recovered_by_escrow(world, epoch, root, totals_root(totals), sigs[0])
    assert stranger not in {k.address for k in world.oracle_keys}
    assert (th == totals_root(totals)) == (tamper != "totals")
    before = ledger(world)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.escrow.submit_report(epoch, root, totals_root(totals), sigs, sender=world.outsider)
    assert err.value.args_by_name == {"account": stranger}
    assert ledger(world) == before
    world.assert_conserved()


def test_replayed_report_rejected(world: World) -> None:
    s = settled(world)
    lic = world.license_ids
    old_totals = s.totals
    _, old_root, old_sigs = world.signed_report(s.epoch, {(s.job, lic[0]): PRICE, (s.job, lic[1]): PRICE // 2},
                                                old_totals)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowEpochNotAfterLast) as same:  # the same report again
        world.escrow.submit_report(s.epoch, old_root, totals_root(old_totals), old_sigs, sender=world.outsider)
    assert same.value.args_by_name == {"epoch": s.epoch, "nextEpoch": s.nxt}
    assert ledger(world) == before
    _, root, th, sigs = next_report(world, s)
    world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowEpochNotAfterLast) as old:  # an old root after a newer one
        world.escrow.submit_report(s.epoch, old_root, totals_root(old_totals), old_sigs, sender=world.outsider)
    assert old.value.args_by_name == {"epoch": s.epoch, "nextEpoch": s.nxt + 1}
    assert ledger(world) == before
    assert world.escrow.root_of(s.nxt) == root
    world.assert_conserved()


def test_totals_paying_more_than_deposit_never_apply(world: World) -> None:
    s = settled(world)
    other = world.new_job(replicas=1, epochs=1, start_epoch=s.nxt + 1)
    lic = world.license_ids
    # a quorum signs it, and the report lands (it touches no job), but one job's totals exceed its
    # deposit: they can never be applied, alone or in a batch, directly or before a claim
    totals = [JobTotals(s.job, TokenUnits(DEPOSIT), TokenUnits(PRICE // 4), TokenUnits(0)),
              JobTotals(other, TokenUnits(0), TokenUnits(1), TokenUnits(0))]
    tree = world.post_report(s.nxt, {(s.job, lic[0]): DEPOSIT}, totals, apply=False)
    claim = world.claim_of(tree, s.nxt, s.job, lic[0], DEPOSIT)
    before = ledger(world)
    attempts = {
        "alone": lambda: world.apply(s.nxt, totals, [s.job]),
        "batch": lambda: world.apply(s.nxt, totals, [other, s.job]),
        "before a claim": lambda: world.escrow.claim([claim], sender=world.owners[0],
                                                     totals=totals_proofs(s.nxt, totals, [s.job])),
    }
    for label, attempt in attempts.items():
        with pytest.raises(reverts.JobEscrowExceedsDeposit) as err:
            attempt()
        assert err.value.args_by_name == {"jobId": s.job, "allocated": DEPOSIT + PRICE // 4,
                                          "available": DEPOSIT}, label
    with pytest.raises(reverts.JobEscrowExceedsAllocation):  # the leaf pays nothing beyond the applied totals
        world.escrow.claim([claim], sender=world.owners[0])
    assert ledger(world) == before
    world.apply(s.nxt, totals, [other])  # the other job's totals in the same report are fine
    assert world.escrow.get_job(other).alloc_refund == 1
    world.assert_conserved()


def test_old_totals_cannot_roll_back_allocations(world: World) -> None:
    # anyone may apply totals: replaying an older report's (lower) totals changes nothing
    s = settled(world)
    totals, root, th, sigs = next_report(world, s)
    world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    world.apply(s.nxt, totals)
    before = ledger(world)
    for sender in (world.csp, world.outsider):
        receipt = world.escrow.apply_totals(totals_proofs(s.epoch, s.totals), sender=sender)
        assert world.escrow.events(receipt) == []
    assert ledger(world) == before
    # nor can an older proof be passed off as the newer epoch's
    [old] = totals_proofs(s.epoch, s.totals)
    with pytest.raises(reverts.JobEscrowInvalidTotalsProof) as err:
        world.escrow.apply_totals([TotalsProof(old.totals, Epoch(s.nxt), old.proof)], sender=world.csp)
    assert err.value.args_by_name == {"jobId": s.job, "epoch": s.nxt}
    assert ledger(world) == before
    world.assert_conserved()


def test_close_on_old_totals_rejected(world: World) -> None:
    # the CSP (or anyone) closing on the first report's totals would take back pay that the newer
    # report assigned: refused until the newest covering totals are applied
    s = settled(world)
    totals, root, th, sigs = next_report(world, s)
    world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    world.advance_to_epoch(s.epoch + 3 + GRACE_EPOCHS)
    before = ledger(world)
    for attempt in (lambda: world.escrow.close_job(s.job, sender=world.csp),
                    lambda: world.escrow.close_job(s.job, sender=world.csp,
                                                   totals=totals_proofs(s.epoch, s.totals))):
        with pytest.raises(reverts.JobEscrowTotalsNotApplied) as err:
            attempt()
        assert err.value.args_by_name == {"jobId": s.job, "settledUntil": s.nxt, "needed": s.nxt + 1}
    assert ledger(world) == before
    world.escrow.close_job(s.job, sender=world.csp, totals=totals_proofs(s.nxt, totals))
    state = world.escrow.get_job(s.job)
    assert (state.alloc_release, state.reclaimed) == (3 * PRICE, DEPOSIT - 3 * PRICE - PRICE // 2)
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- claims


def test_double_claim_rejected(world: World) -> None:
    s = settled(world)
    lic = world.license_ids[0]
    claim = world.claim_of(s.tree, s.epoch, s.job, lic, PRICE)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowNothingToClaim) as twice:  # twice in one call: nothing is paid
        world.escrow.claim([claim, claim], sender=world.outsider)
    assert twice.value.args_by_name == {"jobId": s.job, "licenseId": lic}
    assert ledger(world) == before
    world.escrow.claim([claim], sender=world.outsider)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowNothingToClaim) as again:
        world.escrow.claim([claim], sender=world.owners[0])
    assert again.value.args_by_name == {"jobId": s.job, "licenseId": lic}
    assert ledger(world) == before
    world.assert_conserved()


def test_claim_with_foreign_proof_rejected(world: World) -> None:
    s = settled(world)
    lic = world.license_ids
    genuine = world.claim_of(s.tree, s.epoch, s.job, lic[0], PRICE)
    other = world.new_job(start_epoch=s.nxt + 1)
    forged = {
        "another job": Claim(other, genuine.license_id, genuine.epoch, genuine.cumulative, genuine.proof),
        "another license": Claim(s.job, LicenseId(lic[2]), genuine.epoch, genuine.cumulative, genuine.proof),
        "more than granted": Claim(s.job, genuine.license_id, genuine.epoch, TokenUnits(PRICE + 1), genuine.proof),
        "empty proof": Claim(s.job, genuine.license_id, genuine.epoch, genuine.cumulative, ()),
    }
    before = ledger(world)
    for label, claim in forged.items():
        with pytest.raises(reverts.JobEscrowInvalidProof) as err:
            world.escrow.claim([claim], sender=world.outsider)
        assert err.value.args_by_name == {"jobId": claim.job_id, "licenseId": claim.license_id}, label
    assert ledger(world) == before
    # a genuine proof against the root of another epoch
    _, root, th, sigs = next_report(world, s)
    world.escrow.submit_report(s.nxt, root, th, sigs, sender=world.outsider)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowInvalidProof):
        world.escrow.claim([Claim(s.job, genuine.license_id, Epoch(s.nxt), genuine.cumulative, genuine.proof)],
                           sender=world.outsider)
    assert ledger(world) == before
    world.assert_conserved()


def test_leaves_beyond_release_total_rejected(world: World) -> None:
    # the oracles' leaves promise a license more than the job's signed node-pay total
    job = world.new_job()
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start + 1)
    lic = world.license_ids[0]
    tree = world.post_report(start, {(job, lic): DEPOSIT}, [JobTotals(job, PRICE, TokenUnits(0), TokenUnits(0))])
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowExceedsAllocation) as err:
        world.escrow.claim([world.claim_of(tree, start, job, lic, DEPOSIT)], sender=world.owners[0])
    assert err.value.args_by_name == {"jobId": job, "allocated": PRICE, "requested": DEPOSIT}
    assert ledger(world) == before
    world.assert_conserved()


def test_blacklisted_license_cannot_claim_or_be_sold(world: World) -> None:
    s = settled(world)
    lic = world.license_ids[0]
    world.licenses.set_status(lic, LicenseStatus.BLACKLISTED, sender=world.admin)
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowLicenseRestricted) as err:
        world.escrow.claim([world.claim_of(s.tree, s.epoch, s.job, lic, PRICE)], sender=world.owners[0])
    assert err.value.args_by_name == {"licenseId": lic, "status": LicenseStatus.BLACKLISTED}
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted):  # shedding the sanction by selling
        world.licenses.transfer(lic, world.outsider, sender=world.owners[0])
    assert ledger(world) == before
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- reentrancy


@dataclass(frozen=True)
class Reentrant:
    token: TokenClient
    contract: Any
    job: JobId  # past its close epoch, ``epoch`` reported: claimable, refundable, burnable, closable
    fresh: JobId  # not started: cancellable, and scalable over all its epochs
    tree: MerkleTree
    epoch: int
    newer: list[TotalsProof]  # the job's totals in the report of epoch + 1, landed and not applied


RE_PAY = {0: PRICE, 1: PRICE // 2}  # license index -> node pay of ``Reentrant.job``
RE_REFUND, RE_BURN, RE_MORE_BURN = PRICE, PRICE // 4, 7  # the newer report burns RE_MORE_BURN more


def reentrant_setup(world: World) -> Reentrant:
    contract, _ = world.chain.deploy("ReentrantToken", sender=world.admin)
    token = TokenClient(world.chain, contract.address)  # same ERC-20 surface as the stablecoin
    world.escrow.set_token_allowed(token.address, True, sender=world.admin)
    token.mint(world.csp, 10**12, sender=world.admin)
    token.approve(world.escrow.address, 2 * DEPOSIT, sender=world.csp)
    job = world.escrow.create_job(world.params(token=token.address), sender=world.csp)
    closable_from = world.escrow.get_job(job).start_epoch + 3 + GRACE_EPOCHS
    world.advance_to_epoch(closable_from + 1)
    lic = world.license_ids
    pay = {(job, lic[i]): amount for i, amount in RE_PAY.items()}
    totals = [JobTotals(job, TokenUnits(sum(RE_PAY.values())), TokenUnits(RE_REFUND), TokenUnits(RE_BURN))]
    tree = world.post_report(closable_from - 1, pay, totals)
    newer = [JobTotals(job, TokenUnits(sum(RE_PAY.values())), TokenUnits(RE_REFUND),
                       TokenUnits(RE_BURN + RE_MORE_BURN))]
    world.post_report(closable_from, pay, newer, apply=False)
    world.licenses.set_status(lic[1], LicenseStatus.BLACKLISTED, sender=world.admin)  # for forfeit
    fresh = world.escrow.create_job(world.params(token=token.address), sender=world.csp)
    return Reentrant(token, contract, job, fresh, tree, closable_from - 1, totals_proofs(closable_from, newer))


def encoded(world: World, fn: str, args: list[Any]) -> bytes:
    return bytes.fromhex(world.escrow.contract.encode_abi(fn, args=args).removeprefix("0x"))


def reentrant_calls(world: World, r: Reentrant) -> dict[str, tuple[str, list[Any], str, int]]:
    """Per escrow function (or multicall): (name, args, who receives, amount it pays out once)."""
    lic = world.license_ids
    c0 = world.claim_of(r.tree, r.epoch, r.job, lic[0], RE_PAY[0])
    c1 = world.claim_of(r.tree, r.epoch, r.job, lic[1], RE_PAY[1])
    remainder = DEPOSIT - sum(RE_PAY.values()) - RE_REFUND - RE_BURN
    apply = encoded(world, "applyTotals", [[p.as_abi() for p in r.newer]])
    return {
        "claim": ("claim", [[c0.as_abi()]], world.owners[0], RE_PAY[0]),
        "forfeit": ("forfeit", [[c1.as_abi()]], BURN, RE_PAY[1]),
        "takeRefund": ("takeRefund", [[r.job]], world.csp, RE_REFUND),
        "executeBurn": ("executeBurn", [[r.job]], BURN, RE_BURN),
        "cancelJob": ("cancelJob", [r.fresh], world.csp, DEPOSIT),
        "closeJob": ("closeJob", [r.job], world.csp, remainder),
        # a scale-down pays the CSP back 1 slot x 3 epochs (a scale-up only pulls: no payout to hook)
        "scaleJob": ("scaleJob", [r.fresh, 1, b"\x5c" * 32], world.csp, PRICE * 3),
        # the newer totals and a payout in one transaction, as the clients send them
        "multicall claim": ("multicall", [[apply, encoded(world, "claim", [[c0.as_abi()]])]], world.owners[0],
                            RE_PAY[0]),
        "multicall burn": ("multicall", [[apply, encoded(world, "executeBurn", [[r.job]])]], BURN,
                           RE_BURN + RE_MORE_BURN),
        "multicall close": ("multicall", [[apply, encoded(world, "closeJob", [r.job])]], world.csp,
                            remainder - RE_MORE_BURN),
    }


def assert_token_conserved(world: World, token: TokenClient) -> None:
    """assert_conserved checks only the stablecoin's balance; this checks the reentrant token's."""
    jobs = [world.escrow.get_job(j) for j in range(1, world.escrow.last_job_id() + 1)]
    assert token.balance_of(world.escrow.address) == sum(j.held for j in jobs if j.token == token.address)


@pytest.mark.parametrize(("outer", "inner"), [
    ("claim", "claim"), ("forfeit", "forfeit"), ("takeRefund", "takeRefund"), ("executeBurn", "executeBurn"),
    ("cancelJob", "cancelJob"), ("closeJob", "closeJob"),
    ("claim", "takeRefund"), ("takeRefund", "claim"), ("executeBurn", "forfeit"), ("cancelJob", "closeJob"),
    ("scaleJob", "scaleJob"), ("scaleJob", "cancelJob"), ("closeJob", "scaleJob"), ("claim", "scaleJob"),
    # through multicall, outside and inside: each call it makes is guarded on its own
    ("multicall claim", "claim"), ("multicall claim", "multicall claim"), ("claim", "multicall claim"),
    ("multicall burn", "multicall close"), ("multicall close", "takeRefund"), ("takeRefund", "multicall close"),
])
def test_reentrancy_through_token_rejected(world: World, outer: str, inner: str) -> None:
    r = reentrant_setup(world)
    calls = reentrant_calls(world, r)
    fn, args, payee, amount = calls[outer]
    inner_fn, inner_args, _, _ = calls[inner]
    functions = world.escrow.contract.functions
    # the token calls back into the escrow while the escrow pays someone
    world.chain.transact(r.contract.functions.arm(world.escrow.address, encoded(world, inner_fn, inner_args)),
                         world.admin)
    before = ledger(world, r.token)
    with pytest.raises(reverts.ReentrancyGuardReentrantCall) as err:
        world.chain.transact(getattr(functions, fn)(*args), world.csp)
    assert err.value.values == ()
    assert ledger(world, r.token) == before
    # disarmed, the same call pays exactly once
    world.chain.transact(r.contract.functions.arm(world.escrow.address, b""), world.admin)
    payee_before = r.token.balance_of(payee)
    world.chain.transact(getattr(functions, fn)(*args), world.csp)
    assert r.token.balance_of(payee) == payee_before + amount
    assert r.token.balance_of(world.escrow.address) == before.balances[(r.token.address, world.escrow.address)] - amount
    world.assert_conserved()
    assert_token_conserved(world, r.token)


def test_reentrant_apply_totals_during_a_payout_is_harmless(world: World) -> None:
    # applyTotals moves no money and is not guarded: reentered while the escrow pays the CSP's refund,
    # it only raises the allocations (within the deposit) after the refund was booked
    r = reentrant_setup(world)
    apply = encoded(world, "applyTotals", [[p.as_abi() for p in r.newer]])
    world.chain.transact(r.contract.functions.arm(world.escrow.address, apply), world.admin)
    csp_before = r.token.balance_of(world.csp)
    receipt = world.escrow.take_refund([r.job], sender=world.outsider)
    assert [e.name for e in world.escrow.events(receipt)] == ["RefundTaken", "JobAllocated"]
    assert r.token.balance_of(world.csp) == csp_before + RE_REFUND
    state = world.escrow.get_job(r.job)
    assert (state.refunded, state.alloc_burn, world.escrow.settled_until(r.job)) == (
        RE_REFUND, RE_BURN + RE_MORE_BURN, r.epoch + 2)
    world.assert_conserved()
    assert_token_conserved(world, r.token)


# ---------------------------------------------------------------------------------------- authority


@pytest.mark.parametrize(("fn", "role"), [
    ("setAttester", "GOVERNANCE_ROLE"), ("setTokenAllowed", "GOVERNANCE_ROLE"), ("setCspStatus", "GOVERNANCE_ROLE"),
    ("grantRole", "DEFAULT_ADMIN_ROLE"), ("revokeRole", "DEFAULT_ADMIN_ROLE"),
])
@pytest.mark.parametrize("who", ["outsider", "csp"])
def test_unauthorized_governance_rejected(world: World, fn: str, role: str, who: str) -> None:
    caller = getattr(world, who)
    gov = world.escrow.role("GOVERNANCE_ROLE")
    args: dict[str, list[Any]] = {
        "setAttester": [caller], "setTokenAllowed": [world.outsider, True],
        "setCspStatus": [world.csp, int(CspStatus.BLACKLISTED)],
        "grantRole": [gov, world.outsider], "revokeRole": [gov, world.admin],
    }
    before = ledger(world)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        world.chain.transact(getattr(world.escrow.contract.functions, fn)(*args[fn]), caller)
    assert err.value.args_by_name == {"account": caller, "neededRole": world.escrow.role(role)}
    assert ledger(world) == before


def test_stranger_cannot_manage_a_job(world: World) -> None:
    job = world.new_job()
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp2)  # only ownership stops the top-up
    before = ledger(world)
    attempts = {
        "topUp": lambda: world.escrow.top_up(job, 1, sender=world.csp2),
        "updateSpec": lambda: world.escrow.update_spec(job, b"\x66" * 32, sender=world.csp2),
        "cancelJob": lambda: world.escrow.cancel_job(job, sender=world.csp2),  # would refund to the CSP anyway
        "scaleJob up": lambda: world.escrow.scale_job(job, 3, b"\x66" * 32, sender=world.csp2),  # csp2 would pay
        "scaleJob down": lambda: world.escrow.scale_job(job, 1, b"\x66" * 32, sender=world.csp2),
    }
    for label, attempt in attempts.items():
        with pytest.raises(reverts.JobEscrowNotJobOwner) as err:
            attempt()
        assert err.value.args_by_name == {"jobId": job, "caller": world.csp2}, label
    assert ledger(world) == before
    world.assert_conserved()


@pytest.mark.parametrize("theft", ["other csp", "other escrow"])
def test_admission_cannot_be_borrowed(world: World, theft: str) -> None:
    # csp2 presents an attestation made for someone else, or for another escrow deployment
    if theft == "other csp":
        valid_until, nonce, sig = world.admission(world.csp)
    else:
        valid_until, nonce = world.chain.now() + 10**6, 9_999
        other = escrow_domain(world.chain.chain_id, world.licenses.address)
        sig = sign(csp_admission(other, world.csp2, KYC, valid_until, nonce), world.attester.key)
    seen = recover(csp_admission(world.escrow.domain(), world.csp2, KYC, valid_until, nonce), sig)
    assert seen != world.attester.address
    before = ledger(world)
    with pytest.raises(reverts.JobEscrowInvalidAttestation) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"signer": seen}
    assert ledger(world) == before
    assert not world.escrow.is_csp_admitted(world.csp2)
