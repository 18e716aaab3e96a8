"""JobEscrow.scaleJob and quoteScale: a running job's replica count changes from the next epoch (or
its start) to its end; a scale-up pulls the difference, a scale-down returns it at once.

Every revert and event is checked by name and arguments, and conservation after every operation.
A scale-down makes ``reclaimed`` non-zero on an active job, so the reports, ``closeJob`` and
``cancelJob`` that follow are checked against the part of the deposit still available. Epochs are
relative to the current one (the embedded chain's clock follows wall time after a snapshot revert).
"""

from __future__ import annotations

from typing import Any

import pytest
from web3.types import TxReceipt

from contracts import (
    CspStatus,
    Event,
    JobId,
    JobStatus,
    JobTotals,
    TokenClient,
    TokenUnits,
    reverts,
)

from .world import GRACE_EPOCHS, PRICE, World

DEPOSIT = PRICE * 2 * 3  # the default new_job: 2 replicas x 3 epochs
SPEC = b"\x5e" * 32  # the default new_job's spec hash
SCALED = b"\x5c" * 32


def ev(world: World, name: str, **args: Any) -> Event:
    return Event(name, args, world.escrow.address)


def transfers(token: TokenClient, receipt: TxReceipt) -> list[tuple[str, str, int]]:
    return [(e.args["from"], e.args["to"], e.args["value"]) for e in token.events(receipt) if e.name == "Transfer"]


def scaled_events(world: World, job: int, previous: int, current: int, from_epoch: int, pulled: int,
                  refunded: int, spec_before: bytes = SPEC, spec_after: bytes = SCALED) -> list[Event]:
    """What a successful scaleJob emits, in order."""
    return [ev(world, "JobScaled", jobId=job, previous=previous, current=current, fromEpoch=from_epoch,
               pulled=pulled, refunded=refunded),
            ev(world, "JobSpecUpdated", jobId=job, previous=spec_before, current=spec_after)]


def running_job(world: World, **kw: Any) -> tuple[JobId, int]:
    """A default job in its first epoch: (job, start epoch). Scales apply from start + 1."""
    job = world.new_job(**kw)
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start)
    return job, start


def csp_license(world: World, csp: str) -> int:
    return next(e.args["licenseId"] for e in world.licenses.logs("LicenseMinted") if e.args["owner"] == csp)


@pytest.fixture(autouse=True)
def _epoch_start(world: World) -> None:
    """Start 1 s into a fresh epoch, so that a test's few transactions never straddle an epoch boundary."""
    world.advance_to_epoch(world.escrow.current_epoch() + 1)


# ---------------------------------------------------------------------------------------- the amounts


def test_scale_up_pulls_exactly(world: World) -> None:
    job, start = running_job(world)
    pull = PRICE * (5 - 2) * 2  # 3 more slots for the 2 epochs after the current one
    assert world.escrow.quote_scale(job, 5) == (pull, 0, start + 1)
    world.token.approve(world.escrow.address, pull, sender=world.csp)
    csp_before, escrow_before = world.token.balance_of(world.csp), world.token.balance_of(world.escrow.address)
    receipt = world.escrow.scale_job(job, 5, SCALED, sender=world.csp)
    assert world.escrow.events(receipt) == scaled_events(world, job, 2, 5, start + 1, pull, 0)
    assert transfers(world.token, receipt) == [(world.csp, world.escrow.address, pull)]
    assert world.token.balance_of(world.csp) == csp_before - pull
    assert world.token.balance_of(world.escrow.address) == escrow_before + pull
    state = world.escrow.get_job(job)
    assert (state.replicas, state.spec_hash, state.deposited, state.reclaimed, state.locked, state.epochs) == (
        5, SCALED, DEPOSIT + pull, 0, DEPOSIT + pull, 3)
    world.assert_conserved()


def test_scale_down_refunds_exactly(world: World) -> None:
    job, start = running_job(world, replicas=4)
    refund = PRICE * (4 - 1) * 2
    assert world.escrow.quote_scale(job, 1) == (0, refund, start + 1)
    csp_before = world.token.balance_of(world.csp)
    receipt = world.escrow.scale_job(job, 1, SCALED, sender=world.csp)  # no allowance needed
    assert world.escrow.events(receipt) == scaled_events(world, job, 4, 1, start + 1, 0, refund)
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, refund)]
    assert world.token.balance_of(world.csp) == csp_before + refund
    state = world.escrow.get_job(job)
    deposit = PRICE * 4 * 3
    assert (state.replicas, state.deposited, state.reclaimed, state.locked, state.held) == (
        1, deposit, refund, deposit - refund, deposit - refund)
    # what is left pays exactly the epoch under way at 4 slots and the last two at 1
    assert state.locked == PRICE * 4 + PRICE * 1 * 2
    world.assert_conserved()


def test_scale_up_then_down_in_later_epochs(world: World) -> None:
    job, start = running_job(world, epochs=4)
    world.token.approve(world.escrow.address, PRICE * 3, sender=world.csp)
    world.escrow.scale_job(job, 3, SCALED, sender=world.csp)  # 3 epochs left at +1
    world.assert_conserved()
    world.advance_to_epoch(start + 2)
    assert world.escrow.quote_scale(job, 1) == (0, PRICE * 2 * 1, start + 3)
    receipt = world.escrow.scale_job(job, 1, b"\x01" * 32, sender=world.csp)
    assert world.escrow.events(receipt) == scaled_events(world, job, 3, 1, start + 3, 0, PRICE * 2,
                                                         spec_before=SCALED, spec_after=b"\x01" * 32)
    state = world.escrow.get_job(job)
    assert (state.deposited, state.reclaimed) == (PRICE * 2 * 4 + PRICE * 3, PRICE * 2)
    # paid slot-epochs: 2 (start) + 3 + 3 (start+1, start+2) + 1 (start+3)
    assert state.locked == PRICE * (2 + 3 + 3 + 1)
    world.assert_conserved()


def test_scale_before_start_covers_every_epoch_and_cancel_returns_the_rest(world: World) -> None:
    e = world.escrow.current_epoch()
    job = world.new_job(start_epoch=e + 3)
    world.token.approve(world.escrow.address, PRICE * 3, sender=world.csp)
    assert world.escrow.quote_scale(job, 3) == (PRICE * 3, 0, e + 3)  # from the start, not from e + 1
    receipt = world.escrow.scale_job(job, 3, SCALED, sender=world.csp)
    assert world.escrow.events(receipt) == scaled_events(world, job, 2, 3, e + 3, PRICE * 3, 0)
    world.assert_conserved()
    receipt = world.escrow.scale_job(job, 1, SPEC, sender=world.csp)
    assert world.escrow.events(receipt) == scaled_events(world, job, 3, 1, e + 3, 0, PRICE * 2 * 3,
                                                         spec_before=SCALED, spec_after=SPEC)
    world.assert_conserved()
    deposited = DEPOSIT + PRICE * 3
    state = world.escrow.get_job(job)
    assert (state.deposited, state.reclaimed, state.locked) == (deposited, PRICE * 6, PRICE * 3)
    csp_before = world.token.balance_of(world.csp)
    receipt = world.escrow.cancel_job(job, sender=world.csp)
    assert world.escrow.events(receipt) == [ev(world, "JobCancelled", jobId=job, refund=PRICE * 3)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, PRICE * 3)]
    assert world.token.balance_of(world.csp) == csp_before + PRICE * 3
    state = world.escrow.get_job(job)
    assert (state.status, state.reclaimed, state.held) == (JobStatus.CANCELLED, deposited, 0)
    world.assert_conserved()


def test_scale_up_overflowing_the_deposit_reverts(world: World) -> None:
    # deposits are uint128: a scale-up that would take the deposit past it reverts before pulling
    price = 2**100
    world.token.mint(world.csp, 2 * price, sender=world.admin)
    job, _ = running_job(world, replicas=1, epochs=2, price=price)
    pull = price * (2**32 - 2)
    with pytest.raises(reverts.SafeCastOverflowedUintDowncast) as err:
        world.escrow.scale_job(job, 2**32 - 1, SCALED, sender=world.csp)
    assert err.value.args_by_name == {"bits": 128, "value": 2 * price + pull}
    assert world.escrow.get_job(job).replicas == 1
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- what is refused


def test_scale_in_the_last_epoch_or_later_is_job_ended(world: World) -> None:
    job, start = running_job(world)
    world.advance_to_epoch(start + 1)
    assert world.escrow.quote_scale(job, 3) == (PRICE, 0, start + 2)  # the last epoch is still ahead
    for epoch in (start + 2, start + 3, start + 3 + GRACE_EPOCHS):  # in the last epoch, at the end, closable
        world.advance_to_epoch(epoch)
        for replicas in (1, 3):
            with pytest.raises(reverts.JobEscrowJobEnded) as err:
                world.escrow.scale_job(job, replicas, SCALED, sender=world.csp)
            assert err.value.args_by_name == {"jobId": job, "endEpoch": start + 3}
            with pytest.raises(reverts.JobEscrowJobEnded):
                world.escrow.quote_scale(job, replicas)
    state = world.escrow.get_job(job)
    assert (state.replicas, state.deposited, state.reclaimed) == (2, DEPOSIT, 0)
    world.assert_conserved()


def test_scale_to_the_same_or_zero_replicas_is_refused(world: World) -> None:
    job, _ = running_job(world)
    for send in (lambda: world.escrow.scale_job(job, 2, SCALED, sender=world.csp),
                 lambda: world.escrow.quote_scale(job, 2)):
        with pytest.raises(reverts.JobEscrowReplicasUnchanged) as same:
            send()
        assert same.value.args_by_name == {"jobId": job, "replicas": 2}
    for send in (lambda: world.escrow.scale_job(job, 0, SCALED, sender=world.csp),
                 lambda: world.escrow.quote_scale(job, 0)):  # a stop is not a scale
        with pytest.raises(reverts.JobEscrowInvalidShape) as zero:
            send()
        assert zero.value.args_by_name == {"replicas": 0, "epochs": 3, "pricePerNodeEpoch": PRICE}
    state = world.escrow.get_job(job)
    assert (state.replicas, state.spec_hash, state.deposited) == (2, SPEC, DEPOSIT)
    world.assert_conserved()


def test_scale_only_by_the_owner_of_an_active_job(world: World) -> None:
    job, start = running_job(world)
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp2)
    for stranger in (world.csp2, world.outsider):
        for replicas in (1, 3):
            with pytest.raises(reverts.JobEscrowNotJobOwner) as owner:
                world.escrow.scale_job(job, replicas, SCALED, sender=stranger)
            assert owner.value.args_by_name == {"jobId": job, "caller": stranger}
    assert world.escrow.quote_scale(job, 3) == (PRICE * 2, 0, start + 1)  # anyone may ask
    with pytest.raises(reverts.JobEscrowUnknownJob) as unknown:
        world.escrow.scale_job(job + 1, 3, SCALED, sender=world.csp)
    assert unknown.value.args_by_name == {"jobId": job + 1}
    with pytest.raises(reverts.JobEscrowUnknownJob):
        world.escrow.quote_scale(job + 1, 3)
    e = world.escrow.current_epoch()
    cancelled = world.new_job(start_epoch=e + 2)
    world.escrow.cancel_job(cancelled, sender=world.csp)
    world.advance_to_epoch(start + 3 + GRACE_EPOCHS)
    world.escrow.close_job(job, sender=world.outsider)
    for done, status in ((cancelled, JobStatus.CANCELLED), (job, JobStatus.CLOSED)):
        with pytest.raises(reverts.JobEscrowJobNotActive) as inactive:
            world.escrow.scale_job(done, 1, SCALED, sender=world.csp)
        assert inactive.value.args_by_name == {"jobId": done, "status": status}
        with pytest.raises(reverts.JobEscrowJobNotActive) as quoted:
            world.escrow.quote_scale(done, 1)
        assert quoted.value.args_by_name == {"jobId": done, "status": status}
    world.assert_conserved()


@pytest.mark.parametrize("status", [CspStatus.FROZEN, CspStatus.SUSPENDED, CspStatus.BLACKLISTED])
def test_restricted_csp_may_scale_down_but_not_up(world: World, status: CspStatus) -> None:
    job, start = running_job(world, replicas=3)
    world.escrow.set_csp_status(world.csp, status, sender=world.admin)
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp)
    with pytest.raises(reverts.JobEscrowCspRestricted) as err:
        world.escrow.scale_job(job, 4, SCALED, sender=world.csp)
    assert err.value.args_by_name == {"csp": world.csp, "status": status}
    assert world.escrow.quote_scale(job, 4) == (PRICE * 2, 0, start + 1)  # the quote does not judge the CSP
    world.assert_conserved()
    # shrinking only returns the CSP's own unspent money: allowed whatever its standing
    receipt = world.escrow.scale_job(job, 1, SCALED, sender=world.csp)
    assert world.escrow.events(receipt) == scaled_events(world, job, 3, 1, start + 1, 0, PRICE * 2 * 2)
    assert world.escrow.get_job(job).reclaimed == PRICE * 4
    world.assert_conserved()


def test_unadmitted_or_unlicensed_csp_may_scale_down_but_not_up(world: World) -> None:
    valid_until, nonce, sig = world.admission(world.csp2, valid_for_s=150)
    world.escrow.admit_csp(world.csp2, b"\x11" * 32, valid_until, nonce, sig, sender=world.csp2)
    job = world.new_job(csp=world.csp2, replicas=3, epochs=4)
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start)
    assert not world.escrow.is_csp_admitted(world.csp2)  # the admission lapsed
    world.token.approve(world.escrow.address, DEPOSIT, sender=world.csp2)
    with pytest.raises(reverts.JobEscrowCspNotAdmitted) as lapsed:
        world.escrow.scale_job(job, 4, SCALED, sender=world.csp2)
    assert lapsed.value.args_by_name == {"csp": world.csp2}
    world.escrow.scale_job(job, 2, SCALED, sender=world.csp2)
    world.assert_conserved()
    world.admit(world.csp2)
    world.licenses.transfer(csp_license(world, world.csp2), world.outsider, sender=world.csp2)  # sold its deed
    with pytest.raises(reverts.JobEscrowCspHoldsNoLicense) as unlicensed:
        world.escrow.scale_job(job, 3, SCALED, sender=world.csp2)
    assert unlicensed.value.args_by_name == {"csp": world.csp2}
    receipt = world.escrow.scale_job(job, 1, SPEC, sender=world.csp2)
    assert world.escrow.events(receipt) == scaled_events(world, job, 2, 1, start + 1, 0, PRICE * 3,
                                                         spec_before=SCALED, spec_after=SPEC)
    state = world.escrow.get_job(job)
    assert (state.replicas, state.reclaimed) == (1, PRICE * 3 + PRICE * 3)
    world.assert_conserved()


def test_scale_up_without_allowance_moves_nothing(world: World) -> None:
    job, _ = running_job(world)
    before = (world.token.balance_of(world.csp), world.token.balance_of(world.escrow.address))
    with pytest.raises(reverts.ERC20InsufficientAllowance) as err:
        world.escrow.scale_job(job, 3, SCALED, sender=world.csp)
    assert err.value.args_by_name == {"spender": world.escrow.address, "allowance": 0, "needed": PRICE * 2}
    assert (world.token.balance_of(world.csp), world.token.balance_of(world.escrow.address)) == before
    state = world.escrow.get_job(job)
    assert (state.replicas, state.spec_hash, state.deposited) == (2, SPEC, DEPOSIT)
    world.assert_conserved()


def test_scale_up_refuses_a_token_that_starts_taking_a_fee(world: World) -> None:
    token, _ = world.chain.deploy("FeeOnTransferToken", sender=world.admin)
    world.escrow.set_token_allowed(token.address, True, sender=world.admin)
    world.chain.transact(token.functions.setFeeEnabled(False), world.admin)
    world.chain.transact(token.functions.mint(world.csp, 10**9), world.admin)
    world.chain.transact(token.functions.approve(world.escrow.address, 10**9), world.csp)
    job = world.escrow.create_job(world.params(token=token.address), sender=world.csp)  # funded in full
    world.chain.transact(token.functions.setFeeEnabled(True), world.admin)
    before = (token.functions.balanceOf(world.escrow.address).call(), token.functions.balanceOf(world.csp).call())
    assert before[0] == DEPOSIT
    pull = PRICE * 3  # 1 more slot for the 3 epochs from the start
    with pytest.raises(reverts.JobEscrowTransferMismatch) as err:
        world.escrow.scale_job(job, 3, SCALED, sender=world.csp)
    assert err.value.args_by_name == {"expected": pull, "received": pull - pull // 100}
    assert (token.functions.balanceOf(world.escrow.address).call(),
            token.functions.balanceOf(world.csp).call()) == before
    state = world.escrow.get_job(job)
    assert (state.replicas, state.deposited) == (2, DEPOSIT)
    # a scale-down pays out and pulls nothing: the fee is the recipient's loss, not the escrow's
    receipt = world.escrow.scale_job(job, 1, SCALED, sender=world.csp)
    assert [e.name for e in world.escrow.events(receipt)] == ["JobScaled", "JobSpecUpdated"]
    assert token.functions.balanceOf(world.escrow.address).call() == DEPOSIT - PRICE * 3
    assert world.escrow.get_job(job).held == DEPOSIT - PRICE * 3
    world.assert_conserved()


def test_scale_down_refused_when_reports_allocated_what_it_would_return(world: World) -> None:
    # a quorum allocated more of the deposit than the epochs so far could have earned: what a
    # scale-down would return is no longer there, so it is refused rather than taken from node pay
    job, start = running_job(world)
    world.advance_to_epoch(start + 1)
    over = DEPOSIT - PRICE + 1
    world.post_report(start, {}, [JobTotals(job, TokenUnits(over), TokenUnits(0), TokenUnits(0))])
    for send in (lambda: world.escrow.scale_job(job, 1, SCALED, sender=world.csp),
                 lambda: world.escrow.quote_scale(job, 1)):
        with pytest.raises(reverts.JobEscrowRefundExceedsLocked) as err:
            send()
        assert err.value.args_by_name == {"jobId": job, "refund": PRICE, "locked": PRICE - 1}
    world.token.approve(world.escrow.address, PRICE, sender=world.csp)
    world.escrow.scale_job(job, 3, SCALED, sender=world.csp)  # scaling up is still fine
    assert world.escrow.get_job(job).locked == PRICE - 1 + PRICE
    world.assert_conserved()


# ---------------------------------------------------------------------------------------- reports and close


def test_report_after_scale_down_is_capped_by_what_remains(world: World) -> None:
    job, start = running_job(world)
    world.advance_to_epoch(start + 1)
    world.escrow.scale_job(job, 1, SCALED, sender=world.csp)  # the last epoch at 1 slot: PRICE back
    available = DEPOSIT - PRICE
    world.advance_to_epoch(start + 4)
    over = [JobTotals(job, TokenUnits(available - 1), TokenUnits(2), TokenUnits(0))]
    world.post_report(start + 2, {}, over, apply=False)  # lands: a report touches no job
    with pytest.raises(reverts.JobEscrowExceedsDeposit) as err:
        world.apply(start + 2, over)
    assert err.value.args_by_name == {"jobId": job, "allocated": available + 1, "available": available}
    assert world.escrow.settled_until(job) == 0
    world.assert_conserved()
    world.post_report(start + 3, {}, [JobTotals(job, TokenUnits(available - 1), TokenUnits(1), TokenUnits(0))])
    state = world.escrow.get_job(job)
    assert (state.locked, state.reclaimed) == (0, PRICE)
    world.assert_conserved()
    # nothing is left to return at the close, and what was returned at the scale stays counted
    world.advance_to_epoch(start + 3 + GRACE_EPOCHS)
    receipt = world.escrow.close_job(job, sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "JobClosed", jobId=job, reclaimed=0)]
    assert transfers(world.token, receipt) == []
    assert world.escrow.get_job(job).reclaimed == PRICE
    world.assert_conserved()


def test_scale_down_after_a_report_landed_caps_its_unapplied_totals(world: World) -> None:
    # the escrow checks a scale-down against the applied totals only: a landed report that allocated
    # more than the epochs so far could have earned (a dishonest quorum) but was not applied yet no
    # longer fits after the scale-down, and is refused when someone applies it
    job, start = running_job(world)
    world.advance_to_epoch(start + 1)
    over = [JobTotals(job, TokenUnits(DEPOSIT - PRICE + 1), TokenUnits(0), TokenUnits(0))]
    world.post_report(start, {}, over, apply=False)
    world.escrow.scale_job(job, 1, SCALED, sender=world.csp)  # PRICE back: the applied totals are still zero
    with pytest.raises(reverts.JobEscrowExceedsDeposit) as err:
        world.apply(start, over)
    assert err.value.args_by_name == {"jobId": job, "allocated": DEPOSIT - PRICE + 1, "available": DEPOSIT - PRICE}
    state = world.escrow.get_job(job)
    assert (state.alloc_release, state.reclaimed, state.locked) == (0, PRICE, DEPOSIT - PRICE)
    world.assert_conserved()


def test_close_after_scales_returns_exactly_the_remainder(world: World) -> None:
    job, start = running_job(world, replicas=3, epochs=4)
    world.escrow.scale_job(job, 1, SCALED, sender=world.csp)  # 2 slots x 3 epochs back
    world.advance_to_epoch(start + 1)
    world.token.approve(world.escrow.address, PRICE * 2, sender=world.csp)
    world.escrow.scale_job(job, 2, SPEC, sender=world.csp)  # 1 slot x 2 epochs more
    world.assert_conserved()
    world.advance_to_epoch(start + 2)
    lic = world.license_ids
    tree = world.post_report(start + 1, {(job, lic[0]): 2 * PRICE},
                             [JobTotals(job, TokenUnits(2 * PRICE), TokenUnits(PRICE), TokenUnits(PRICE // 2))])
    deposited, reclaimed = PRICE * 3 * 4 + PRICE * 2, PRICE * 6
    remainder = deposited - reclaimed - 2 * PRICE - PRICE - PRICE // 2
    state = world.escrow.get_job(job)
    assert (state.deposited, state.reclaimed, state.locked) == (deposited, reclaimed, remainder)
    closable_from = start + 4 + GRACE_EPOCHS
    world.advance_to_epoch(closable_from - 1)
    with pytest.raises(reverts.JobEscrowJobNotClosable) as early:
        world.escrow.close_job(job, sender=world.outsider)
    assert early.value.args_by_name == {"jobId": job, "closableFrom": closable_from}
    world.advance_to_epoch(closable_from)
    csp_before = world.token.balance_of(world.csp)
    receipt = world.escrow.close_job(job, sender=world.outsider)
    assert world.escrow.events(receipt) == [ev(world, "JobClosed", jobId=job, reclaimed=remainder)]
    assert transfers(world.token, receipt) == [(world.escrow.address, world.csp, remainder)]
    assert world.token.balance_of(world.csp) == csp_before + remainder
    state = world.escrow.get_job(job)
    assert (state.status, state.reclaimed, state.locked) == (JobStatus.CLOSED, reclaimed + remainder, 0)
    world.assert_conserved()
    # what was allocated stays payable, and then the escrow holds nothing for the job
    world.escrow.claim([world.claim_of(tree, start + 1, job, lic[0], 2 * PRICE)], sender=world.outsider)
    world.escrow.take_refund([job], sender=world.outsider)
    world.escrow.execute_burn([job], sender=world.outsider)
    assert world.escrow.get_job(job).held == 0
    assert world.token.balance_of(world.escrow.address) == 0
    world.assert_conserved()
