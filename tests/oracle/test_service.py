"""Oracles at work (``oracle._service``) when some of them lie: four registered, t = 3, two
licensed nodes holding a two-replica job, 9-second epochs (harness: ``_setting``). One lying about
every node's uptime changes no amount (medians); two colluding cannot finalize the job's epoch (it
stays locked: nothing is paid on a guess).

These run on the memory mesh and the embedded chain: they are about the agreement (what each
oracle observes, proposes and signs), which goes over the oracles' request streams whatever
carries them, while the nodes only need to stay up. The scenarios that hang on the mesh's view of
the nodes (a holder down, a ban) or on a participant dying (an oracle offline, a leader killed
mid-epoch) run on real libp2p, on the embedded chain and on anvil, in test_settle_outcomes.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from oracle._report import Observation

from ._setting import CONFIG, LANDING_SLACK_S, Liar, Recorded, Refuser, settled_by, settled_if_all_released, until


async def test_a_lying_oracle_changes_no_amount(tmp_path: Path) -> None:
    async with settled_by(tmp_path, [Recorded, Recorded, Recorded, Liar]) as setting:
        target = setting.start_epoch
        await setting.until_landed(target)
        report = await setting.until_held(target)
    world, job_id, liar = setting.world, setting.job_id, setting.oracles[3]
    assert isinstance(liar, Liar)
    assert target in liar.lies  # it did sign a lie about the job's epoch ...
    lie: Observation = liar.observations[target]
    assert lie in report.observations  # ... and the report cites it, with three honest ones
    assert len(report.observations) == 4
    assert all(a == 0 for _, a in lie.availability)
    assert all(row[3:] == (0, 0) for row in lie.tenure)
    held = [t for t in report.tenure if t[0] == job_id]
    assert {t[1] for t in held} == {0, 1}  # both replicas held, whatever the liar said
    honest = [o for o in report.observations if o != lie]
    for row in held:  # each agreed value is one an honest oracle saw
        assert any(tuple(row) in {tuple(r) for r in o.tenure} for o in honest)
    for node, agreed in report.availability:
        assert agreed in {a for o in honest for n, a in o.availability if n == node}
    # every share of the holders' tenures released, none withheld or burned for the liar's zeros
    (settled,) = [s for s in report.settled if s[0] == job_id]
    assert settled == settled_if_all_released(report, job_id)
    assert settled[1] > 0
    world.assert_conserved()


async def test_two_colluding_oracles_of_four_cannot_finalize(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with settled_by(tmp_path, [Recorded, Recorded, Refuser, Refuser]) as setting:
        target = setting.start_epoch
        honest = setting.oracles[:2]
        # until both honest oracles give the epoch up (no quorum): when the next one has ended
        _, next_end_ms = setting.clock.bounds(target + 1)
        deadline = (next_end_ms - setting.now_ms()) / 1000 + CONFIG.round_s + LANDING_SLACK_S
        await until(lambda: all(target in o.finished for o in honest), deadline,
                    "both honest oracles are done with the job's first epoch")
        assert [o.finished[target] for o in honest] == [False, False]  # given up, not landed
        # said as a warning: they watched the epoch whole (it is not the one they came up in)
        gave_up = [r for r in caplog.records if r.levelno == logging.WARNING and getattr(r, "epoch", None) == target
                   and r.getMessage() == "no quorum for an epoch; it stays locked"]
        assert len(gave_up) >= 2
        assert not await setting.landed(target)
    outcomes = [outcome for o in setting.oracles for e, _, outcome in o.led if e == target]
    assert outcomes
    assert "submitted" not in outcomes
    # honest oracles saw the medians pulled to the colluders' zeros: an honest leader would not
    # propose that report, an honest follower would not sign the colluders' one
    disagreed = [out for o in honest for e, _, out in o.led if e == target and "not what we saw" in out]
    refused = [a for o in honest for e, a in o.answers if e == target and "not what this oracle saw" in a]
    assert disagreed or refused, (outcomes, [o.answers for o in honest])
    world = setting.world
    world.assert_conserved()
    job = world.escrow.get_job(setting.job_id)
    assert (job.alloc_release, job.alloc_refund, job.alloc_burn) == (0, 0, 0)  # nothing paid on a guess
    assert job.locked == job.deposited
