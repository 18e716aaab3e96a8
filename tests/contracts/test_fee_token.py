"""A token that delivers less than was sent is refused: the escrow's books must match its balance."""

from __future__ import annotations

import pytest

from contracts import reverts

from .world import World


def test_fee_on_transfer_token_is_refused_and_moves_nothing(world: World) -> None:
    token, _ = world.chain.deploy("FeeOnTransferToken", sender=world.admin)
    world.escrow.set_token_allowed(token.address, True, sender=world.admin)  # governance erred: still safe
    world.chain.transact(token.functions.mint(world.csp, 10**9), world.admin)
    params = world.params(token=token.address, replicas=1, epochs=1)
    world.chain.transact(token.functions.approve(world.escrow.address, params.deposit), world.csp)
    before = world.escrow.last_job_id()
    with pytest.raises(reverts.JobEscrowTransferMismatch) as err:
        world.escrow.create_job(params, sender=world.csp)
    assert err.value.args_by_name == {"expected": params.deposit, "received": params.deposit - params.deposit // 100}
    assert world.escrow.last_job_id() == before
    assert token.functions.balanceOf(world.escrow.address).call() == 0
    assert token.functions.balanceOf(world.csp).call() == 10**9
    world.assert_conserved()
