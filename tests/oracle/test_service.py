"""Oracles at work (``oracle._service``) on the memory mesh (real clock) and the embedded chain with
6-second epochs: three licensed nodes run a two-replica job and four oracles are registered
(t = 3). One offline: the three others agree on each epoch's report, land its root on chain, keep
it content-addressed; a node's owner claims its pay with the report's proof, and the audit over
the published reports balances with every amount recomputed. One lying about a node's uptime
changes nothing (medians). Two colluding cannot finalize anything. A leader killed mid-epoch is
replaced by the next in line."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

from contracts import Chain
from mesh import NodeConfig, open_node
from mesh._identity import NodeIdentity
from mesh._jobspec import spec_hash
from mesh._scheduler import run_scheduler
from mesh._transport import MemoryNetwork
from oracle._audit import AMOUNTS_NOT_VERIFIED, audit
from oracle._observe import Observed
from oracle._report import Observation, claim, leader, sign_observation
from oracle._service import ChainGate, Oracle, OracleConfig
from oracle._watch import EpochClock

from ..contracts import world as world_module
from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from ..mesh.test_scheduler import SPEC

EPOCH_S = 6


class Liar(Oracle):
    """An oracle that signs a lying observation: every node it saw down all epoch, no replica held."""

    def observe(self, epoch: int) -> Observation | None:
        if epoch in self.lies:
            return self.observations[epoch]
        honest = super().observe(epoch)
        if honest is None:
            return None
        fields = {name: getattr(honest, name) for name in Observed.__dataclass_fields__}
        # every node down all epoch, and no replica held by anyone: what would move the money
        lie = Observed(**fields | {"availability": tuple((node, 0) for node, _ in honest.availability),
                                   "tenure": tuple(tuple(row[:3]) + (0,) * len(row[3:]) for row in honest.tenure)})
        self.observations[epoch] = sign_observation(self.domain, epoch, lie, self.private_key)
        self.lies.add(epoch)
        return self.observations[epoch]

    @property
    def lies(self) -> set[int]:
        return self.__dict__.setdefault("_lies", set())  # type: ignore[no-any-return]


@dataclass
class Setting:
    world: world_module.World
    job_id: int
    start_epoch: int
    gate: ChainGate
    oracles: list[Oracle]
    scopes: list[trio.CancelScope]

    async def landed(self, epoch: int) -> bool:
        return await self.gate.run(self.world.escrow.next_epoch) > epoch


@asynccontextmanager
async def settled_by(tmp_path: Path, kinds: list[type[Oracle] | None], round_s: float = 4.0) -> AsyncIterator[Setting]:
    """The mesh, the chain and the oracles of ``kinds`` (None: that registered oracle is offline).
    Rounds (``round_s``) are shorter than the 6-second epochs, so a second leader has its turn
    within an epoch (an offline or killed first leader) before the agreement moves on."""
    chain = Chain.embedded()
    world = world_module.build_world(chain)
    nodes_keys, oracle_keys = world.nodes[:3], world.oracle_keys
    for k in oracle_keys:  # oracles pay for their own submitReport
        chain.w3.eth.send_transaction({"from": world.admin, "to": k.address, "value": 10**18})
        chain.add_signer(k)
    job_id = world.new_job(replicas=2, epochs=3)
    start_epoch = world.escrow.get_job(job_id).start_epoch
    genesis, seconds, _ = world.escrow.epoch_clock()
    clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=seconds * 1000)
    licensed = {k.address for k in nodes_keys}
    registered = {k.address for k in oracle_keys}
    spec = SPEC.model_copy(update={"placement": SPEC.placement.model_copy(update={"include": ()})})
    gate = ChainGate()
    network = MemoryNetwork()

    async def chain_clock() -> None:  # the embedded chain mines only on demand: keep its clock on time
        while True:
            await gate.run(lambda: (chain.set_next_timestamp(max(chain.now() + 1, int(time.time()))), chain.mine()))
            await trio.sleep(0.5)

    def participant(key: bytes) -> object:
        ident = NodeIdentity(key)
        return open_node(NodeConfig(), ident, network.endpoint(ident.address), capacity(), licensed.__contains__,
                         escrow=ESCROW, is_oracle=registered.__contains__)

    async def run_oracle(oracle: Oracle, scope: trio.CancelScope, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await oracle.run(task_status=task_status)

    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(participant(k.key)) for k in nodes_keys]  # type: ignore[arg-type]
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(chain_clock)
        for node in nodes:
            await nursery.start(partial(run_scheduler, node))
        nodes[0].announce_job(submission(1, spec_hash(spec), job_id=job_id), CSP, spec)
        setting = Setting(world, job_id, start_epoch, gate, [], [])
        for k, kind in zip(oracle_keys, kinds, strict=True):
            if kind is None:
                continue
            watcher = await stack.enter_async_context(participant(k.key))  # type: ignore[arg-type]
            oracle = kind(watcher, k.key, chain, world.dep, clock, tmp_path / k.address, gate,  # type: ignore[arg-type]
                          OracleConfig(settle_s=0.5, round_s=round_s, request_s=1.5, poll_s=0.25))
            scope = trio.CancelScope()
            setting.oracles.append(oracle)
            setting.scopes.append(scope)
            await nursery.start(run_oracle, oracle, scope)
        yield setting
        nursery.cancel_scope.cancel()


async def until_landed(setting: Setting, epoch: int, deadline_s: float) -> None:
    with trio.fail_after(deadline_s):
        while not await setting.landed(epoch):  # noqa: ASYNC110
            await trio.sleep(0.25)  # polling the chain with a deadline


async def test_three_of_four_oracles_settle_epochs_and_the_audit_balances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)
    async with settled_by(tmp_path, [Oracle, Oracle, Oracle, None]) as setting:  # the fourth is offline
        world, job_id, start_epoch, oracles = setting.world, setting.job_id, setting.start_epoch, setting.oracles
        await until_landed(setting, start_epoch, EPOCH_S * (start_epoch + 2) + 60)
        with trio.fail_after(30):  # every oracle keeps the settled report (fetched if it did not lead)
            while not all(start_epoch in o.reports for o in oracles):  # noqa: ASYNC110
                await trio.sleep(0.25)

    chain = world.chain
    report = oracles[0].reports[start_epoch]
    assert all(o.reports[start_epoch] == report for o in oracles)
    assert world.escrow.root_of(start_epoch) == report.root_bytes
    assert len(report.observations) == 3  # the offline oracle is not cited
    assert "submitted" in {outcome for o in oracles for _, _, outcome in o.led}
    (settled,) = [s for s in report.settled if s[0] == job_id]
    assert sum(settled[1:]) == world_module.PRICE * 2  # the job's two slot-epochs, to the unit
    allocated = world.escrow.get_job(job_id)
    assert (allocated.alloc_release, allocated.alloc_refund, allocated.alloc_burn) == tuple(
        next(t for t in report.totals if t[0] == job_id)[1:])
    # a holder's owner claims its pay with the report's proof
    license_id = report.pay[0][1]
    owner = world.licenses.owner_of(license_id)
    before = world.token.balance_of(owner)
    world.escrow.claim([claim(report, job_id, license_id)], sender=owner)
    assert world.token.balance_of(owner) == before + report.pay[0][2]
    world.assert_conserved()
    # the audit over every oracle's published reports: balanced, amounts recomputed from the observations
    published = sorted(p for o in oracles for p in (o.directory / "reports").glob("*.json"))
    result = audit(chain, world.dep, reports=published)
    assert result.ok, [f.line for f in result.findings]
    assert AMOUNTS_NOT_VERIFIED not in result.not_verified


async def test_a_lying_oracle_changes_no_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)
    async with settled_by(tmp_path, [Oracle, Oracle, Oracle, Liar]) as setting:
        await until_landed(setting, setting.start_epoch, EPOCH_S * (setting.start_epoch + 2) + 60)
        with trio.fail_after(30):
            while setting.start_epoch not in setting.oracles[0].reports:  # noqa: ASYNC110
                await trio.sleep(0.25)
    report = setting.oracles[0].reports[setting.start_epoch]
    liar = setting.oracles[3].address.lower()
    cited = {o.oracle.lower() for o in report.observations}
    lied = [o for o in report.observations if o.oracle.lower() == liar]
    if lied:  # cited or not, the medians are the honest values
        assert all(a == 0 for _, a in lied[0].availability)
    assert len(cited) >= 3
    held = [t for t in report.tenure if t[0] == setting.job_id]
    assert {t[1] for t in held} == {0, 1}  # both replicas held, whatever the liar said
    honest = [o for o in report.observations if o.oracle.lower() != liar]
    for row in held:  # each agreed value is one an honest oracle saw
        assert any(tuple(row) in {tuple(r) for r in o.tenure} for o in honest)
    setting.world.assert_conserved()


async def test_two_colluding_oracles_of_four_cannot_finalize(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)

    class Refuser(Liar):
        async def _sign(self, raw: object) -> dict[str, object]:  # refuses the honest report
            return {"error": "refused"}

    async with settled_by(tmp_path, [Oracle, Oracle, Refuser, Refuser]) as setting:
        target = setting.start_epoch
        first_end = (setting.world.escrow.epoch_clock()[0] + (target + 1) * EPOCH_S)
        with trio.fail_after(EPOCH_S * (target + 4) + 60):  # every oracle has led a round of the epoch
            while time.time() < first_end + 4 * 6.0 + 2:  # noqa: ASYNC110
                await trio.sleep(0.5)
        assert not await setting.landed(target)  # the job's first epoch: the liars say nobody served it
        assert "submitted" not in [outcome for o in setting.oracles for e, _, outcome in o.led if e == target]
        refusals = [outcome for o in setting.oracles for _, _, outcome in o.led]
        assert any("3 needed" in outcome or "not what we saw" in outcome for outcome in refusals)
    setting.world.assert_conserved()
    assert setting.world.escrow.get_job(setting.job_id).alloc_release == 0  # nothing was paid on a guess


async def test_a_leader_killed_mid_epoch_is_replaced_by_the_next(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)
    # rounds shorter than the epoch (as hours-long epochs have), so the next leader's turn comes
    async with settled_by(tmp_path, [Oracle, Oracle, Oracle, Oracle]) as setting:
        target = setting.start_epoch
        oracles = {o.address.lower(): (o, s) for o, s in zip(setting.oracles, setting.scopes, strict=True)}
        first = leader(target, 0, frozenset(oracles))
        oracles[first.lower()][1].cancel()  # the epoch's first leader dies before the epoch ends
        await until_landed(setting, target, EPOCH_S * (target + 3) + 60)
        assert await setting.gate.run(setting.world.escrow.root_of, target) != bytes(32)  # that epoch, not a later one
        survivors = [o for a, (o, _) in oracles.items() if a != first.lower()]
        led = [(r, outcome) for o in survivors for e, r, outcome in o.led if e == target]
        assert "submitted" in {outcome for _, outcome in led}
        assert all(r >= 1 for r, _ in led)  # round 0 was the dead leader's
    setting.world.assert_conserved()
