"""A job settles and pays through the escrow, on anvil (the ``world`` fixture) and on the embedded
chain (eth-tester: the contract tests run on anvil only, see ``conftest``)."""

from __future__ import annotations

from contracts import Chain, JobTotals, totals_proofs

from .world import PRICE, World, build_world


def test_job_settles_and_pays_on_the_embedded_chain() -> None:
    test_job_settles_and_pays(build_world(Chain.embedded()))


def test_job_settles_and_pays(world: World) -> None:
    job = world.new_job(replicas=2, epochs=1)
    start = world.escrow.get_job(job).start_epoch
    world.advance_to_epoch(start + 1)
    lic = world.license_ids
    pay = {(job, lic[0]): PRICE, (job, lic[1]): PRICE // 2}
    totals = [JobTotals(job, PRICE + PRICE // 2, PRICE // 2, 0)]
    tree = world.post_report(start, pay, totals, apply=False)
    before = world.token.balance_of(world.owners[0])
    # the claim applies the report's totals of its job in the same transaction
    world.escrow.claim([world.claim_of(tree, start, job, lic[0], PRICE)], sender=world.owners[0],
                       totals=totals_proofs(start, totals))
    assert world.token.balance_of(world.owners[0]) - before == PRICE
    assert world.escrow.settled_until(job) == start + 1
    world.assert_conserved()
