"""Oracles at work (``oracle._service``) on the memory mesh (real clock) and the embedded chain with
6-second epochs: three licensed nodes run a two-replica job; of four registered oracles (t = 3)
one is offline, and the three others agree on each epoch's report, land its root on chain, keep
it content-addressed; a node's owner claims its pay with the report's proof, and the audit over
the published reports balances with every amount recomputed."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
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
from oracle._report import claim
from oracle._service import ChainGate, Oracle, OracleConfig
from oracle._watch import EpochClock

from ..contracts import world as world_module
from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from ..mesh.test_scheduler import SPEC

EPOCH_S = 6


async def test_three_of_four_oracles_settle_epochs_and_the_audit_balances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)
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
    oracles: list[Oracle] = []

    async def chain_clock() -> None:  # the embedded chain mines only on demand: keep its clock on time
        while True:
            await gate.run(lambda: (chain.set_next_timestamp(max(chain.now() + 1, int(time.time()))), chain.mine()))
            await trio.sleep(0.5)

    async with AsyncExitStack() as stack:
        def participant(key: bytes) -> object:
            ident = NodeIdentity(key)
            return open_node(NodeConfig(), ident, network.endpoint(ident.address), capacity(), licensed.__contains__,
                             escrow=ESCROW, is_oracle=registered.__contains__)

        nodes = [await stack.enter_async_context(participant(k.key)) for k in nodes_keys]  # type: ignore[arg-type]
        watchers = [await stack.enter_async_context(participant(k.key)) for k in oracle_keys[:3]]  # type: ignore[arg-type]
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(chain_clock)
        for node in nodes:
            await nursery.start(partial(run_scheduler, node))
        nodes[0].announce_job(submission(1, spec_hash(spec), job_id=job_id), CSP, spec)
        for k, watcher in zip(oracle_keys[:3], watchers, strict=True):  # the fourth oracle is offline
            oracle = Oracle(watcher, k.key, chain, world.dep, clock, tmp_path / k.address, gate,  # type: ignore[arg-type]
                            OracleConfig(settle_s=0.5, round_s=8.0, request_s=3.0, poll_s=0.25))
            oracles.append(oracle)
            await nursery.start(oracle.run)
        with trio.fail_after(EPOCH_S * (start_epoch + 2) + 60):
            while await gate.run(world.escrow.next_epoch) <= start_epoch:  # noqa: ASYNC110
                await trio.sleep(0.25)  # polling the chain with a deadline
        with trio.fail_after(30):  # every oracle keeps the settled report (fetched if it did not lead)
            while not all(start_epoch in o.reports for o in oracles):  # noqa: ASYNC110
                await trio.sleep(0.25)
        nursery.cancel_scope.cancel()

    report = oracles[0].reports[start_epoch]
    assert all(o.reports[start_epoch] == report for o in oracles)
    assert world.escrow.root_of(start_epoch) == report.root_bytes
    assert len(report.observations) == 3  # the offline oracle is not cited
    assert {o for _, _, o in (led for o in oracles for led in o.led)} >= {"submitted"}
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
