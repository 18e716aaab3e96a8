"""The oracle integration harness: a fresh contract world with 9-second epochs, licensed nodes
running the scheduler, and the four registered oracles (t = 3), each an ``oracle._service.Oracle``
on a mesh participant of its own, until the block exits.

Choices, each per scenario (``settled_by``):

- the mesh: the memory mesh (``mesh._transport.MemoryNetwork``, instant, no sockets) or real
  libp2p hosts on 127.0.0.1 (``mesh.open_libp2p_transport``, Noise and Yamux, neighbour sync
  without gossipsub as ``node run`` wires it; everything bootstraps from the first participant);
- the chain: the embedded eth-tester chain or an anvil process. Anvil automines every transaction
  at its own wall clock. The embedded chain mines only on demand, each block at least a second
  after its parent: deploying the world leaves its clock some 30 s ahead of the wall clock. Every
  participant here runs on the chain's clock (the wall clock plus that lead, ``Setting.now_ms``),
  and a task mines a block at that clock's time whenever the chain has fallen behind it, never
  pushing it further ahead (the old harness's task moved the chain a second every half second,
  twice the wall clock's pace: the chain ran away from the oracles' epochs, and a job created for
  the chain's next epoch started several of the oracles' epochs later);
- the license view: a fixed set read from the chain at the start, or one ``LicenseView`` for every
  participant refreshed from the chain every ``license_refresh_s`` (a ban on chain then bites
  everywhere at once, as it would within one refresh interval of separate processes).

The job is placed before it exists on chain: it is announced to the mesh (the nodes do not read
the chain for it) and, once every oracle's participant sees each replica held, the oracles start
their service together on an epoch's first instant and the job is created with the next epoch as
its first. Every oracle watched all of the epoch before the job's, with the same holders all
along, so their observations of it agree and it lands; and the agreement on the job's epoch starts
on time: oracles settle epochs in order, and one that finds no quorum runs on until the next epoch
has ended. (The first epoch the oracles take up is the one before they started, which none of them
watched: it gives way a few seconds into the agreement on the next.)

Every participant runs in a task of its own with a cancel scope, so a test can stop a node or an
oracle (its mesh participant and its service) mid-run; everything else stops at once at the end
(libp2p hosts closed one by one while the others still send to them can crash, see
tests/mesh/test_libp2p.py). Chain calls of the test, the oracles and the license view go through
one ``ChainGate`` (eth-tester is not thread-safe). Oracles are ``Recorded``: they also note
which epochs they saw through (landed or given up) and how they answered each request to sign.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import trio

from contracts import BPS_DENOMINATOR, EMBEDDED, Chain, SettlementPolicy
from mesh import Libp2pConfig, Node, NodeConfig, TaskStatus, assignment, open_libp2p_transport, open_node
from mesh._identity import NodeIdentity
from mesh._jobspec import spec_hash
from mesh._license_view import LicenseView
from mesh._scheduler import run_scheduler
from mesh._transport import MemoryNetwork
from mesh._wire_capacity import Capacity, Resources
from oracle._observe import Observed
from oracle._report import EpochReport, Observation, leader, sign_observation
from oracle._service import ChainGate, Oracle, OracleConfig
from oracle._settlement import split_by_tenure
from oracle._watch import EpochClock

from ..contracts import world as world_module
from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import capacity
from ..mesh.test_scheduler import SPEC

T = TypeVar("T")
Mesh = Literal["memory", "libp2p"]

# The agreement's timing. Rounds are shorter than the epoch (as hours-long epochs have theirs), so
# a second leader has its turn (after an offline, lying or killed first one) before the agreement
# gives up on the epoch when the next one ends: round 1 starts settle_s + round_s after the end
# (plus a few chain reads), which leaves 2-3 s. A round's work is mostly chain reads: the leader's
# (the previous report, the inputs) and each follower's (the same again, at the cited block), and
# on the embedded chain every oracle's reads queue at the one gate (eth-tester is not thread-safe):
# 20-50 ms a read, 0.3-1 s for one follower's check, a round 1.5-2 s on a loaded machine; the
# leader waits up to ``request_s`` for the slowest follower. Every oracle also asks the chain
# whether the epoch landed every ``poll_s``: four oracles polling four times a second (the old
# setting) kept the gate busy most of the time and rounds ran out of time.
EPOCH_S = 9
EPOCH_MS = EPOCH_S * 1000
CONFIG = OracleConfig(settle_s=0.5, round_s=5.5, request_s=3.5, poll_s=2.0)
# Honest oracles must agree to within a share of the epoch (``oracle._service``: availability 16 of
# 255, tenure 6 %, some 550 ms of 9 s). A node's death is judged at each participant's liveness
# tick and written down at each watcher's sample, by default every 0.25 s, each at its own phase:
# two oracles could be half a second apart. The oracles here tick and sample every 0.1 s.
ORACLE_NODE = NodeConfig(tick_s=0.1)
ORACLE_SAMPLE_S = 0.1
CHAIN_TICK_S = 1.0  # how often the embedded chain's clock is caught up with ``Setting.now_ms``
POLL_S = 1.0  # how often the test itself asks the chain whether an epoch landed
PLACED_S = 30.0  # deadline for the job's replicas to be held in every oracle's view
# an epoch lands within two rounds after its end; this much more for a loaded machine
LANDING_SLACK_S = 30.0
SPEC_ANY = SPEC.model_copy(update={"placement": SPEC.placement.model_copy(update={"include": ()})})  # 2 replicas
NO_RESOURCES = Resources(cpu_millis=0, memory_mb=0, gpus=0, disk_mb=0)
ORACLE_CAPACITY = Capacity(version=1, total=NO_RESOURCES, free=NO_RESOURCES, tags=("oracle",))


class Recorded(Oracle):
    """An honest oracle that also records the epochs it saw through and its answers to "sign"."""

    @property
    def finished(self) -> dict[int, bool]:
        """Epoch -> whether its root landed (False: the oracle gave it up, no quorum)."""
        return self.__dict__.setdefault("_finished", {})  # type: ignore[no-any-return]

    @property
    def answers(self) -> list[tuple[int, str]]:
        """(epoch, "signed" or the reason it refused) for every request to sign a report."""
        return self.__dict__.setdefault("_answers", [])  # type: ignore[no-any-return]

    async def settle(self, epoch: int) -> None:
        await super().settle(epoch)
        self.finished[epoch] = epoch in self.settled

    async def _sign(self, raw: Any) -> dict[str, Any]:
        answer = await super()._sign(raw)
        epoch = raw.get("epoch", -1) if isinstance(raw, dict) else -1
        self.answers.append((epoch, "signed" if "signature" in answer else str(answer.get("error"))))
        return answer


class Liar(Recorded):
    """From ``lies_from`` on (the harness sets the job's first epoch), an oracle that signs a lying
    observation, every node down all epoch and no replica held (what would move the money), and
    refuses to sign anything else. Honest before, so the epochs before the job land."""

    lies_from = 2**63

    def observe(self, epoch: int) -> Observation | None:
        if epoch in self.lies:
            return self.observations[epoch]
        honest = super().observe(epoch)
        if honest is None or epoch < self.lies_from:
            return honest
        fields = {name: getattr(honest, name) for name in Observed.__dataclass_fields__}
        lie = Observed(**fields | {"availability": tuple((node, 0) for node, _ in honest.availability),
                                   "tenure": tuple(tuple(row[:3]) + (0,) * len(row[3:]) for row in honest.tenure)})
        self.observations[epoch] = sign_observation(self.domain, epoch, lie, self.private_key)
        self.lies.add(epoch)
        return self.observations[epoch]

    @property
    def lies(self) -> set[int]:
        return self.__dict__.setdefault("_lies", set())  # type: ignore[no-any-return]


class Refuser(Liar):
    """A colluder: lies as ``Liar`` does and, from ``lies_from`` on, signs no report but its own."""

    async def _sign(self, raw: Any) -> dict[str, Any]:
        if isinstance(raw, dict) and raw.get("epoch", -1) >= self.lies_from:
            return {"error": "refused"}
        return await super()._sign(raw)


@dataclass
class Setting:
    """A running world (module docstring)."""

    world: world_module.World
    gate: ChainGate
    clock: EpochClock
    now_ms: Callable[[], int]  # the participants' wall clock: the chain's (module docstring)
    job_id: int
    start_epoch: int
    oracles: list[Recorded]  # in the order of the registered keys
    nodes: dict[str, Node]  # address -> a licensed node's participant
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)  # address -> its task's scope
    stopped: set[str] = field(default_factory=set)  # participants stopped by the test (lower case)

    @property
    def running(self) -> list[Recorded]:
        """The oracles still running."""
        return [o for o in self.oracles if o.address.lower() not in self.stopped]

    async def read(self, fn: Callable[[], T]) -> T:
        """A blocking chain call (a read or a transaction), through the gate."""
        return await self.gate.run(fn)

    @property
    def oracle_set(self) -> frozenset[str]:
        """The registered oracles, as ``leader`` takes them."""
        return frozenset(k.address for k in self.world.oracle_keys)

    def leader_of(self, epoch: int, round_: int = 0) -> str:
        """The address of the oracle that leads ``round_`` of ``epoch`` (lower case)."""
        return leader(epoch, round_, self.oracle_set).lower()

    async def landed(self, epoch: int) -> bool:
        """Whether a report of ``epoch`` itself landed (its ``EpochSettled``; a later one's does not count)."""
        escrow = self.world.escrow
        if await self.gate.run(escrow.next_epoch) <= epoch:  # a cheap read first: logs cost ten of them
            return False
        events = await self.gate.run(partial(escrow.logs, "EpochSettled", self.world.dep.block))
        return epoch in {int(e.args["epoch"]) for e in events}

    def seconds_until_landing(self, epoch: int) -> float:
        """A deadline for ``epoch``'s root to land: its end, two rounds, and the slack."""
        end_ms = self.clock.bounds(epoch)[1]
        return max(0.0, (end_ms - self.now_ms()) / 1000) + CONFIG.settle_s + 2 * CONFIG.round_s + LANDING_SLACK_S

    async def until_landed(self, epoch: int) -> None:
        try:
            with trio.fail_after(self.seconds_until_landing(epoch)):
                while await self.gate.run(self.world.escrow.next_epoch) <= epoch:  # noqa: ASYNC110
                    await trio.sleep(POLL_S)  # polling the chain with a deadline
        except trio.TooSlowError:
            raise AssertionError(f"epoch {epoch} did not land; {self._rounds(epoch)}") from None
        assert await self.landed(epoch), f"a later epoch landed, not epoch {epoch}; {self._rounds(epoch)}"

    def _rounds(self, epoch: int) -> str:
        led = [(o.address[:8], r, outcome) for o in self.oracles for e, r, outcome in o.led if e == epoch]
        answers = [(o.address[:8], a) for o in self.oracles for e, a in o.answers if e == epoch]
        return f"rounds led: {led}; answers to sign: {answers}"

    async def until_held(self, epoch: int) -> EpochReport:
        """The landed report of ``epoch``, once every oracle running holds it (fetched if it did not lead)."""
        running = self.running
        await until(lambda: all(epoch in o.reports for o in running), 30, f"every oracle running holds report {epoch}")
        report = running[0].reports[epoch]
        assert all(o.reports[epoch] == report for o in running)
        assert await self.read(partial(self.world.escrow.root_of, epoch)) == report.root_bytes
        return report

    async def until_chain(self, predicate: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
        """Poll a blocking ``predicate`` of the chain (through the gate) until it holds."""
        try:
            with trio.fail_after(deadline_s):
                while not await self.gate.run(predicate):  # noqa: ASYNC110
                    await trio.sleep(POLL_S)  # polling the chain with a deadline
        except trio.TooSlowError:
            raise AssertionError(f"not within {deadline_s} s: {what}") from None

    async def until_time(self, ms: int) -> None:
        """Until the participants' clock reads ``ms``."""
        with trio.fail_after(max(0.0, (ms - self.now_ms()) / 1000) + 5):
            while self.now_ms() < ms:  # noqa: ASYNC110
                await trio.sleep(0.05)  # polling the wall clock with a deadline

    def holders(self) -> dict[int, str]:
        """Replica -> holder of the job, as the first oracle running sees it now (lower-case addresses)."""
        return {r: a.lower() for r, a in assignment(self.running[0].node, self.job_id).items()}

    def stop(self, address: str) -> None:
        """Stop a participant (a node, or an oracle and its participant): its host goes down."""
        self.stopped.add(address.lower())
        self.scopes[address.lower()].cancel()

    def oracle(self, address: str) -> Recorded:
        return next(o for o in self.oracles if o.address.lower() == address.lower())

    def published(self) -> list[Path]:
        return sorted(p for o in self.oracles for p in (o.directory / "reports").glob("*.json"))


async def until(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``predicate`` (the real clock) until it holds; fail at the deadline, naming ``what``."""
    try:
        with trio.fail_after(deadline_s):
            while not predicate():  # noqa: ASYNC110
                await trio.sleep(0.1)
    except trio.TooSlowError:
        raise AssertionError(f"not within {deadline_s} s: {what}") from None


def _world_with_short_epochs(chain: Chain) -> world_module.World:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(world_module, "EPOCH_SECONDS", EPOCH_S)
        return world_module.build_world(chain)


@asynccontextmanager
async def settled_by(tmp_path: Path, kinds: Sequence[type[Recorded]], *, chain: Chain | None = None,
                     mesh: Mesh = "memory", nodes: int = 2, epochs: int = 3, policy: SettlementPolicy | None = None,
                     license_refresh_s: float | None = None) -> AsyncIterator[Setting]:
    """The world (module docstring) with ``nodes`` licensed nodes, a 2-replica job of ``epochs``
    epochs paid under ``policy`` (the world's default if None), and an oracle of ``kinds[i]`` for
    the i-th registered oracle key. ``chain``: a fresh embedded chain if None."""
    chain = chain or Chain.embedded()
    world = _world_with_short_epochs(chain)
    for k in world.oracle_keys:  # oracles pay for their own submitReport and burns
        chain.send_value(world.admin, k.address, 10**18)
        chain.add_signer(k)
    genesis, seconds, _ = world.escrow.epoch_clock()
    clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=seconds * 1000)
    lead_ms = max(0, chain.now() * 1000 - time.time_ns() // 1_000_000) if chain.kind == EMBEDDED else 0

    def now_ms() -> int:
        return time.time_ns() // 1_000_000 + lead_ms

    node_keys = world.nodes[:nodes]
    job_id = world.escrow.last_job_id() + 1  # the job created below, once placed
    gate = ChainGate()
    registry = world.oracles
    node_addresses = [k.address for k in node_keys]

    def fetch_eligible() -> frozenset[str]:  # the world's nodes only (a node reads every license)
        return frozenset(a for a in node_addresses if world.licenses.is_node_eligible(a))

    view: LicenseView | None = None
    is_eligible: Callable[[str], bool]
    is_oracle: Callable[[str], bool]
    if license_refresh_s is None:  # read once
        eligible, members = fetch_eligible(), frozenset(registry.oracles())
        is_eligible, is_oracle = eligible.__contains__, members.__contains__
    else:
        view = LicenseView(fetch_eligible, gate, license_refresh_s, block=chain.block_number,
                           fetch_oracles=lambda: frozenset(registry.oracles()))
        is_eligible, is_oracle = view.is_eligible, view.is_oracle
    network = MemoryNetwork()
    bootstrap: list[str] = []

    @asynccontextmanager
    async def participant(ident: NodeIdentity, cap: Capacity, gossip: NodeConfig) -> AsyncIterator[Node]:
        if mesh == "memory":
            async with open_node(gossip, ident, network.endpoint(ident.address), cap, is_eligible, now_ms,
                                 escrow=ESCROW, is_oracle=is_oracle) as node:
                yield node
            return
        config = Libp2pConfig(pubsub=False)  # neighbour sync alone, as ``node run`` gossips
        async with open_libp2p_transport(ident, config, bootstrap) as transport, \
                open_node(gossip, ident, transport, cap, is_eligible, now_ms, bootstrap=tuple(bootstrap),
                          escrow=ESCROW, is_oracle=is_oracle) as node:
            if not bootstrap:
                bootstrap.extend(transport.addrs()[:1])
            yield node

    async def run_node(key: bytes, scope: trio.CancelScope, task_status: TaskStatus[Node]) -> None:
        with scope:
            async with participant(NodeIdentity(key), capacity(), NodeConfig()) as node, trio.open_nursery() as inner:
                await inner.start(partial(run_scheduler, node))
                task_status.started(node)
                await trio.sleep_forever()

    go = trio.Event()  # the oracles' service starts (module docstring)

    async def run_oracle(kind: type[Recorded], key: bytes, scope: trio.CancelScope,
                         task_status: TaskStatus[Recorded]) -> None:
        with scope:
            async with participant(NodeIdentity(key), ORACLE_CAPACITY, ORACLE_NODE) as node, \
                    trio.open_nursery() as inner:
                oracle = kind(node, key, chain, world.dep, clock, tmp_path / node.address, gate, CONFIG)
                oracle.watcher.sample_s = ORACLE_SAMPLE_S
                task_status.started(oracle)
                await go.wait()
                await inner.start(oracle.run)
                await trio.sleep_forever()

    def catch_up() -> None:
        if chain.now() < now_ms() // 1000:
            chain.set_next_timestamp(now_ms() // 1000)  # mines that block (eth-tester's time travel)

    async def chain_clock() -> None:  # the embedded chain mines only on demand (module docstring)
        while True:
            await gate.run(catch_up)
            await trio.sleep(CHAIN_TICK_S)

    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # everything stops at once
        if chain.kind == EMBEDDED:
            nursery.start_soon(chain_clock)
        if view is not None:
            await nursery.start(view.run)
        setting = Setting(world, gate, clock, now_ms, job_id, -1, [], {})
        # oracles first, the first of them the bootstrap peer (all are connected before any stops)
        for k, kind in zip(world.oracle_keys, kinds, strict=True):
            scope = setting.scopes[k.address.lower()] = trio.CancelScope()
            setting.oracles.append(await nursery.start(run_oracle, kind, k.key, scope))
        for k in node_keys:
            scope = setting.scopes[k.address.lower()] = trio.CancelScope()
            setting.nodes[k.address.lower()] = await nursery.start(run_node, k.key, scope)
        announcer = next(iter(setting.nodes.values()))
        announcer.announce_job(submission(1, spec_hash(SPEC_ANY), job_id=job_id), CSP, SPEC_ANY)
        views = [o.node for o in setting.oracles]
        await until(lambda: len({tuple(sorted(assignment(v, job_id).items())) for v in views}) == 1
                    and len(assignment(views[0], job_id)) == SPEC_ANY.replicas, PLACED_S,
                    "every oracle sees each replica held, by the same holders")
        start_ms, _ = clock.bounds(clock.epoch_at(now_ms()) + 1)
        await setting.until_time(start_ms + 50)
        go.set()
        setting.start_epoch = clock.epoch_at(now_ms()) + 1
        created = await gate.run(partial(world.new_job, replicas=SPEC_ANY.replicas, epochs=epochs, policy=policy,
                                         start_epoch=setting.start_epoch))
        assert created == job_id
        for oracle in setting.oracles:
            if isinstance(oracle, Liar):
                oracle.lies_from = setting.start_epoch
        yield setting


def settled_if_all_released(report: EpochReport, job_id: int) -> tuple[int, int, int, int]:
    """The job's (job, release, refund, burn) of ``report``'s epoch if every share of its agreed
    tenures was released (SETTLEMENT.md rules 1, 2 and 4), at the price and policy it cites: what
    no lie may change for a job whose holders served it."""
    job = next(j for j in report.inputs.jobs if j.job_id == job_id)
    price, bps = job.price_per_node_epoch, job.policy.protocol_burn_bps
    release = burn = 0
    for replica in range(job.replicas):
        tenures = {row[2]: row[3] for row in report.tenure if row[0] == job_id and row[1] == replica}
        shares, _ = split_by_tenure(price, tenures, report.inputs.end_ms - report.inputs.start_ms)
        for share in shares.values():
            burn += share * bps // BPS_DENOMINATOR
            release += share * (BPS_DENOMINATOR - bps) // BPS_DENOMINATOR
    return (job_id, release, price * job.replicas - release - burn, burn)
