"""JobEscrow: every external function, custom error and event, checked by name and arguments.

Runs on both backends through the ``world`` fixture (reverted to a snapshot after each test). A
fresh world has ``csp`` admitted, ``csp2`` licensed and funded but not admitted, and ``outsider``
holding nothing; ``new_job`` defaults to 2 replicas x 3 epochs from the next epoch. Epochs are
always taken relative to the current one: after a snapshot revert the embedded chain's clock
follows wall time, so a test late in a long session does not start at epoch 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from eth_utils import keccak, to_checksum_address
from web3.types import TxReceipt

from contracts import (
    BURN_ADDRESS,
    Claim,
    ContractRevert,
    CspStatus,
    Epoch,
    Event,
    JobId,
    JobParams,
    JobStatus,
    JobTotals,
    LicenseStatus,
    MerkleTree,
    SettlementPolicy,
    TokenClient,
    TokenUnits,
    TotalsProof,
    csp_admission,
    digest,
    epoch_report,
    escrow_domain,
    job_submission,
    recover,
    release_leaf,
    reverts,
    sign,
    totals_leaf,
    totals_proofs,
    totals_root,
)

from .world import EPOCH_SECONDS, GRACE_EPOCHS, PRICE, World, key

KYC = b"\x11" * 32
ZERO32 = b"\x00" * 32
DEPOSIT = PRICE * 2 * 3  # the default new_job: 2 replicas x 3 epochs
BURN = to_checksum_address(BURN_ADDRESS)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# ---------------------------------------------------------------------------------------- helpers


def ev(world: World, name: str, **args: Any) -> Event:
    """The event the escrow should have emitted."""
    return Event(name, args, world.escrow.address)


def transfers(token: TokenClient, receipt: TxReceipt) -> list[tuple[str, str, int]]:
    """(from, to, value) of every Transfer ``token`` logged in ``receipt``."""
    return [(e.args["from"], e.args["to"], e.args["value"]) for e in token.events(receipt) if e.name == "Transfer"]


def create_raw(world: World, abi_params: tuple[object, ...], sender: str) -> TxReceipt:
    """createJob with a raw params tuple, bypassing the Python-side policy validation."""
    return world.chain.transact(world.escrow.contract.functions.createJob(abi_params), sender)


def raw_params(world: World, *, replicas: int = 2, epochs: int = 3, price: int = PRICE, threshold: int = 200,
               floor: int = 50, bps: int = 100, start: int | None = None) -> tuple[object, ...]:
    start_epoch = world.escrow.current_epoch() + 1 if start is None else start
    return (b"\x5e" * 32, world.token.address, replicas, epochs, start_epoch, price, threshold, floor, bps)


def one_job_totals(job: int, release: int, refund: int = 0, burn: int = 0) -> list[JobTotals]:
    return [JobTotals(JobId(job), TokenUnits(release), TokenUnits(refund), TokenUnits(burn))]


def report(world: World, epoch: int, job: int, pay: Mapping[int, int], refund: int = 0, burn: int = 0, *,
           apply: bool = True) -> tuple[MerkleTree, list[TotalsProof]]:
    """Post a quorum-signed report for one job (``pay`` maps license index -> cumulative node pay)
    and, with ``apply``, apply its totals: (tree, the job's totals proof)."""
    lic = world.license_ids
    leaves = {(job, lic[i]): amount for i, amount in pay.items()}
    totals = one_job_totals(job, sum(pay.values()), refund, burn)
    tree = world.post_report(epoch, leaves, totals, apply=apply)
    return tree, totals_proofs(epoch, totals)


def alloc(world: World, job: int) -> tuple[int, int, int, int]:
    """The job's applied totals and settledUntil: (release, refund, burn, settled until)."""
    j = world.escrow.get_job(job)
    return j.alloc_release, j.alloc_refund, j.alloc_burn, world.escrow.settled_until(job)


def settled_job(world: World, pay: Mapping[int, int], refund: int = 0, burn: int = 0,
                ) -> tuple[JobId, int, MerkleTree]:
    """A default job whose first epoch is over and reported: (job, reported epoch, tree)."""
    job = world.new_job()
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start + 1)
    tree, _ = report(world, start, job, pay, refund, burn)
    return job, start, tree


def csp_license(world: World, csp: str) -> int:
    """The license minted to ``csp`` when the world was built."""
    return next(e.args["licenseId"] for e in world.licenses.logs("LicenseMinted") if e.args["owner"] == csp)


@pytest.fixture(autouse=True)
def _epoch_start(world: World) -> None:
    """Start 1 s into a fresh epoch, so that a test's few transactions never straddle an epoch boundary."""
    world.advance_to_epoch(world.escrow.current_epoch() + 1)


# ---------------------------------------------------------------------------------------- admission


def test_admit_csp_admits_and_emits(world: World) -> None:
    assert not world.escrow.is_csp_admitted(world.csp2)
    assert world.escrow.admitted_until(world.csp2) == 0
    valid_until, nonce, sig = world.admission(world.csp2, kyc_ref=b"\x22" * 32)
    # anyone may submit the attester's statement
    receipt = world.escrow.admit_csp(world.csp2, b"\x22" * 32, valid_until, nonce, sig, sender=world.outsider)
    assert world.escrow.events(receipt) == [
        ev(world, "CspAdmitted", csp=world.csp2, kycRef=b"\x22" * 32, validUntil=valid_until, nonce=nonce)]
    assert world.escrow.is_csp_admitted(world.csp2)
    assert world.escrow.admitted_until(world.csp2) == valid_until


def test_admit_csp_rejects_other_signer(world: World) -> None:
    forger = key(300)
    valid_until, nonce, sig = world.admission(world.csp2, signer=forger)
    with pytest.raises(reverts.JobEscrowInvalidAttestation) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"signer": forger.address}
    assert not world.escrow.is_csp_admitted(world.csp2)


def test_admit_csp_rejects_expired(world: World) -> None:
    valid_until, nonce, sig = world.admission(world.csp2, valid_for_s=-1)
    with pytest.raises(reverts.JobEscrowAdmissionExpired) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"validUntil": valid_until}


def test_admit_csp_rejects_replayed_nonce(world: World) -> None:
    valid_until, nonce, sig = world.admission(world.csp2, valid_for_s=200)
    world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    # a replay of the same statement, e.g. to extend an admission the attester let lapse
    with pytest.raises(reverts.JobEscrowAdmissionReplayed) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"csp": world.csp2, "nonce": nonce}
    # a fresh statement reusing the nonce is a replay too
    later, _, sig2 = world.admission(world.csp2, valid_for_s=10**6, nonce=nonce)
    with pytest.raises(reverts.JobEscrowAdmissionReplayed):
        world.escrow.admit_csp(world.csp2, KYC, later, nonce, sig2, sender=world.csp2)
    assert world.escrow.admitted_until(world.csp2) == valid_until


def test_admit_csp_requires_a_license(world: World) -> None:
    assert world.licenses.balance_of(world.outsider) == 0
    valid_until, nonce, sig = world.admission(world.outsider)
    with pytest.raises(reverts.JobEscrowCspHoldsNoLicense) as err:
        world.escrow.admit_csp(world.outsider, KYC, valid_until, nonce, sig, sender=world.outsider)
    assert err.value.args_by_name == {"csp": world.outsider}


def test_admit_csp_rejects_blacklisted(world: World) -> None:
    world.escrow.set_csp_status(world.csp2, CspStatus.BLACKLISTED, sender=world.admin)
    valid_until, nonce, sig = world.admission(world.csp2)
    with pytest.raises(reverts.JobEscrowCspRestricted) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"csp": world.csp2, "status": CspStatus.BLACKLISTED}
    assert world.escrow.admitted_until(world.csp2) == 0


def test_admit_csp_rejects_malformed_signatures(world: World) -> None:
    # OpenZeppelin's ECDSA.recover errors surface as they are, by name
    valid_until, nonce, sig = world.admission(world.csp2)
    s_value = int.from_bytes(sig[32:64], "big")
    high_s = sig[:32] + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes([55 - sig[64]])
    cases: list[tuple[bytes, type[ContractRevert], dict[str, Any]]] = [
        (sig[:64], reverts.ECDSAInvalidSignatureLength, {"length": 64}),
        (high_s, reverts.ECDSAInvalidSignatureS, {"s": (SECP256K1_N - s_value).to_bytes(32, "big")}),
        (b"\x00" * 64 + b"\x1b", reverts.ECDSAInvalidSignature, {}),
    ]
    for bad, error, args in cases:
        with pytest.raises(error) as err:
            world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, bad, sender=world.csp2)
        assert err.value.args_by_name == args
    world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)  # the nonce was not burned
    assert world.escrow.is_csp_admitted(world.csp2)


def test_admission_expires(world: World) -> None:
    valid_until, nonce, sig = world.admission(world.csp2, valid_for_s=150)
    world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    world.new_job(csp=world.csp2)  # admitted: may fund
    world.advance_epochs(2)
    assert world.chain.now() > valid_until
    assert not world.escrow.is_csp_admitted(world.csp2)
    with pytest.raises(reverts.JobEscrowCspNotAdmitted) as err:
        world.new_job(csp=world.csp2)
    assert err.value.args_by_name == {"csp": world.csp2}
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- createJob


def test_create_job_pulls_deposit_and_emits(world: World) -> None:
    params = world.params(replicas=3, epochs=4, price=PRICE + 7)
    world.token.approve(world.escrow.address, params.deposit, sender=world.csp)
    csp_before = world.token.balance_of(world.csp)
    receipt = world.chain.transact(world.escrow.contract.functions.createJob(params.as_abi()), world.csp)
    deposit = (PRICE + 7) * 3 * 4
    [created] = world.escrow.events(receipt)
    assert (created.name, created.args["jobId"], created.args["csp"], created.args["deposit"]) == (
        "JobCreated", 1, world.csp, deposit)
    assert tuple(created.args["params"].values()) == params.as_abi()
    assert transfers(world.token, receipt) == [(world.csp, world.escrow.address, deposit)]
    assert world.token.balance_of(world.csp) == csp_before - deposit
    assert world.escrow.last_job_id() == 1
    job = world.escrow.get_job(1)
    assert (job.job_id, job.csp, job.start_epoch, job.replicas, job.token, job.epochs, job.status) == (
        1, world.csp, params.start_epoch, 3, world.token.address, 4, JobStatus.ACTIVE)
    assert (job.policy, job.spec_hash, job.price_per_node_epoch, job.deposited) == (
        params.policy, params.spec_hash, PRICE + 7, deposit)
    assert (job.alloc_release, job.release_spent, job.alloc_refund, job.refunded, job.alloc_burn, job.burned,
            job.reclaimed, job.forfeited) == (0,) * 8
    assert world.new_job() == 2  # ids count up
    world.assert_conserved()


def test_create_job_requires_admission(world: World) -> None:
    with pytest.raises(reverts.JobEscrowCspNotAdmitted) as err:
        world.new_job(csp=world.csp2)
    assert err.value.args_by_name == {"csp": world.csp2}
    assert world.escrow.last_job_id() == 0


@pytest.mark.parametrize("status", [CspStatus.FROZEN, CspStatus.SUSPENDED, CspStatus.BLACKLISTED])
def test_create_job_rejects_restricted_csp(world: World, status: CspStatus) -> None:
    world.escrow.set_csp_status(world.csp, status, sender=world.admin)
    with pytest.raises(reverts.JobEscrowCspRestricted) as err:
        world.new_job()
    assert err.value.args_by_name == {"csp": world.csp, "status": status}
    assert world.escrow.last_job_id() == 0


def test_create_job_requires_holding_a_license(world: World) -> None:
    # admitted while holding a deed, then sold it: may no longer fund
    world.licenses.transfer(csp_license(world, world.csp), world.outsider, sender=world.csp)
    assert not world.escrow.is_csp_admitted(world.csp)
    with pytest.raises(reverts.JobEscrowCspHoldsNoLicense) as err:
        world.new_job()
    assert err.value.args_by_name == {"csp": world.csp}
    assert world.escrow.last_job_id() == 0


def test_create_job_rejects_disallowed_token(world: World) -> None:
    world.escrow.set_token_allowed(world.token.address, False, sender=world.admin)
    with pytest.raises(reverts.JobEscrowTokenNotAllowed) as err:
        world.new_job()
    assert err.value.args_by_name == {"token": world.token.address}
    with pytest.raises(reverts.JobEscrowTokenNotAllowed) as err:
        world.new_job(token=world.outsider)  # never allowed
    assert err.value.args_by_name == {"token": world.outsider}


@pytest.mark.parametrize(("replicas", "epochs", "price"), [(0, 3, PRICE), (2, 0, PRICE), (2, 3, 0)])
def test_create_job_rejects_invalid_shape(world: World, replicas: int, epochs: int, price: int) -> None:
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp)
    with pytest.raises(reverts.JobEscrowInvalidShape) as err:
        create_raw(world, raw_params(world, replicas=replicas, epochs=epochs, price=price), world.csp)
    assert err.value.args_by_name == {"replicas": replicas, "epochs": epochs, "pricePerNodeEpoch": price}


@pytest.mark.parametrize(("threshold", "floor", "bps"), [(100, 101, 0), (200, 50, 10_001), (0, 255, 0)])
def test_create_job_rejects_invalid_policy(world: World, threshold: int, floor: int, bps: int) -> None:
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp)
    with pytest.raises(reverts.JobEscrowInvalidPolicy) as err:
        create_raw(world, raw_params(world, threshold=threshold, floor=floor, bps=bps), world.csp)
    assert err.value.args_by_name == {"releaseThreshold": threshold, "burnFloor": floor, "protocolBurnBps": bps}


def test_create_job_accepts_policy_bounds(world: World) -> None:
    job = world.new_job(policy=SettlementPolicy(release_threshold=255, burn_floor=255, protocol_burn_bps=10_000))
    assert world.escrow.get_job(job).policy == SettlementPolicy(255, 255, 10_000)
    world.assert_conserved()


def test_create_job_and_top_up_reject_deposit_overflow(world: World) -> None:
    # deposits are uint128 in storage: a larger product or top-up reverts before pulling anything
    price = 2**127
    with pytest.raises(reverts.SafeCastOverflowedUintDowncast) as err:
        create_raw(world, raw_params(world, price=price), world.csp)
    assert err.value.args_by_name == {"bits": 128, "value": price * 2 * 3}
    job = world.new_job()
    with pytest.raises(reverts.SafeCastOverflowedUintDowncast) as big:
        world.escrow.top_up(job, 2**128, sender=world.csp)
    assert big.value.args_by_name == {"bits": 128, "value": 2**128}
    with pytest.raises(reverts.Panic) as overflow:  # fits uint128 alone, not added to the deposit
        world.escrow.top_up(job, 2**128 - 1, sender=world.csp)
    assert overflow.value.args_by_name == {"code": 0x11}
    assert world.escrow.get_job(job).deposited == DEPOSIT
    world.assert_conserved()


def test_create_job_rejects_start_in_past(world: World) -> None:
    current = world.advance_epochs(3)
    with pytest.raises(reverts.JobEscrowStartInPast) as err:
        world.new_job(start_epoch=current - 1)
    assert err.value.args_by_name == {"startEpoch": current - 1, "currentEpoch": current}
    job = world.new_job(start_epoch=current)  # the current epoch is still allowed
    assert world.escrow.get_job(job).start_epoch == current
    world.assert_conserved()


def test_create_job_without_allowance_moves_nothing(world: World) -> None:
    params = world.params()
    before = (world.token.balance_of(world.csp), world.token.balance_of(world.escrow.address))
    with pytest.raises(reverts.ERC20InsufficientAllowance) as err:
        world.escrow.create_job(params, sender=world.csp)
    assert err.value.args_by_name == {"spender": world.escrow.address, "allowance": 0, "needed": params.deposit}
    assert (world.token.balance_of(world.csp), world.token.balance_of(world.escrow.address)) == before
    assert world.escrow.last_job_id() == 0
    assert world.escrow.get_job(1).status == JobStatus.NONE


# ---------------------------------------------------------------------------------------- topUp, updateSpec


def test_top_up_adds_to_deposit(world: World) -> None:
    job = world.new_job()
    world.token.approve(world.escrow.address, 500_000, sender=world.csp)
    receipt = world.escrow.top_up(job, 500_000, sender=world.csp)
    assert world.escrow.events(receipt) == [ev(world, "JobToppedUp", jobId=job, amount=500_000,
                                               deposited=DEPOSIT + 500_000)]
    assert transfers(world.token, receipt) == [(world.csp, world.escrow.address, 500_000)]
    assert world.escrow.get_job(job).deposited == DEPOSIT + 500_000
    world.assert_conserved()


def test_top_up_errors(world: World) -> None:
    job = world.new_job()
    world.token.approve(world.escrow.address, 10**6, sender=world.csp)
    with pytest.raises(reverts.JobEscrowZeroAmount) as zero:
        world.escrow.top_up(job, 0, sender=world.csp)
    assert zero.value.values == ()
    with pytest.raises(reverts.JobEscrowNotJobOwner) as owner:
        world.escrow.top_up(job, 1, sender=world.csp2)
    assert owner.value.args_by_name == {"jobId": job, "caller": world.csp2}
    with pytest.raises(reverts.JobEscrowUnknownJob) as unknown:
        world.escrow.top_up(99, 1, sender=world.csp)
    assert unknown.value.args_by_name == {"jobId": 99}
    # a restricted CSP cannot add money either
    world.escrow.set_csp_status(world.csp, CspStatus.SUSPENDED, sender=world.admin)
    with pytest.raises(reverts.JobEscrowCspRestricted) as restricted:
        world.escrow.top_up(job, 1, sender=world.csp)
    assert restricted.value.args_by_name == {"csp": world.csp, "status": CspStatus.SUSPENDED}
    world.escrow.set_csp_status(world.csp, CspStatus.ACTIVE, sender=world.admin)
    world.escrow.cancel_job(job, sender=world.csp)
    with pytest.raises(reverts.JobEscrowJobNotActive) as inactive:
        world.escrow.top_up(job, 1, sender=world.csp)
    assert inactive.value.args_by_name == {"jobId": job, "status": JobStatus.CANCELLED}
    assert world.escrow.get_job(job).deposited == DEPOSIT
    world.assert_conserved()


def test_update_spec(world: World) -> None:
    job = world.new_job(spec=b"\x01" * 32)
    receipt = world.escrow.update_spec(job, b"\x02" * 32, sender=world.csp)
    assert world.escrow.events(receipt) == [
        ev(world, "JobSpecUpdated", jobId=job, previous=b"\x01" * 32, current=b"\x02" * 32)]
    assert world.escrow.get_job(job).spec_hash == b"\x02" * 32
    with pytest.raises(reverts.JobEscrowNotJobOwner) as owner:
        world.escrow.update_spec(job, b"\x03" * 32, sender=world.outsider)
    assert owner.value.args_by_name == {"jobId": job, "caller": world.outsider}
    world.escrow.cancel_job(job, sender=world.csp)
    with pytest.raises(reverts.JobEscrowJobNotActive) as inactive:
        world.escrow.update_spec(job, b"\x03" * 32, sender=world.csp)
    assert inactive.value.args_by_name == {"jobId": job, "status": JobStatus.CANCELLED}
    assert world.escrow.get_job(job).spec_hash == b"\x02" * 32
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- cancelJob


def test_cancel_before_start_refunds_everything(world: World) -> None:
    job = world.new_job()
    before = world.token.balance_of(world.csp)
    receipt = world.escrow.cancel_job(job, sender=world.csp)
    assert world.escrow.events(receipt) == [ev(world, "JobCancelled", jobId=job, refund=DEPOSIT)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, DEPOSIT)]
    assert world.token.balance_of(world.csp) == before + DEPOSIT
    state = world.escrow.get_job(job)
    assert (state.status, state.reclaimed, state.held) == (JobStatus.CANCELLED, DEPOSIT, 0)
    with pytest.raises(reverts.JobEscrowJobNotActive) as err:
        world.escrow.cancel_job(job, sender=world.csp)
    assert err.value.args_by_name == {"jobId": job, "status": JobStatus.CANCELLED}
    world.assert_conserved()


def test_cancel_rejected_once_started(world: World) -> None:
    job = world.new_job()
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start)
    with pytest.raises(reverts.JobEscrowJobAlreadyStarted) as err:
        world.escrow.cancel_job(job, sender=world.csp)
    assert err.value.args_by_name == {"jobId": job, "startEpoch": start}
    assert world.escrow.get_job(job).status == JobStatus.ACTIVE
    world.assert_conserved()


def test_cancel_rejected_once_allocated(world: World) -> None:
    e = world.escrow.current_epoch()
    job = world.new_job(start_epoch=e + 5)
    twin = world.new_job(start_epoch=e + 5)
    world.advance_to_epoch(e + 1)
    report(world, e, job, {}, refund=1)  # a report touched the job before its start, and was applied
    with pytest.raises(reverts.JobEscrowJobAlreadyStarted) as err:
        world.escrow.cancel_job(job, sender=world.csp)
    assert err.value.args_by_name == {"jobId": job, "startEpoch": e + 5}
    with pytest.raises(reverts.JobEscrowNotJobOwner):
        world.escrow.cancel_job(twin, sender=world.csp2)
    world.escrow.cancel_job(twin, sender=world.csp)  # same epoch, no allocation: fine
    world.assert_conserved()


def test_cancel_before_landed_totals_are_applied_refuses_them_after(world: World) -> None:
    # the escrow knows only applied totals: a landed report whose totals nobody applied does not
    # stop a cancel, and afterwards they can no longer be applied
    e = world.escrow.current_epoch()
    job = world.new_job(start_epoch=e + 5)
    world.advance_to_epoch(e + 1)
    _, proofs = report(world, e, job, {}, refund=1, apply=False)
    world.escrow.cancel_job(job, sender=world.csp)
    with pytest.raises(reverts.JobEscrowJobNotActive) as err:
        world.escrow.apply_totals(proofs, sender=world.outsider)
    assert err.value.args_by_name == {"jobId": job, "status": JobStatus.CANCELLED}
    assert alloc(world, job) == (0, 0, 0, 0)
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- closeJob


def test_close_job_returns_unallocated_remainder(world: World) -> None:
    job = world.new_job()  # 3 epochs from the next one, closable from start + 3 + grace
    closable_from = world.escrow.get_job(job).start_epoch + 3 + GRACE_EPOCHS
    world.advance_to_epoch(closable_from - 1)
    tree, _ = report(world, closable_from - 2, job, {0: PRICE}, refund=PRICE, burn=PRICE // 2)
    with pytest.raises(reverts.JobEscrowJobNotClosable) as err:
        world.escrow.close_job(job, sender=world.outsider)
    assert err.value.args_by_name == {"jobId": job, "closableFrom": closable_from}
    world.advance_to_epoch(closable_from)
    remainder = DEPOSIT - PRICE - PRICE - PRICE // 2
    before = world.token.balance_of(world.csp)
    receipt = world.escrow.close_job(job, sender=world.outsider)  # anyone may close
    assert world.escrow.events(receipt) == [ev(world, "JobClosed", jobId=job, reclaimed=remainder)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, remainder)]
    assert world.token.balance_of(world.csp) == before + remainder
    state = world.escrow.get_job(job)
    assert (state.status, state.reclaimed, state.locked) == (JobStatus.CLOSED, remainder, 0)
    with pytest.raises(reverts.JobEscrowJobNotActive) as again:
        world.escrow.close_job(job, sender=world.csp)
    assert again.value.args_by_name == {"jobId": job, "status": JobStatus.CLOSED}
    # a late report still lands, but its totals cannot be applied to the closed job
    _, late = report(world, closable_from - 1, job, {0: PRICE}, refund=2 * PRICE, burn=PRICE // 2, apply=False)
    with pytest.raises(reverts.JobEscrowJobNotActive) as closed:
        world.escrow.apply_totals(late, sender=world.outsider)
    assert closed.value.args_by_name == {"jobId": job, "status": JobStatus.CLOSED}
    assert world.escrow.get_job(job).conservation() == state.conservation()
    assert world.escrow.settled_until(job) == closable_from - 1
    # what was allocated before the close stays payable
    world.escrow.claim([world.claim_of(tree, closable_from - 2, job, world.license_ids[0], PRICE)],
                       sender=world.outsider)
    world.escrow.take_refund([job], sender=world.outsider)
    world.escrow.execute_burn([job], sender=world.outsider)
    assert world.escrow.get_job(job).held == 0
    assert world.token.balance_of(world.escrow.address) == 0
    world.assert_conserved()


def test_close_fully_allocated_job_transfers_nothing(world: World) -> None:
    job = world.new_job()
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start + 3 + GRACE_EPOCHS)
    report(world, start + 2, job, {0: DEPOSIT // 2}, refund=DEPOSIT // 2)
    receipt = world.escrow.close_job(job, sender=world.csp)
    assert world.escrow.events(receipt) == [ev(world, "JobClosed", jobId=job, reclaimed=0)]
    assert transfers(world.token, receipt) == []
    with pytest.raises(reverts.JobEscrowUnknownJob) as err:
        world.escrow.close_job(job + 1, sender=world.csp)
    assert err.value.args_by_name == {"jobId": job + 1}
    world.assert_conserved()


def test_close_waits_for_the_newest_covering_totals(world: World) -> None:
    # reports of the job's three epochs and one after its end landed; only the first was applied
    job = world.new_job()
    s = world.escrow.get_job(job).start_epoch
    end = s + 3
    world.advance_to_epoch(end + GRACE_EPOCHS)
    proofs = {}
    for i, epoch in enumerate(range(s, end + 1)):  # end: a report after the job's last epoch carries it too
        released = min(i + 1, 3) * PRICE
        proofs[epoch] = report(world, epoch, job, {0: released}, refund=i, apply=epoch == s)[1]
    assert alloc(world, job) == (PRICE, 0, 0, s + 1)
    with pytest.raises(reverts.JobEscrowTotalsNotApplied) as first:  # closing now would take back 2 epochs' pay
        world.escrow.close_job(job, sender=world.outsider)
    # needed = min(next epoch, end): the job's last epoch, not the newer report after its end
    assert first.value.args_by_name == {"jobId": job, "settledUntil": s + 1, "needed": end}
    world.escrow.apply_totals(proofs[s + 1], sender=world.outsider)
    with pytest.raises(reverts.JobEscrowTotalsNotApplied) as second:
        world.escrow.close_job(job, sender=world.csp)
    assert second.value.args_by_name == {"jobId": job, "settledUntil": s + 2, "needed": end}
    before = world.token.balance_of(world.csp)
    remainder = DEPOSIT - 3 * PRICE - 2
    # the newest covering totals applied first, in the same transaction (multicall)
    receipt = world.escrow.close_job(job, sender=world.outsider, totals=proofs[s + 2])
    assert world.escrow.events(receipt) == [
        ev(world, "JobAllocated", jobId=job, epoch=s + 2, release=3 * PRICE, refund=2, burn=0),
        ev(world, "JobClosed", jobId=job, reclaimed=remainder)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, remainder)]
    assert world.token.balance_of(world.csp) == before + remainder
    assert alloc(world, job) == (3 * PRICE, 2, 0, end)
    # the report after the end was never needed, and can no longer be applied
    with pytest.raises(reverts.JobEscrowJobNotActive):
        world.escrow.apply_totals(proofs[end], sender=world.outsider)
    world.assert_conserved()


def test_close_applying_the_newest_totals_directly(world: World) -> None:
    # out of order: the newest report's totals alone settle the job (cumulative amounts)
    job = world.new_job(epochs=1)
    s = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(s + 1 + GRACE_EPOCHS)
    report(world, s, job, {0: PRICE}, apply=False)
    _, newest = report(world, s + 1, job, {0: PRICE, 1: PRICE}, apply=False)
    receipt = world.escrow.close_job(job, sender=world.outsider, totals=newest)
    assert [e.name for e in world.escrow.events(receipt)] == ["JobAllocated", "JobClosed"]
    assert alloc(world, job) == (2 * PRICE, 0, 0, s + 2)
    world.assert_conserved()


def test_close_needs_no_totals_when_no_report_covers_the_job(world: World) -> None:
    e = world.escrow.current_epoch()
    never = world.new_job(epochs=1, start_epoch=e + 2)  # no report at all from its start on
    world.advance_to_epoch(e + 1)
    world.post_report(e, {}, [])  # a report before its start: it does not cover the job
    world.advance_to_epoch(e + 3 + GRACE_EPOCHS)
    assert world.escrow.next_epoch() == e + 1
    receipt = world.escrow.close_job(never, sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "JobClosed", jobId=never, reclaimed=PRICE * 2)]
    assert alloc(world, never) == (0, 0, 0, 0)
    world.assert_conserved()


def test_close_blocked_by_a_covering_report_without_the_job(world: World) -> None:
    # A report covering the job must carry its totals leaf. An empty one (zero totals root) blocks
    # the close for a grace period, until a later report does carry it...
    job = world.new_job(epochs=1)
    s = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(s + 1 + GRACE_EPOCHS)
    world.post_report(s, {}, [])
    assert world.escrow.totals_root_of(s) == ZERO32
    with pytest.raises(reverts.JobEscrowTotalsNotApplied) as blocked:
        world.escrow.close_job(job, sender=world.outsider)
    assert blocked.value.args_by_name == {"jobId": job, "settledUntil": 0, "needed": s + 1}
    _, later = report(world, s + 1, job, {}, refund=2 * PRICE, apply=False)
    world.escrow.close_job(job, sender=world.outsider, totals=later)
    assert world.escrow.get_job(job).status == JobStatus.CLOSED
    world.assert_conserved()


def test_a_job_no_applicable_report_covers_closes_after_a_second_grace_period(world: World) -> None:
    # ... and if none ever does (the oracles left it out, or stopped), the CSP gets the remainder
    # back one more grace period later, on the totals applied so far: nothing is locked for good
    job = world.new_job(epochs=1)
    s = world.escrow.get_job(job).start_epoch
    end = s + 1
    world.advance_to_epoch(end + GRACE_EPOCHS)
    world.post_report(s, {}, [])
    world.advance_to_epoch(end + 2 * GRACE_EPOCHS - 1)
    with pytest.raises(reverts.JobEscrowTotalsNotApplied):
        world.escrow.close_job(job, sender=world.outsider)
    world.advance_to_epoch(end + 2 * GRACE_EPOCHS)
    deposited, before = world.escrow.get_job(job).deposited, world.token.balance_of(world.csp)
    world.escrow.close_job(job, sender=world.outsider)
    closed = world.escrow.get_job(job)
    assert (closed.status, closed.reclaimed) == (JobStatus.CLOSED, deposited)
    assert world.token.balance_of(world.csp) - before == deposited
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- submitReport


def test_submit_report_settles_without_touching_jobs(world: World) -> None:
    j1, j2 = world.new_job(), world.new_job(replicas=1)
    e = world.escrow.get_job(j1).start_epoch
    world.advance_to_epoch(e + 1)
    lic = world.license_ids
    pay: dict[tuple[int, int], int] = {(j1, lic[0]): PRICE, (j1, lic[1]): PRICE // 3, (j2, lic[2]): 5}
    u = TokenUnits
    totals = [JobTotals(j1, u(PRICE + PRICE // 3), u(7), u(11)), JobTotals(j2, u(5), u(0), u(0))]
    # all four oracles sign: the event counts them
    tree, root, sigs = world.signed_report(e, pay, totals, signers=world.oracle_keys)
    receipt = world.escrow.submit_report(e, root, totals_root(totals), sigs, sender=world.outsider)
    assert world.escrow.events(receipt) == [
        ev(world, "EpochSettled", epoch=e, root=tree.root, totalsRoot=totals_root(totals), signers=4)]
    assert (world.escrow.next_epoch(), world.escrow.root_of(e), world.escrow.root_of(e - 1)) == (e + 1, root, ZERO32)
    assert (world.escrow.totals_root_of(e), world.escrow.totals_root_of(e - 1)) == (totals_root(totals), ZERO32)
    assert alloc(world, j1) == alloc(world, j2) == (0, 0, 0, 0)  # no job's accounts were touched
    world.assert_conserved()
    # anyone applies them, in one batch: JobAllocated is emitted now, with the report's epoch
    receipt = world.escrow.apply_totals(totals_proofs(e, totals), sender=world.outsider)
    assert world.escrow.events(receipt) == [
        ev(world, "JobAllocated", jobId=j1, epoch=e, release=PRICE + PRICE // 3, refund=7, burn=11),
        ev(world, "JobAllocated", jobId=j2, epoch=e, release=5, refund=0, burn=0)]
    assert transfers(world.token, receipt) == []
    assert alloc(world, j1) == (PRICE + PRICE // 3, 7, 11, e + 1)
    assert alloc(world, j2) == (5, 0, 0, e + 1)
    world.assert_conserved()


def test_submit_report_gas_does_not_grow_with_jobs(world: World) -> None:
    e = world.escrow.current_epoch()
    jobs = [world.new_job() for _ in range(6)]
    world.advance_to_epoch(e + 3)
    gas = []
    for epoch, count in ((e + 1, 1), (e + 2, 6)):
        totals = [JobTotals(j, TokenUnits(7), TokenUnits(0), TokenUnits(0)) for j in jobs[:count]]
        _, root, sigs = world.signed_report(epoch, {}, totals)
        gas.append(world.escrow.submit_report(epoch, root, totals_root(totals), sigs, sender=world.outsider)["gasUsed"])
    assert abs(gas[1] - gas[0]) < 200  # only calldata bytes of the (equally long) roots may differ


def test_report_may_skip_epochs_and_be_empty(world: World) -> None:
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 5)
    _, root, sigs = world.signed_report(e + 3, {}, [])
    assert totals_root([]) == ZERO32
    receipt = world.escrow.submit_report(e + 3, root, ZERO32, sigs, sender=world.outsider)
    assert world.escrow.events(receipt) == [
        ev(world, "EpochSettled", epoch=e + 3, root=root, totalsRoot=ZERO32, signers=3)]
    assert world.escrow.next_epoch() == e + 4
    assert world.escrow.root_of(e + 2) == ZERO32
    assert world.escrow.totals_root_of(e + 3) == ZERO32


def test_report_epoch_must_move_forward(world: World) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 2)
    report(world, e, job, {0: 1})
    for epoch in (e, e - 1):  # the same epoch again, or an older one
        with pytest.raises(reverts.JobEscrowEpochNotAfterLast) as err:
            report(world, epoch, job, {0: 2})
        assert err.value.args_by_name == {"epoch": epoch, "nextEpoch": e + 1}
    report(world, e + 1, job, {0: 2})
    assert world.escrow.next_epoch() == e + 2
    world.assert_conserved()


def test_report_epoch_must_have_ended(world: World) -> None:
    job = world.new_job()
    current = world.advance_epochs(2)
    for epoch in (current, current + 1):
        with pytest.raises(reverts.JobEscrowEpochNotEnded) as err:
            report(world, epoch, job, {0: 1})
        assert err.value.args_by_name == {"epoch": epoch, "currentEpoch": current}
    assert world.escrow.next_epoch() == 0


def test_report_with_totals_root_swapped_after_signing_fails_quorum(world: World) -> None:
    # the signatures cover EpochReport(epoch, root, totalsRoot): another totals root recovers strangers
    job = world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 1)
    signed = one_job_totals(job, 10)
    _, root, sigs = world.signed_report(e, {}, signed)
    swapped = totals_root(one_job_totals(job, DEPOSIT))
    stranger = recover(epoch_report(world.escrow.domain(), e, root, swapped), sigs[0])
    assert stranger not in {k.address for k in world.oracle_keys}
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.escrow.submit_report(e, root, swapped, sigs, sender=world.outsider)
    assert err.value.args_by_name == {"account": stranger}
    assert (world.escrow.next_epoch(), world.escrow.totals_root_of(e)) == (0, ZERO32)
    world.escrow.submit_report(e, root, totals_root(signed), sigs, sender=world.outsider)  # as signed: lands


# ---------------------------------------------------------------------------------------- applyTotals


def test_apply_totals_rejects_unknown_and_inactive_jobs(world: World) -> None:
    e = world.escrow.current_epoch()
    cancelled = world.new_job(start_epoch=e + 5)
    active = world.new_job(start_epoch=e + 5)
    world.advance_to_epoch(e + 1)
    totals = [*one_job_totals(cancelled, 0, 1), *one_job_totals(active, 0, 2), *one_job_totals(active + 1, 0, 3)]
    world.post_report(e, {}, totals, apply=False)
    with pytest.raises(reverts.JobEscrowUnknownJob) as unknown:  # proven, but no such job
        world.apply(e, totals, [active + 1])
    assert unknown.value.args_by_name == {"jobId": active + 1}
    world.escrow.cancel_job(cancelled, sender=world.csp)
    with pytest.raises(reverts.JobEscrowJobNotActive) as inactive:
        world.apply(e, totals, [cancelled])
    assert inactive.value.args_by_name == {"jobId": cancelled, "status": JobStatus.CANCELLED}
    # a batch is all or nothing: the active job's valid totals before the cancelled one are not applied
    with pytest.raises(reverts.JobEscrowJobNotActive):
        world.apply(e, totals, [active, cancelled])
    assert alloc(world, active) == (0, 0, 0, 0)
    world.apply(e, totals, [active])
    assert alloc(world, active) == (0, 2, 0, e + 1)
    world.assert_conserved()


def test_apply_totals_rejects_an_epoch_without_totals_root(world: World) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 3)
    totals = one_job_totals(job, PRICE)
    world.post_report(e, {}, totals, apply=False)
    world.post_report(e + 1, {}, [], apply=False)  # landed, with no job: zero totals root
    [proof] = totals_proofs(e, totals)
    for epoch in (e + 1, e + 2, e - 1):  # empty report, no report yet, before any report
        with pytest.raises(reverts.JobEscrowUnknownEpoch) as err:
            world.escrow.apply_totals([TotalsProof(proof.totals, Epoch(epoch), proof.proof)], sender=world.outsider)
        assert err.value.args_by_name == {"epoch": epoch}
    assert alloc(world, job) == (0, 0, 0, 0)


def test_apply_totals_rejects_invalid_proofs(world: World) -> None:
    j1, j2 = world.new_job(), world.new_job()
    e = world.escrow.get_job(j1).start_epoch
    world.advance_to_epoch(e + 2)
    lic = world.license_ids[0]
    first = [*one_job_totals(j1, PRICE, 5), *one_job_totals(j2, 9)]
    second = [*one_job_totals(j1, 2 * PRICE, 5), *one_job_totals(j2, 10)]
    world.post_report(e, {(j1, lic): PRICE}, first, apply=False)
    world.post_report(e + 1, {(j1, lic): 2 * PRICE}, second, apply=False)
    [good] = totals_proofs(e + 1, second, [j1])
    [older] = totals_proofs(e, first, [j1])
    t = good.totals
    forged = {
        "more release": TotalsProof(JobTotals(j1, TokenUnits(t.release + 1), t.refund, t.burn), good.epoch,
                                    good.proof),
        "less refund": TotalsProof(JobTotals(j1, t.release, TokenUnits(t.refund - 1), t.burn), good.epoch,
                                   good.proof),
        "another job's leaf": TotalsProof(JobTotals(j2, t.release, t.refund, t.burn), good.epoch, good.proof),
        "proof of another epoch": TotalsProof(older.totals, good.epoch, older.proof),  # valid for e, not e + 1
        "no proof": TotalsProof(t, good.epoch, ()),
    }
    for label, bad in forged.items():
        with pytest.raises(reverts.JobEscrowInvalidTotalsProof) as err:
            world.escrow.apply_totals([bad], sender=world.outsider)
        assert err.value.args_by_name == {"jobId": bad.totals.job_id, "epoch": e + 1}, label
    assert alloc(world, j1) == alloc(world, j2) == (0, 0, 0, 0)
    world.escrow.apply_totals([good], sender=world.outsider)
    assert alloc(world, j1) == (2 * PRICE, 5, 0, e + 2)
    # a stale entry is proven before it is skipped: a forged one still reverts
    with pytest.raises(reverts.JobEscrowInvalidTotalsProof):
        world.escrow.apply_totals([forged["more release"]], sender=world.outsider)
    world.assert_conserved()


def test_release_and_totals_leaves_cannot_stand_in_for_each_other(world: World) -> None:
    # a quorum posting one tree as both roots: its node-pay leaf is no totals leaf and vice versa
    job = world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 1)
    lic = world.license_ids[0]
    release = release_leaf(job, lic, PRICE)
    totals = JobTotals(job, TokenUnits(lic), TokenUnits(PRICE), TokenUnits(0))
    tree = MerkleTree([release, totals_leaf(totals)])
    msg = epoch_report(world.escrow.domain(), e, tree.root, tree.root)
    sigs = [sign(msg, k.key) for k in sorted(world.oracle_keys[:3], key=lambda k: k.address)]
    world.escrow.submit_report(e, tree.root, tree.root, sigs, sender=world.outsider)
    # the release leaf's (job, license, cumulative) read as totals, with the release leaf's proof
    as_totals = TotalsProof(JobTotals(job, TokenUnits(lic), TokenUnits(PRICE), TokenUnits(0)), Epoch(e),
                            tree.proof(release))
    with pytest.raises(reverts.JobEscrowInvalidTotalsProof) as err:
        world.escrow.apply_totals([as_totals], sender=world.outsider)
    assert err.value.args_by_name == {"jobId": job, "epoch": e}
    # and the totals leaf read as a claim of (job, release as license, refund as cumulative)
    with pytest.raises(reverts.JobEscrowInvalidProof):
        world.escrow.claim([Claim(job, lic, Epoch(e), TokenUnits(PRICE), tree.proof(totals_leaf(totals)))],
                           sender=world.outsider)
    # each leaf is valid as its own kind
    world.escrow.apply_totals([TotalsProof(totals, Epoch(e), tree.proof(totals_leaf(totals)))],
                              sender=world.outsider)
    assert alloc(world, job) == (lic, PRICE, 0, e + 1)
    world.assert_conserved()


def test_apply_totals_skips_totals_not_newer_than_applied(world: World) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 3)
    older, newer = one_job_totals(job, PRICE, 1), one_job_totals(job, 2 * PRICE, 3, 4)
    world.post_report(e, {}, older, apply=False)
    world.post_report(e + 1, {}, newer, apply=False)
    receipt = world.apply(e + 1, newer)  # out of order: the newer report first
    assert world.escrow.events(receipt) == [
        ev(world, "JobAllocated", jobId=job, epoch=e + 1, release=2 * PRICE, refund=3, burn=4)]
    state = world.escrow.get_job(job)
    for epoch, totals in ((e, older), (e + 1, newer)):  # older, then the same again (racing keepers)
        receipt = world.apply(epoch, totals)
        assert world.escrow.events(receipt) == []  # skipped silently
        assert world.escrow.get_job(job) == state
        assert world.escrow.settled_until(job) == e + 2
    # in one batch too: only the newest is applied, whatever the order
    world.post_report(e + 2, {}, one_job_totals(job, 3 * PRICE, 3, 4), apply=False)
    batch = [*totals_proofs(e + 2, one_job_totals(job, 3 * PRICE, 3, 4)), *totals_proofs(e, older)]
    receipt = world.escrow.apply_totals(batch, sender=world.outsider)
    assert [e_.args["epoch"] for e_ in world.escrow.events(receipt)] == [e + 2]
    assert alloc(world, job) == (3 * PRICE, 3, 4, e + 3)
    world.assert_conserved()


@pytest.mark.parametrize("field", ["release", "refund", "burn"])
def test_apply_totals_may_not_decrease_allocations(world: World, field: str) -> None:
    job = world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 2)
    first = {"release": 100, "refund": 100, "burn": 100}
    world.post_report(e, {}, [JobTotals(job, **first)])  # type: ignore[arg-type]
    lowered = [JobTotals(job, **{**first, field: 99})]  # type: ignore[arg-type]
    world.post_report(e + 1, {}, lowered, apply=False)  # the report itself lands
    with pytest.raises(reverts.JobEscrowAllocationDecreased) as err:
        world.apply(e + 1, lowered)
    assert err.value.args_by_name == {"jobId": job}
    assert alloc(world, job) == (100, 100, 100, e + 1)
    world.assert_conserved()


def test_apply_totals_may_not_exceed_deposit(world: World) -> None:
    job = world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 2)
    over, exact = one_job_totals(job, DEPOSIT - 2, 2, 1), one_job_totals(job, DEPOSIT - 2, 1, 1)
    world.post_report(e, {}, over, apply=False)
    with pytest.raises(reverts.JobEscrowExceedsDeposit) as err:
        world.apply(e, over)
    assert err.value.args_by_name == {"jobId": job, "allocated": DEPOSIT + 1, "available": DEPOSIT}
    assert alloc(world, job) == (0, 0, 0, 0)
    world.post_report(e + 1, {}, exact)  # exactly the deposit
    assert world.escrow.get_job(job).locked == 0
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- multicall


def test_claim_beyond_applied_allocation_waits_for_totals(world: World) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 1)
    lic, owner = world.license_ids[0], world.owners[0]
    tree, proofs = report(world, e, job, {0: PRICE}, refund=5, apply=False)
    claim = world.claim_of(tree, e, job, lic, PRICE)
    with pytest.raises(reverts.JobEscrowExceedsAllocation) as err:  # the report landed, its totals did not
        world.escrow.claim([claim], sender=owner)
    assert err.value.args_by_name == {"jobId": job, "allocated": 0, "requested": PRICE}
    before = world.token.balance_of(owner)
    receipt = world.escrow.claim([claim], sender=world.outsider, totals=proofs)  # one transaction
    assert world.escrow.events(receipt) == [
        ev(world, "JobAllocated", jobId=job, epoch=e, release=PRICE, refund=5, burn=0),
        ev(world, "Claimed", jobId=job, licenseId=lic, owner=owner, amount=PRICE)]
    assert transfers(world.token, receipt) == [(world.escrow.address, owner, PRICE)]
    assert world.token.balance_of(owner) == before + PRICE
    assert alloc(world, job) == (PRICE, 5, 0, e + 1)
    world.assert_conserved()


@pytest.mark.parametrize("payout", ["takeRefund", "executeBurn", "forfeit"])
def test_payouts_apply_totals_in_the_same_transaction(world: World, payout: str) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 1)
    lic = world.license_ids[0]
    tree, proofs = report(world, e, job, {0: 300}, refund=400, burn=90, apply=False)
    allocated = ev(world, "JobAllocated", jobId=job, epoch=e, release=300, refund=400, burn=90)
    if payout == "forfeit":
        world.licenses.set_status(lic, LicenseStatus.BLACKLISTED, sender=world.admin)
        claims = [world.claim_of(tree, e, job, lic, 300)]
        with pytest.raises(reverts.JobEscrowExceedsAllocation):
            world.escrow.forfeit(claims, sender=world.outsider)
        receipt = world.escrow.forfeit(claims, sender=world.outsider, totals=proofs)
        expected = [allocated, ev(world, "Forfeited", jobId=job, licenseId=lic, amount=300)]
        moved = [(world.escrow.address, BURN, 300)]
    else:
        send = world.escrow.take_refund if payout == "takeRefund" else world.escrow.execute_burn
        with pytest.raises(reverts.JobEscrowNothingDue) as err:
            send([job], sender=world.outsider)
        assert err.value.args_by_name == {"jobId": job}
        receipt = send([job], sender=world.outsider, totals=proofs)
        if payout == "takeRefund":
            expected = [allocated, ev(world, "RefundTaken", jobId=job, csp=world.csp, amount=400)]
            moved = [(world.escrow.address, world.csp, 400)]
        else:
            expected = [allocated, ev(world, "BurnExecuted", jobId=job, amount=90)]
            moved = [(world.escrow.address, BURN, 90)]
    assert world.escrow.events(receipt) == expected
    assert transfers(world.token, receipt) == moved
    assert world.escrow.settled_until(job) == e + 1
    world.assert_conserved()


def test_multicall_is_atomic_and_reverts_by_name(world: World) -> None:
    job = world.new_job()
    e = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(e + 1)
    lic = world.license_ids
    tree, proofs = report(world, e, job, {0: PRICE, 1: PRICE}, refund=7, apply=False)
    good = world.claim_of(tree, e, job, lic[0], PRICE)
    bad = Claim(job, lic[1], Epoch(e), TokenUnits(PRICE + 1), world.claim_of(tree, e, job, lic[1], PRICE).proof)
    before = (world.token.balance_of(world.escrow.address), world.token.balance_of(world.owners[0]))
    # the claim fails after the totals were applied: the whole transaction reverts, with the claim's error
    with pytest.raises(reverts.JobEscrowInvalidProof) as err:
        world.escrow.claim([good, bad], sender=world.outsider, totals=proofs)
    assert err.value.args_by_name == {"jobId": job, "licenseId": lic[1]}
    assert alloc(world, job) == (0, 0, 0, 0)
    # the totals fail before the claim runs
    forged = TotalsProof(JobTotals(job, TokenUnits(2 * PRICE), TokenUnits(8), TokenUnits(0)), Epoch(e),
                         proofs[0].proof)
    with pytest.raises(reverts.JobEscrowInvalidTotalsProof) as bad_totals:
        world.escrow.claim([good], sender=world.outsider, totals=[forged])
    assert bad_totals.value.args_by_name == {"jobId": job, "epoch": e}
    # the raw multicall: any calls of the escrow in order, the last one failing
    with pytest.raises(reverts.JobEscrowNothingDue) as nothing:
        world.escrow.multicall([("applyTotals", ([p.as_abi() for p in proofs],)),
                                ("takeRefund", ([job],)), ("takeRefund", ([job],))], sender=world.outsider)
    assert nothing.value.args_by_name == {"jobId": job}
    assert (world.token.balance_of(world.escrow.address), world.token.balance_of(world.owners[0])) == before
    assert alloc(world, job) == (0, 0, 0, 0)
    assert world.escrow.claimed_of(job, lic[0]) == 0
    receipt = world.escrow.multicall([("applyTotals", ([p.as_abi() for p in proofs],)), ("takeRefund", ([job],)),
                                      ("claim", ([good.as_abi()],))], sender=world.outsider)
    assert [e_.name for e_ in world.escrow.events(receipt)] == ["JobAllocated", "RefundTaken", "Claimed"]
    world.assert_conserved()


def test_multicall_keeps_the_callers_identity(world: World) -> None:
    # calls of the escrow run as the multicall's sender: a stranger cannot act as the job's CSP
    job = world.new_job()
    with pytest.raises(reverts.JobEscrowNotJobOwner) as err:
        world.escrow.multicall([("updateSpec", (job, b"\x66" * 32))], sender=world.outsider)
    assert err.value.args_by_name == {"jobId": job, "caller": world.outsider}
    receipt = world.escrow.multicall([("updateSpec", (job, b"\x66" * 32)), ("updateSpec", (job, b"\x67" * 32))],
                                     sender=world.csp)
    assert [e.args["current"] for e in world.escrow.events(receipt)] == [b"\x66" * 32, b"\x67" * 32]


# ---------------------------------------------------------------------------------------- claim


def test_claim_pays_license_owner_cumulatively(world: World) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE, 1: PRICE // 2})
    lic, owner = world.license_ids[0], world.owners[0]
    before = world.token.balance_of(owner)
    # a keeper claims: the money goes to the license owner, not the caller
    receipt = world.escrow.claim([world.claim_of(tree, epoch, job, lic, PRICE)], sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "Claimed", jobId=job, licenseId=lic, owner=owner, amount=PRICE)]
    assert transfers(world.token, receipt) == [(world.escrow.address, owner, PRICE)]
    assert world.token.balance_of(owner) == before + PRICE
    assert world.escrow.claimed_of(job, lic) == PRICE
    assert world.escrow.get_job(job).release_spent == PRICE
    # the next epoch raises the cumulative amount: only the difference is paid
    world.advance_to_epoch(epoch + 2)
    tree2, _ = report(world, epoch + 1, job, {0: 2 * PRICE, 1: PRICE})
    receipt = world.escrow.claim([world.claim_of(tree2, epoch + 1, job, lic, 2 * PRICE)], sender=owner)
    assert world.escrow.events(receipt) == [ev(world, "Claimed", jobId=job, licenseId=lic, owner=owner, amount=PRICE)]
    assert world.token.balance_of(owner) == before + 2 * PRICE
    assert world.escrow.claimed_of(job, lic) == 2 * PRICE
    world.assert_conserved()


def test_claim_batches_transfers_per_owner(world: World) -> None:
    j1, j2 = world.new_job(), world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 1)
    lic = world.license_ids
    pay: dict[tuple[int, int], int] = {(j1, lic[0]): 300, (j2, lic[0]): 500, (j2, lic[1]): 700}
    tree = world.post_report(e, pay, [JobTotals(j1, TokenUnits(300), TokenUnits(0), TokenUnits(0)),
                                      JobTotals(j2, TokenUnits(1200), TokenUnits(0), TokenUnits(0))])
    claims = [world.claim_of(tree, e, j, license_id, amount) for (j, license_id), amount in pay.items()]
    receipt = world.escrow.claim(claims, sender=world.outsider)
    assert world.escrow.events(receipt) == [
        ev(world, "Claimed", jobId=j1, licenseId=lic[0], owner=world.owners[0], amount=300),
        ev(world, "Claimed", jobId=j2, licenseId=lic[0], owner=world.owners[0], amount=500),
        ev(world, "Claimed", jobId=j2, licenseId=lic[1], owner=world.owners[1], amount=700),
    ]
    # two jobs to one owner: one transfer of the sum
    assert transfers(world.token, receipt) == [(world.escrow.address, world.owners[0], 800),
                                               (world.escrow.address, world.owners[1], 700)]
    world.assert_conserved()


def test_claim_pays_current_license_owner(world: World) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE})
    lic = world.license_ids[0]
    world.licenses.transfer(lic, world.outsider, sender=world.owners[0])  # the deed was sold
    receipt = world.escrow.claim([world.claim_of(tree, epoch, job, lic, PRICE)], sender=world.owners[0])
    assert transfers(world.token, receipt) == [(world.escrow.address, world.outsider, PRICE)]
    assert world.escrow.events(receipt)[0].args["owner"] == world.outsider
    world.assert_conserved()


def test_claim_errors(world: World) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE})
    lic = world.license_ids[0]
    good = world.claim_of(tree, epoch, job, lic, PRICE)
    with pytest.raises(reverts.JobEscrowUnknownEpoch) as unknown:
        world.escrow.claim([Claim(job, good.license_id, Epoch(epoch + 5), good.cumulative, good.proof)],
                           sender=world.outsider)
    assert unknown.value.args_by_name == {"epoch": epoch + 5}
    with pytest.raises(reverts.JobEscrowInvalidProof) as bad:
        world.escrow.claim([Claim(job, good.license_id, good.epoch, TokenUnits(PRICE + 1), good.proof)],
                           sender=world.outsider)
    assert bad.value.args_by_name == {"jobId": job, "licenseId": lic}
    world.escrow.claim([good], sender=world.outsider)
    with pytest.raises(reverts.JobEscrowNothingToClaim) as nothing:
        world.escrow.claim([good], sender=world.outsider)
    assert nothing.value.args_by_name == {"jobId": job, "licenseId": lic}
    world.assert_conserved()


def test_claim_capped_by_release_total(world: World) -> None:
    # leaves promise 2 x PRICE, the totals only allocate PRICE to node pay
    job = world.new_job()
    e = world.escrow.current_epoch()
    world.advance_to_epoch(e + 1)
    lic = world.license_ids
    tree = world.post_report(e, {(job, lic[0]): PRICE, (job, lic[1]): PRICE},
                             [JobTotals(job, PRICE, TokenUnits(0), TokenUnits(0))])
    world.escrow.claim([world.claim_of(tree, e, job, lic[0], PRICE)], sender=world.outsider)
    with pytest.raises(reverts.JobEscrowExceedsAllocation) as err:
        world.escrow.claim([world.claim_of(tree, e, job, lic[1], PRICE)], sender=world.outsider)
    assert err.value.args_by_name == {"jobId": job, "allocated": PRICE, "requested": 2 * PRICE}
    assert world.escrow.claimed_of(job, lic[1]) == 0
    world.assert_conserved()


@pytest.mark.parametrize("status", [LicenseStatus.FROZEN, LicenseStatus.SUSPENDED])
def test_claim_blocked_while_license_restricted(world: World, status: LicenseStatus) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE})
    lic, owner = world.license_ids[0], world.owners[0]
    world.licenses.set_status(lic, status, sender=world.admin)
    claim = world.claim_of(tree, epoch, job, lic, PRICE)
    with pytest.raises(reverts.JobEscrowLicenseRestricted) as err:
        world.escrow.claim([claim], sender=owner)
    assert err.value.args_by_name == {"licenseId": lic, "status": status}
    assert world.escrow.claimed_of(job, lic) == 0
    world.licenses.set_status(lic, LicenseStatus.ACTIVE, sender=world.admin)  # lifted: the pay is still there
    before = world.token.balance_of(owner)
    world.escrow.claim([claim], sender=owner)
    assert world.token.balance_of(owner) == before + PRICE
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- forfeit


def test_forfeit_requires_blacklisted_license(world: World) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE})
    lic = world.license_ids[0]
    claim = world.claim_of(tree, epoch, job, lic, PRICE)
    with pytest.raises(reverts.JobEscrowLicenseNotBlacklisted) as active:
        world.escrow.forfeit([claim], sender=world.outsider)
    assert active.value.args_by_name == {"licenseId": lic, "status": LicenseStatus.ACTIVE}
    world.licenses.set_status(lic, LicenseStatus.FROZEN, sender=world.admin)
    with pytest.raises(reverts.JobEscrowLicenseNotBlacklisted) as frozen:
        world.escrow.forfeit([claim], sender=world.outsider)
    assert frozen.value.args_by_name == {"licenseId": lic, "status": LicenseStatus.FROZEN}
    assert world.escrow.get_job(job).forfeited == 0


def test_forfeit_burns_blacklisted_pay(world: World) -> None:
    job, epoch, tree = settled_job(world, {0: PRICE, 1: 3})
    lic = world.license_ids[0]
    world.licenses.set_status(lic, LicenseStatus.BLACKLISTED, sender=world.admin)
    claim = world.claim_of(tree, epoch, job, lic, PRICE)
    with pytest.raises(reverts.JobEscrowLicenseRestricted) as err:
        world.escrow.claim([claim], sender=world.owners[0])
    assert err.value.args_by_name == {"licenseId": lic, "status": LicenseStatus.BLACKLISTED}
    burned_before = world.token.balance_of(BURN)
    receipt = world.escrow.forfeit([claim], sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "Forfeited", jobId=job, licenseId=lic, amount=PRICE)]
    assert transfers(world.token, receipt) == [(world.escrow.address, BURN, PRICE)]
    assert world.token.balance_of(BURN) == burned_before + PRICE
    state = world.escrow.get_job(job)
    assert (state.forfeited, state.release_spent, world.escrow.claimed_of(job, lic)) == (PRICE, PRICE, PRICE)
    with pytest.raises(reverts.JobEscrowNothingToClaim):
        world.escrow.forfeit([claim], sender=world.outsider)
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- refunds and burns


def test_take_refund_and_execute_burn(world: World) -> None:
    job, epoch, _ = settled_job(world, {}, refund=400, burn=90)
    csp_before, burn_before = world.token.balance_of(world.csp), world.token.balance_of(BURN)
    receipt = world.escrow.take_refund([job], sender=world.outsider)  # anyone may trigger it
    assert world.escrow.events(receipt) == [ev(world, "RefundTaken", jobId=job, csp=world.csp, amount=400)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, 400)]
    receipt = world.escrow.execute_burn([job], sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "BurnExecuted", jobId=job, amount=90)]
    assert transfers(world.token, receipt) == [(world.escrow.address, BURN, 90)]
    assert (world.token.balance_of(world.csp), world.token.balance_of(BURN)) == (csp_before + 400, burn_before + 90)
    for op in (world.escrow.take_refund, world.escrow.execute_burn):
        with pytest.raises(reverts.JobEscrowNothingDue) as err:
            op([job], sender=world.outsider)
        assert err.value.args_by_name == {"jobId": job}
        with pytest.raises(reverts.JobEscrowUnknownJob):
            op([job + 1], sender=world.outsider)
    # a later report raises the cumulative refund: only the increase is paid
    world.advance_to_epoch(epoch + 2)
    report(world, epoch + 1, job, {}, refund=1000, burn=90)
    receipt = world.escrow.take_refund([job], sender=world.csp)
    assert world.escrow.events(receipt) == [ev(world, "RefundTaken", jobId=job, csp=world.csp, amount=600)]
    state = world.escrow.get_job(job)
    assert (state.refunded, state.burned) == (1000, 90)
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- governance


def test_set_attester(world: World) -> None:
    old, new = world.attester, key(201)
    receipt = world.escrow.set_attester(new.address, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "AttesterChanged", previous=old.address, current=new.address)]
    assert world.escrow.attester() == new.address
    valid_until, nonce, sig = world.admission(world.csp2, signer=old)
    with pytest.raises(reverts.JobEscrowInvalidAttestation) as err:
        world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert err.value.args_by_name == {"signer": old.address}
    valid_until, nonce, sig = world.admission(world.csp2, signer=new)
    world.escrow.admit_csp(world.csp2, KYC, valid_until, nonce, sig, sender=world.csp2)
    assert world.escrow.is_csp_admitted(world.csp2)


def test_set_token_allowed(world: World) -> None:
    other = world.outsider  # any address can be listed; the flag is what matters
    assert not world.escrow.is_token_allowed(other)
    receipt = world.escrow.set_token_allowed(other, True, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "TokenAllowanceChanged", token=other, allowed=True)]
    assert world.escrow.is_token_allowed(other)
    receipt = world.escrow.set_token_allowed(world.token.address, False, sender=world.admin)
    assert world.escrow.events(receipt) == [
        ev(world, "TokenAllowanceChanged", token=world.token.address, allowed=False)]
    assert not world.escrow.is_token_allowed(world.token.address)


def test_set_csp_status_and_blacklisting_is_final(world: World) -> None:
    csp = world.csp
    receipt = world.escrow.set_csp_status(csp, CspStatus.FROZEN, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "CspStatusChanged", csp=csp, previous=CspStatus.ACTIVE,
                                               current=CspStatus.FROZEN)]
    assert world.escrow.csp_status(csp) == CspStatus.FROZEN
    assert not world.escrow.is_csp_admitted(csp)
    with pytest.raises(reverts.JobEscrowCspStatusUnchanged) as same:
        world.escrow.set_csp_status(csp, CspStatus.FROZEN, sender=world.admin)
    assert same.value.args_by_name == {"csp": csp, "status": CspStatus.FROZEN}
    world.escrow.set_csp_status(csp, CspStatus.ACTIVE, sender=world.admin)
    assert world.escrow.is_csp_admitted(csp)
    receipt = world.escrow.set_csp_status(csp, CspStatus.BLACKLISTED, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "CspStatusChanged", csp=csp, previous=CspStatus.ACTIVE,
                                               current=CspStatus.BLACKLISTED)]
    for status in CspStatus:
        with pytest.raises(reverts.JobEscrowCspStatusUnchanged) as final:
            world.escrow.set_csp_status(csp, status, sender=world.admin)
        assert final.value.args_by_name == {"csp": csp, "status": CspStatus.BLACKLISTED}
    assert world.escrow.csp_status(csp) == CspStatus.BLACKLISTED


def test_access_control_roles(world: World) -> None:
    gov, admin_role = world.escrow.role("GOVERNANCE_ROLE"), world.escrow.role("DEFAULT_ADMIN_ROLE")
    assert (gov, admin_role) == (keccak(text="GOVERNANCE_ROLE"), ZERO32)
    assert world.escrow.has_role(gov, world.admin)
    assert world.escrow.has_role(admin_role, world.admin)
    assert bytes(world.escrow._view("getRoleAdmin", gov)) == admin_role
    receipt = world.escrow.grant_role(gov, world.outsider, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "RoleGranted", role=gov, account=world.outsider,
                                               sender=world.admin)]
    world.escrow.set_token_allowed(world.csp2, True, sender=world.outsider)  # governance now
    receipt = world.escrow._tx("revokeRole", gov, world.outsider, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "RoleRevoked", role=gov, account=world.outsider,
                                               sender=world.admin)]
    with pytest.raises(reverts.AccessControlUnauthorizedAccount):
        world.escrow.set_token_allowed(world.csp2, False, sender=world.outsider)
    receipt = world.escrow._tx("renounceRole", gov, world.admin, sender=world.admin)
    assert world.escrow.events(receipt) == [ev(world, "RoleRevoked", role=gov, account=world.admin,
                                               sender=world.admin)]
    assert not world.escrow.has_role(gov, world.admin)
    with pytest.raises(reverts.AccessControlBadConfirmation):  # only for oneself
        world.escrow._tx("renounceRole", admin_role, world.csp, sender=world.admin)
    # ERC-165: IERC165 and IAccessControl, nothing else
    assert [world.escrow._view("supportsInterface", bytes.fromhex(i)) for i in ("01ffc9a7", "7965db0b", "ffffffff")
            ] == [True, True, False]


# ---------------------------------------------------------------------------------------- views


def test_views(world: World) -> None:
    escrow = world.escrow
    assert escrow.epoch_clock() == (world.dep.genesis_time, EPOCH_SECONDS, GRACE_EPOCHS)
    e = escrow.current_epoch()
    world.advance_to_epoch(e + 4)
    assert escrow.current_epoch() == (world.chain.now() - world.dep.genesis_time) // EPOCH_SECONDS == e + 4
    assert (escrow.next_epoch(), escrow.root_of(e), escrow.last_job_id()) == (0, ZERO32, 0)
    assert (escrow.totals_root_of(e), escrow.settled_until(1)) == (ZERO32, 0)
    assert world.chain.read_many([escrow.settled_until_call(1)]) == [0]
    assert escrow.get_job(1).status == JobStatus.NONE
    assert escrow.claimed_of(1, world.license_ids[0]) == 0
    assert escrow.is_csp_admitted(world.csp)
    assert not escrow.is_csp_admitted(world.csp2)
    assert not escrow.is_csp_admitted(world.outsider)
    assert escrow.admitted_until(world.csp) > world.chain.now()
    assert (escrow.csp_status(world.csp), escrow.csp_status(world.outsider)) == (CspStatus.ACTIVE, CspStatus.ACTIVE)
    assert escrow.is_token_allowed(world.token.address)
    assert not escrow.is_token_allowed(world.outsider)
    assert escrow.attester() == world.attester.address
    assert escrow.registries() == (world.licenses.address, world.oracles.address)
    assert to_checksum_address(escrow._view("BURN_ADDRESS")) == BURN
    assert (escrow._view("LEAF_RELEASE"), escrow._view("LEAF_TOTALS")) == (1, 2)
    fields, name, version, chain_id, verifying, salt, extensions = escrow._view("eip712Domain")
    assert (fields, name, version, chain_id, verifying, salt, extensions) == (
        b"\x0f", "deedmesh JobEscrow", "1", world.chain.chain_id, escrow.address, ZERO32, [])


def test_signed_formats_match_python(world: World) -> None:
    escrow, domain = world.escrow, world.escrow.domain()
    assert domain == escrow_domain(world.chain.chain_id, escrow.address)
    big = 2**128 - 1
    for t in (JobTotals(JobId(1), TokenUnits(5), TokenUnits(6), TokenUnits(7)),
              JobTotals(JobId(2**200), TokenUnits(big), TokenUnits(0), TokenUnits(big)),
              JobTotals(JobId(0), TokenUnits(0), TokenUnits(0), TokenUnits(0))):
        assert escrow.totals_leaf(t) == totals_leaf(t)
    for job, lic, amount in ((1, 1, 1), (2**255, 7, 2**256 - 1), (0, 0, 0)):
        assert escrow.release_leaf(job, lic, amount) == release_leaf(job, lic, amount)
    root, th = b"\xab" * 32, totals_root([JobTotals(JobId(3), TokenUnits(1), TokenUnits(2), TokenUnits(3))])
    assert escrow.epoch_report_digest(9, root, th) == digest(epoch_report(domain, 9, root, th))
    assert escrow.csp_admission_digest(world.csp, KYC, 2**64 - 1, 42) == digest(
        csp_admission(domain, world.csp, KYC, 2**64 - 1, 42))
    assert escrow.job_submission_digest(5, b"\x5e" * 32, 3, 1_000) == digest(
        job_submission(domain, 5, b"\x5e" * 32, 3, 1_000))
    # the domain binds the chain: a digest under another chain id differs
    other = escrow_domain(world.chain.chain_id + 1, escrow.address)
    assert escrow.epoch_report_digest(9, root, th) != digest(epoch_report(other, 9, root, th))


def test_job_params_deposit_matches_contract(world: World) -> None:
    # JobParams.deposit is what the Python side approves: it must be what the contract pulls
    params = JobParams(spec_hash=b"\x01" * 32, token=world.token.address, replicas=7, epochs=11,
                       start_epoch=Epoch(world.escrow.current_epoch() + 1), price_per_node_epoch=TokenUnits(13))
    world.token.approve(world.escrow.address, params.deposit, sender=world.csp)
    job = world.escrow.create_job(params, sender=world.csp)
    assert world.escrow.get_job(job).deposited == params.deposit == 7 * 11 * 13
    world.assert_conserved()
