"""What the oracles settle from the mesh's view of the nodes, with faults of their own, on real
libp2p hosts (127.0.0.1), on the embedded chain (harness: ``_setting``, which can run anvil too). Four oracles
are registered (t = 3); two licensed nodes hold a two-replica job of two 9-second epochs.

- The first epoch, both holders serving it all: the oracles land its report, every oracle keeps it.
- The second: one holder goes down partway through. It kept its replica for a while after its
  beats stopped (suspect, until declared dead), so its availability during its tenure is below
  the job's release threshold and its share is withheld (SETTLEMENT.md rule 2); that and the rest
  of its slot, which nobody served (the other node already holds a replica of the job: rule 1),
  are refunded to the CSP on chain.
- In the same epoch the other holder's license is blacklisted on chain: the report burns its
  share (rule 3), a keeper executes the burn (applying the totals first), and the node's pay from
  the first epoch, unclaimed, is forfeited to the burn address; its owner can no longer claim it.
- And halfway through it the epoch's first leader is killed, its mesh participant with it: the
  next in line lands the epoch in the second round, three of four oracles (one offline) finalize it.

At the end conservation holds on chain, and the audit over every oracle's published reports
balances with every amount recomputed from the observations they cite.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

import pytest
import trio

from contracts import BURN_ADDRESS, EMBEDDED, Anvil, Chain, LicenseStatus, SettlementPolicy, reverts
from oracle._audit import AMOUNTS_NOT_VERIFIED, audit
from oracle._report import EpochReport, claim
from oracle._settlement import Standing

from ._setting import EPOCH_MS, Recorded, settled_by, settled_if_all_released


# eth-tester only: the suite's 15 minutes do not fit this run twice; anvil is covered by the same
# agreement run as processes (test_oracle_processes) and by the audit and settlement commands' tests
@pytest.mark.parametrize("backend", [EMBEDDED])
async def test_oracles_settle_a_holder_down_a_banned_holder_and_a_killed_leader_on_libp2p(
        tmp_path: Path, backend: str) -> None:
    with contextlib.ExitStack() as processes:
        chain = Chain.embedded() if backend == EMBEDDED else Chain.connect(processes.enter_context(Anvil()).url)
        await settle_two_epochs(tmp_path, chain)


# released at 90 % of the tenure seen alive (SettlementPolicy's default), withheld down to 20 %
POLICY = SettlementPolicy(release_threshold=230, burn_floor=50, protocol_burn_bps=100)


async def settle_two_epochs(tmp_path: Path, chain: Chain) -> None:
    async with settled_by(tmp_path, [Recorded] * 4, chain=chain, mesh="libp2p", epochs=2, policy=POLICY,
                          license_refresh_s=2.0) as setting:
        world, job_id = setting.world, setting.job_id
        first, second = setting.start_epoch, setting.start_epoch + 1
        holders = setting.holders()
        down, banned = holders[0], holders[1]
        killed = setting.leader_of(second)
        license_of = {n.address.lower(): lid for n, lid in zip(world.nodes, world.license_ids, strict=False)}
        owner_of = {n.address.lower(): o for n, o in zip(world.nodes, world.owners, strict=False)}
        start_ms, end_ms = setting.clock.bounds(second)

        async def go_down() -> None:
            # half a beat after its beat on the second: that beat reached every oracle, so they all
            # judge it dead at the same instant (the last beat plus 2.75 intervals)
            await setting.until_time(start_ms + 1500)
            setting.stop(down)  # the node and its libp2p host: no beat from it any more

        async with trio.open_nursery() as faults:
            faults.start_soon(go_down)
            await setting.until_landed(first)
            r1 = await setting.until_held(first)
            # the ban once the first epoch's report landed (its inputs read the standing at their block)
            await setting.read(partial(world.licenses.set_status, license_of[banned], LicenseStatus.BLACKLISTED,
                                       sender=world.admin))
        # (after the first epoch's report: it may land in a second round, which the killed oracle leads)
        await setting.until_time((start_ms + end_ms) // 2)
        setting.stop(killed)
        await setting.until_landed(second)
        r2 = await setting.until_held(second)

    price, _ = price_and_burn_bps(r2, job_id)
    # the first epoch: both holders paid for all they served
    (settled1,) = [s for s in r1.settled if s[0] == job_id]
    assert settled1 == settled_if_all_released(r1, job_id)
    assert r1.pay_of[(job_id, license_of[down])] > 0
    assert r1.pay_of[(job_id, license_of[banned])] > 0
    assert "submitted" in {outcome for o in setting.oracles for e, _, outcome in o.led if e == first}

    # the second: the killed leader never saw its end; three oracles landed it, in the second round
    assert len(r2.observations) == 3
    assert killed not in {o.oracle.lower() for o in r2.observations}
    assert not [e for e, _, _ in setting.oracle(killed).led if e == second]
    led = [(r, outcome) for o in setting.running for e, r, outcome in o.led if e == second]
    assert "submitted" in {outcome for _, outcome in led}, led
    assert all(r >= 1 for r, _ in led), led  # round 0 was the dead leader's
    # the holder that went down, the one banned
    standing = {n.node: n.standing for n in r2.inputs.nodes}
    assert standing == {down: Standing.ACTIVE, banned: Standing.BLACKLISTED}
    rows = {row[2]: row for row in r2.tenure if row[0] == job_id}
    assert set(rows) == {down, banned}  # nobody else held the job: two nodes, one replica each at most
    _, _, _, down_ms, down_alive_ms = rows[down]
    # it held its replica from the epoch's start until declared dead (its last beat + 2.75 s), and
    # was seen beating until suspect (its last beat + 2 s): killed 1.5 s in, after its beat at ~1 s
    assert 3_000 <= down_ms <= 5_000, rows
    assert 400 <= down_ms - down_alive_ms <= 1_200, rows  # suspect, not beating, yet holding
    judged = 255 * down_alive_ms // down_ms
    assert POLICY.burn_floor <= judged < POLICY.release_threshold  # its share is withheld
    banned_share = price * rows[banned][3] // EPOCH_MS
    (settled2,) = [s for s in r2.settled if s[0] == job_id]
    assert settled2 == (job_id, 0, 2 * price - banned_share, banned_share)  # withheld: all the CSP's
    assert r2.pay_of[(job_id, license_of[down])] == r1.pay_of[(job_id, license_of[down])]  # nothing new
    assert r2.pay_of[(job_id, license_of[banned])] == r1.pay_of[(job_id, license_of[banned])]  # nothing new

    # on chain: the reports landed as roots only; whoever burns applies the newest totals first, in
    # the same transaction, and the burn goes to the burn address
    assert world.escrow.totals_root_of(second) == r2.totals_root_bytes
    assert world.escrow.settled_until(job_id) == 0
    (totals,) = [t for t in r2.totals if t[0] == job_id]
    world.escrow.execute_burn([job_id], sender=world.outsider, totals=r2.totals_proofs([job_id]))
    job = world.escrow.get_job(job_id)
    assert (job_id, job.alloc_release, job.alloc_refund, job.alloc_burn) == totals
    assert world.escrow.settled_until(job_id) == second + 1
    assert world.token.balance_of(BURN_ADDRESS) == job.burned == totals[3]
    # the CSP takes the refunds: the unserved time of both epochs and every rounding remainder
    before = world.token.balance_of(world.csp)
    world.escrow.take_refund([job_id], sender=world.csp)
    assert world.token.balance_of(world.csp) == before + totals[2]
    # the banned node's unclaimed pay from the first epoch: not its owner's any more, forfeited to the burn
    unclaimed = r2.pay_of[(job_id, license_of[banned])]
    with pytest.raises(reverts.JobEscrowLicenseRestricted):
        world.escrow.claim([claim(r2, job_id, license_of[banned])], sender=owner_of[banned])
    world.escrow.forfeit([claim(r2, job_id, license_of[banned])], sender=world.outsider)
    assert world.token.balance_of(BURN_ADDRESS) == totals[3] + unclaimed
    # the node that went down keeps what it earned in the first epoch: its owner claims it with the last proof
    before = world.token.balance_of(owner_of[down])
    world.escrow.claim([claim(r2, job_id, license_of[down])], sender=owner_of[down])
    assert world.token.balance_of(owner_of[down]) == before + r2.pay_of[(job_id, license_of[down])]

    world.assert_conserved()
    result = audit(world.chain, world.dep, reports=setting.published())
    assert result.ok, [f.line for f in result.findings]
    assert AMOUNTS_NOT_VERIFIED not in result.not_verified


def price_and_burn_bps(report: EpochReport, job_id: int) -> tuple[int, int]:
    """The job's price and protocol burn as the report cites them."""
    job = next(j for j in report.inputs.jobs if j.job_id == job_id)
    return job.price_per_node_epoch, job.policy.protocol_burn_bps
