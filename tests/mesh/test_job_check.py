"""A node claims a relayed job only once the chain backs it: a funded job is placed, a job the
chain does not back is claimed by no one, and a job id that two CSPs name is placed with the
record of the CSP that owns it. The reads themselves against a real escrow (eth-tester), and a
chain that cannot be reached."""

from __future__ import annotations

from collections.abc import Iterable

import trio
import trio.testing
from eth_account import Account

from contracts import Chain, ChainUnreachable, CspStatus
from mesh._identity import NodeIdentity
from mesh._job_check import RETRY_S, JobCheck
from mesh._jobspec import spec_hash
from mesh._node import KnownJob, NodeConfig, open_node
from mesh._process import EscrowFacts
from mesh._scheduler import assignment, placeable_jobs
from mesh._submission import ChainFacts, Submission
from mesh._transport import MemoryNetwork
from mesh._wire_job import JobRecord

from .test_jobs_gossip import CSP, ESCROW, submission
from .test_node_memory import capacity, until
from .test_scheduler import PLANS, SPEC, announce, scheduled

CSP2_KEY = "0x" + "d7" * 32
CSP2 = Account.from_key(CSP2_KEY).address


class ChainSays:
    """A chain check that reads at once what ``backs`` says: (job, csp) -> backed."""

    def __init__(self, backs: dict[tuple[int, str], bool]) -> None:
        self.backs = backs
        self.read: set[tuple[int, str]] = set()

    def verdict(self, known: KnownJob) -> bool | None:
        key = (known.job_id, known.record.csp)
        return self.backs[key] if key in self.read else None

    def want(self, jobs: Iterable[KnownJob]) -> None:
        self.read |= {(k.job_id, k.record.csp) for k in jobs}


async def test_only_jobs_the_chain_backs_are_claimed_and_a_contested_id_goes_to_its_owner(
        autojump_clock: trio.testing.MockClock) -> None:
    backs = {(7, CSP.lower()): True, (9, CSP.lower()): False, (11, CSP.lower()): True, (11, CSP2.lower()): False}
    async with scheduled(MemoryNetwork(), 3) as nodes:
        checks = [ChainSays(backs) for _ in nodes]
        for node, check in zip(nodes, checks, strict=True):
            node.chain_check = check
        announce(nodes[0], 1, SPEC)  # job 7
        nodes[1].announce_job(submission(1, job_id=9), CSP, SPEC)
        nodes[2].announce_job(submission(1, job_id=11), CSP, SPEC)
        nodes[0].announce_job(submission(1, key=CSP2_KEY, job_id=11), CSP2, SPEC)  # names CSP2 for job 11
        await until(lambda: all(len(assignment(n, 7)) == 2 and len(assignment(n, 11)) == 2 for n in nodes))
        assert all(placeable_jobs(n)[11].record.csp == CSP.lower() for n in nodes)
        assert all({(11, CSP.lower()), (11, CSP2.lower())} <= c.read for c in checks)  # contested: read by all
        seen = dict(PLANS)
        await until(lambda: all(PLANS[a] >= seen[a] + 2 for a in seen))
        assert all(c.job_id != 9 for n in nodes for held in n.claims.values() for c in held.claims)
        assert any((9, CSP.lower()) in c.read for c in checks)  # a candidate asked the chain, and was refused


def known_job(job_id: int, csp: str, replicas: int = SPEC.replicas) -> KnownJob:
    spec = SPEC.model_copy(update={"replicas": replicas})
    sub = Submission(job_id=job_id, spec_hash="0x" + spec_hash(SPEC).hex(), nonce=1, expiry=2**40,
                     signature="0x" + "11" * 65)  # the relay checked it; the chain checks read none of it
    return KnownJob(JobRecord(submission=sub, csp=csp.lower(), spec=spec.model_dump(mode="json")), spec, 0)


async def test_the_reads_on_a_real_escrow_back_the_funded_job_and_refuse_each_other_case() -> None:
    from ..contracts.world import build_world

    world = build_world(Chain.embedded())
    job_id = world.new_job(spec=spec_hash(SPEC), replicas=SPEC.replicas)
    other = world.new_job(spec=spec_hash(SPEC), replicas=SPEC.replicas)
    facts = EscrowFacts(world.escrow)

    async def read_many(pairs: list[tuple[int, str]]) -> list[ChainFacts]:
        return await trio.to_thread.run_sync(lambda: [facts(j, c) for j, c in pairs])

    ident = NodeIdentity(b"\x33" * 32)
    async with open_node(NodeConfig(), ident, MemoryNetwork().endpoint(ident.address), capacity(), lambda _: True,
                         escrow=(world.chain.chain_id, world.escrow.address)) as node, trio.open_nursery() as nursery:
        cases = {"": known_job(job_id, world.csp), "unknown-job": known_job(job_id + 100, world.csp),
                 "wrong-owner": known_job(job_id, world.csp2),
                 "replicas-mismatch": known_job(other, world.csp, replicas=3)}
        for known in cases.values():
            node.jobs[(known.job_id, known.record.csp)] = known
        check = JobCheck(node, read_many)
        await nursery.start(check.run)
        check.want(cases.values())
        await until(lambda: all(check.verdict(k) is not None for k in cases.values()))
        assert {reason: check.verdict(k) for reason, k in cases.items()} == {
            "": True, "unknown-job": False, "wrong-owner": False, "replicas-mismatch": False}
        assert {reason: check.verdicts[(k.job_id, k.record.csp, 1)].reason for reason, k in cases.items()} == {
            reason: reason for reason in cases}
        assert node.gossip.counters[("deedmesh/jobs/1", "REJECT", "chain-wrong-owner")] == 1
        nursery.cancel_scope.cancel()


async def test_an_unreachable_chain_leaves_a_job_unverified_and_is_tried_again(
        autojump_clock: trio.testing.MockClock) -> None:
    reachable = [False]
    reads: list[int] = []

    async def read_many(pairs: list[tuple[int, str]]) -> list[ChainFacts]:
        await trio.lowlevel.checkpoint()
        reads.append(len(pairs))
        if not reachable[0]:
            raise ChainUnreachable("http://127.0.0.1:9", "refused")
        return [ChainFacts(chain_id=ESCROW[0], escrow=ESCROW[1], job=None, csp_admitted_until=0,
                           csp_status=CspStatus.ACTIVE)]

    ident = NodeIdentity(b"\x34" * 32)
    async with open_node(NodeConfig(), ident, MemoryNetwork().endpoint(ident.address), capacity(), lambda _: True,
                         escrow=ESCROW) as node, trio.open_nursery() as nursery:
        known = known_job(7, CSP)
        node.jobs[(7, CSP.lower())] = known
        check = JobCheck(node, read_many)
        await nursery.start(check.run)
        check.want([known])
        await until(lambda: reads == [1])
        assert check.verdict(known) is None  # not refused: unread
        check.want([known])  # asked again at once: not read again before RETRY_S
        await trio.sleep(RETRY_S / 2)
        assert reads == [1]
        reachable[0] = True
        await trio.sleep(RETRY_S)
        check.want([known])
        await until(lambda: check.verdict(known) is not None)
        assert check.verdict(known) is False  # the chain answered: no such job
        nursery.cancel_scope.cancel()
