#!/usr/bin/env python3
"""Oracle benchmark: how long after an epoch ends its root is on chain (``finalization_s``), with 7
oracles (t = 5) watching 100 licensed nodes, and the gas of settling it end to end. Writes
``benchmarks/oracle.json``.

The chain is anvil (automine: a block per transaction, as a devnet mines). 100 nodes are licensed
(10 owners hold them), 7 oracles registered with threshold 5, a CSP admitted; 50 jobs of 2
replicas are funded and announced on the mesh, where the nodes place them. The 100 nodes run in a
process of their own (``--node-process``: ``mesh.open_node`` on the memory transport, placement by
``mesh._scheduler.step``; a few of them also on libp2p). The 7 oracles run either

- as processes (``--mode processes``): each ``deedmesh oracle run`` with its keystore, as deployed,
  dialing two of the gateway nodes; the bench sees each epoch land by polling the chain; or
- in this process (``--mode in-process``): each ``oracle._service.Oracle`` on a libp2p participant
  of its own, with its own ``Chain`` connection and ``ChainGate``, timed from inside (the phases of
  each round). They share this process (and its GIL) with each other, as 7 machines would not.

``--mode both`` (the default) runs the first, then the second. Either way, on this 2-core machine
the oracles, the 100 nodes and anvil share two cores.

The oracles run the service as it is (``oracle._service.Oracle``, timed by subclassing). Earlier
versions of this script prototyped two changes (the watcher's mesh view read once a sample, the
chain inputs read in two batches); both are in the service since (BENCHMARKS.md has the figures).

Measured per job epoch: ``finalization_s`` = the wall time at which the submitting oracle held the
receipt of the ``submitReport`` that landed the epoch (anvil mines the block on the send) minus the
epoch's end on the escrow's clock (genesis + (e + 1) x epoch). The landing leader's round in
phases: ``to_lead`` (``settle_s``, then its own observation and chain checks), ``observations``
(asking the others), ``build`` (previous report, chain inputs, report, own checks, signature),
``signatures`` (asking the others to sign: each re-reads the chain inputs at the cited block) and
``submit`` (gas estimate, send, receipt). Gas: every ``submitReport`` of the job epochs (a root
and a totals root: the same cost however many jobs), then, once, what ``deedmesh claim``,
``refund`` and ``burn`` send after the last epoch (``oracle._settle``): one ``claim`` transaction
per license owner against the last report, applying the totals of the jobs it claims from in the
same transaction (``multicall``), the CSP's refunds and one burn, over the node-epochs settled.
Claims are cumulative, so claiming once after N epochs is what an owner claiming every N epochs
pays per epoch; the figure is for claims after the whole window (``--epochs``).
Usage: ``python scripts/bench_oracle.py [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.types import TxReceipt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import _host_stack, _rss_mb, node_identity, percentile, quiet_libp2p_logs, write_result

from contracts import (
    Anvil,
    Chain,
    DeployConfig,
    Deployment,
    Epoch,
    JobParams,
    SettlementPolicy,
    TokenUnits,
    csp_admission,
    deploy,
    sign,
)
from contracts._anvil import stop_process
from mesh import Libp2pConfig, Node, NodeConfig, open_libp2p_transport, open_node
from mesh._identity import NodeIdentity, write_keystore
from mesh._jobspec import JobSpec, spec_hash
from mesh._jobspec_load import load_spec
from mesh._membership import LivenessConfig
from mesh._scheduler import PlanMemo, assignment, step
from mesh._submission import sign_submission
from mesh._transport import SUBSCRIPTION_BUFFER, MemoryNetwork, Message, Transport
from mesh._wire_capacity import Capacity, Resources
from oracle._devnet_money import read_reports
from oracle._inputs import read_inputs
from oracle._report import (
    ChainInputs,
    EpochReport,
)
from oracle._service import ChainGate, Oracle, OracleConfig
from oracle._settle import burn_round, claim_round, refund_round
from oracle._watch import EpochClock

ROOT = Path(__file__).resolve().parent.parent
PRICE = TokenUnits(2_000_000)  # 2 mUSD per node-epoch, as the devnet
POLICY = SettlementPolicy(release_threshold=230, burn_floor=64, protocol_burn_bps=250)  # as the devnet
ETH = 10**18
SEED = 61
T = TypeVar("T")


def key(role: str, i: int) -> LocalAccount:
    """A deterministic bench key (never a real one)."""
    return Account.from_key(hashlib.sha256(f"deedmesh-bench-oracle-{role}-{i}".encode()).digest())


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class Sent:
    """One mined transaction an instrumented chain sent: ``mined`` is the wall time its receipt was
    back (automine: the block is mined on the send, the receipt is asked for at once)."""

    fn: str
    sender: str
    first_arg: Any
    gas: int
    block: int
    began: float
    mined: float


@dataclass
class TimedChain(Chain):
    """A chain connection that records every transaction it sends (and the ones refused before sending)."""

    sent: list[Sent] = field(default_factory=list)
    refused: list[tuple[str, float, str]] = field(default_factory=list)

    def transact(self, fn: Any, sender: str, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        began = time.time()
        name = str(getattr(fn, "fn_name", "constructor"))
        try:
            receipt = super().transact(fn, sender, value=value, gas=gas)
        except Exception as exc:
            self.refused.append((name, began, type(exc).__name__))
            raise
        args = getattr(fn, "args", None) or (None,)
        self.sent.append(Sent(name, sender, args[0], int(receipt["gasUsed"]), int(receipt["blockNumber"]), began,
                              time.time()))
        return receipt


def timed_chain(url: str) -> TimedChain:
    chain = TimedChain.connect(url)
    assert isinstance(chain, TimedChain)
    return chain


@dataclass
class World:
    url: str
    chain: TimedChain  # the setup connection: admin, CSP and owners send from it
    dep: Deployment
    admin: str
    csp: LocalAccount
    owners: list[LocalAccount]
    nodes: list[NodeIdentity]
    oracles: list[LocalAccount]
    license_of: dict[str, int]  # node address -> license id
    owner_of: dict[int, str]  # license id -> owner address
    setup_s: float = 0.0


def build_world(url: str, *, nodes: int, oracles: int, threshold: int, owners: int, epoch_s: int) -> World:
    """Deploy, license and link the nodes, register and fund the oracles, admit and fund the CSP."""
    began = time.monotonic()
    chain = timed_chain(url)
    admin = chain.accounts[0]
    csp = key("csp", 0)
    owner_keys = [key("owner", i) for i in range(owners)]
    oracle_keys = sorted((key("oracle", i) for i in range(oracles)), key=lambda k: k.address.lower())
    attester = key("attester", 0)
    node_ids = [node_identity(SEED, i) for i in range(nodes)]
    for account in (csp, *owner_keys, *oracle_keys):
        chain.add_signer(account)
        chain.send_value(admin, account.address, 100 * ETH)
    config = DeployConfig(epoch_seconds=epoch_s, close_grace_epochs=2, relink_cooldown_s=0,
                          oracle_threshold=threshold, mock_token=True)
    dep = deploy(chain, config, admin=admin, oracles=[k.address for k in oracle_keys], attester=attester.address)
    licenses, escrow, token = dep.licenses(chain), dep.escrow(chain), dep.payment_token(chain)
    license_of: dict[str, int] = {}
    owner_of: dict[int, str] = {}
    for i, ident in enumerate(node_ids):
        owner = owner_keys[i % owners].address
        license_id = licenses.mint(owner, sender=admin)
        licenses.link_node(license_id, ident.address, sender=owner)
        license_of[ident.address.lower()], owner_of[license_id] = license_id, owner
    licenses.mint(csp.address, sender=admin)  # the deed requirement
    token.mint(csp.address, 10**15, sender=admin)
    token.approve(escrow.address, 10**15, sender=csp.address)
    valid_until = chain.now() + 30 * 24 * 3600
    kyc = b"bench-kyc".ljust(32, b"\0")
    admission = sign(csp_admission(escrow.domain(), csp.address, kyc, valid_until, 1), attester.key)
    escrow.admit_csp(csp.address, kyc, valid_until, 1, admission, sender=csp.address)
    return World(url, chain, dep, admin, csp, owner_keys, node_ids, oracle_keys, license_of, owner_of,
                 round(time.monotonic() - began, 1))


def the_spec() -> JobSpec:
    spec = load_spec(ROOT / "examples" / "car-web.yaml")
    return spec.model_copy(update={"placement": spec.placement.model_copy(update={"include": ()})})


def create_jobs(world: World, spec: JobSpec, jobs: int, replicas: int, start: int, epochs: int) -> list[int]:
    escrow = world.dep.escrow(world.chain)
    params = JobParams(spec_hash=spec_hash(spec), token=world.dep.payment_token(world.chain).address,
                       replicas=replicas, epochs=epochs, start_epoch=Epoch(start), price_per_node_epoch=PRICE,
                       policy=POLICY)
    return [int(escrow.create_job(params, sender=world.csp.address)) for _ in range(jobs)]


# ------------------------------------------------------------------------------------- the oracles


class TimedGate(ChainGate):
    """The oracle's chain thread, recording each call: its name, when it asked, got the thread, and was done."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float, float]] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        asked = time.time()
        name = getattr(fn, "__name__", "?")
        got = done = asked

        def timed(*a: Any) -> T:
            nonlocal got, done
            got = time.time()
            try:
                return fn(*a)
            finally:
                done = time.time()

        try:
            return await super().run(timed, *args)
        finally:
            self.calls.append((name, asked, got, done))


@dataclass
class TimedOracle(Oracle):
    """The service as it is, with timestamps around its steps (wall clock, s)."""

    settles: dict[int, tuple[float, float]] = field(default_factory=dict)  # epoch -> (began, ended)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # rounds it led
    asks: list[tuple[str, int, float, float, int]] = field(default_factory=list)  # kind, epoch, began, ended, answers
    signed: list[tuple[int, float, float, bool]] = field(default_factory=list)  # as a follower: epoch, began, ended, ok

    async def settle(self, epoch: int) -> None:
        fresh, began = epoch not in self.settled, time.time()
        await super().settle(epoch)
        if fresh:
            self.settles.setdefault(epoch, (began, time.time()))

    async def _lead(self, epoch: int, round_: int, oracles: frozenset[str], threshold: int) -> str:
        record: dict[str, Any] = {"epoch": epoch, "round": round_, "began": time.time(), "outcome": "round over"}
        self.rounds.append(record)
        try:
            record["outcome"] = await super()._lead(epoch, round_, oracles, threshold)
            return str(record["outcome"])
        finally:
            record["ended"] = time.time()
            if record["outcome"] != "submitted":
                print(f"epoch {epoch} round {round_} led by {self.address[:10]}: {record['outcome']}",
                      file=sys.stderr, flush=True)

    async def _ask_all(self, oracles: frozenset[str], message: dict[str, Any], *args: Any,
                       **kwargs: Any) -> list[dict[str, Any]]:
        began = time.time()
        answers = await super()._ask_all(oracles, message, *args, **kwargs)
        epoch = message.get("epoch", message.get("report", {}).get("epoch", -1))
        self.asks.append((str(message["kind"]), int(epoch), began, time.time(), len(answers)))
        return answers

    async def _sign(self, raw: Any) -> dict[str, Any]:
        began = time.time()
        answer = await super()._sign(raw)
        self.signed.append((int(raw.get("epoch", -1)) if isinstance(raw, dict) else -1, began, time.time(),
                            "signature" in answer))
        return answer


# ------------------------------------------------------------------------------------- the mesh


def node_capacity() -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    return Capacity(version=1, total=total, free=total, tags=("edge", "runner:car"))


def oracle_capacity() -> Capacity:
    none = Resources(cpu_millis=0, memory_mb=0, gpus=0, disk_mb=0)
    return Capacity(version=1, total=none, free=none, tags=("oracle",))  # as mesh.open_participant advertises


def dial_plan(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """Node i dials i - 1 and two others at random (discovery tops up to 4 connections)."""
    links = []
    for i in range(n):
        targets = {i - 1} if i else set()
        while len(targets) < min(3, n - 1):
            targets.add(rng.randrange(n))
        targets.discard(i)
        links += [(i, j) for j in sorted(targets)]
    return links


class BridgeTransport:
    """A node of the nodes' process on the memory network and on libp2p at once (a gateway the
    oracles' participants dial). Memory peers are addresses (``0x...``), libp2p peers peer ids:
    each call goes to the transport its peer or address belongs to; direct frames from both arrive
    on one channel. The node needs no more of a transport than this (``_node``)."""

    def __init__(self, memory: Transport, p2p: Transport, nursery: trio.Nursery) -> None:
        self._memory, self._p2p, self._nursery = memory, p2p, nursery
        self._frames: trio.MemoryReceiveChannel[Message] | None = None

    def _of(self, peer_or_addr: str) -> Transport:
        return self._memory if peer_or_addr.startswith("0x") else self._p2p

    @property
    def local_id(self) -> str:
        return self._memory.local_id

    def addrs(self) -> list[str]:
        return self._p2p.addrs() + self._memory.addrs()

    async def send(self, peer: str, frame: bytes) -> None:
        await self._of(peer).send(peer, frame)

    async def direct(self) -> trio.MemoryReceiveChannel[Message]:
        if self._frames is None:
            send, self._frames = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
            for transport in (self._memory, self._p2p):
                self._nursery.start_soon(self._pump, await transport.direct(), send.clone())
        return self._frames

    @staticmethod
    async def _pump(source: trio.MemoryReceiveChannel[Message], sink: trio.MemorySendChannel[Message]) -> None:
        async with sink:
            async for message in source:
                await sink.send(message)

    async def connect(self, addr: str) -> None:
        await self._of(addr).connect(addr)

    async def disconnect(self, peer: str) -> None:
        await self._of(peer).disconnect(peer)

    def peers(self) -> set[str]:
        return self._memory.peers() | self._p2p.peers()

    def address_of(self, peer: str) -> str | None:
        return self._of(peer).address_of(peer)

    def set_handler(self, protocol: str, handler: Any, *, max_request_bytes: int, timeout_s: float) -> None:
        for transport in (self._memory, self._p2p):
            transport.set_handler(protocol, handler, max_request_bytes=max_request_bytes, timeout_s=timeout_s)

    async def request(self, peer: str, protocol: str, data: bytes, *, timeout_s: float,
                      max_response_bytes: int) -> bytes:
        return await self._of(peer).request(peer, protocol, data, timeout_s=timeout_s,
                                            max_response_bytes=max_response_bytes)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._memory.publish(topic, data)

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]:
        return await self._memory.subscribe(topic)

    def set_validator(self, topic: str, validator: Any) -> None:
        self._memory.set_validator(topic, validator)

    async def aclose(self) -> None:
        await self._memory.aclose()
        await self._p2p.aclose()


def mesh_config(args: argparse.Namespace, max_peers: int = NodeConfig.max_peers) -> NodeConfig:
    return NodeConfig(liveness=LivenessConfig(heartbeat_interval_ms=args.heartbeat_ms), max_peers=max_peers,
                      capacity_refresh_s=args.capacity_refresh_s)


async def node_process(args: argparse.Namespace) -> None:
    """The nodes' process (``--node-process``): every licensed node on the memory network, the
    first ``--gateways`` of them also on libp2p, placement driven for all. Prints
    ``{"gateways": [...]}`` once listening, then takes JSON lines on stdin: ``{"announce": [job
    ids], "expiry": s}``, ``{"placed": [job ids]}`` (answers ``{"placed": n, "holders": n}``); at
    the end of stdin it prints ``{"cpu_s": ..., "wall_s": ...}`` and exits."""
    quiet_libp2p_logs()
    began, cpu0 = time.monotonic(), time.process_time()
    idents = [node_identity(SEED, i) for i in range(args.nodes)]
    licensed = {i.address for i in idents}
    registered = {k.address for k in (key("oracle", i) for i in range(args.oracles))}
    spec, csp = the_spec(), key("csp", 0)
    escrow = (args.chain_id, args.escrow)
    network = MemoryNetwork(seed=SEED, auto_connect=False)
    async with _host_stack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        transports: list[Transport] = []
        for k, ident in enumerate(idents):
            memory = network.endpoint(ident.address)
            if k < args.gateways:
                p2p = await stack.enter_async_context(open_libp2p_transport(ident, Libp2pConfig(pubsub=False)))
                transports.append(BridgeTransport(memory, p2p, nursery))
            else:
                transports.append(memory)
        for i, j in dial_plan(args.nodes, random.Random(SEED)):
            await transports[i].connect(idents[j].address)
        nodes = [await stack.enter_async_context(open_node(
            mesh_config(args, 16 if k < args.gateways else NodeConfig.max_peers), ident, transport, node_capacity(),
            licensed.__contains__, escrow=escrow, is_oracle=registered.__contains__))
            for k, (ident, transport) in enumerate(zip(idents, transports, strict=True))]
        nursery.start_soon(drive_placement, nodes, args.plan_s, int(args.lease_s * 1000))
        gateways = [t.addrs()[0] for t in transports[:args.gateways]]
        print(json.dumps({"gateways": gateways}), flush=True)

        async def report() -> None:
            while True:
                await trio.sleep(10)
                held = sum(1 for node in nodes if (c := node.claims.get(node.address)) is not None and c.claims)
                print(f"  nodes' process: jobs known by each node {min(len(x.jobs) for x in nodes)}-"
                      f"{max(len(x.jobs) for x in nodes)}, {held} nodes claim replicas, "
                      f"CPU {time.process_time() - cpu0:.0f} s in {time.monotonic() - began:.0f} s",
                      file=sys.stderr, flush=True)

        nursery.start_soon(report)
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            command = json.loads(line)
            for job_id in command.get("announce", ()):
                nodes[0].announce_job(sign_submission(bytes(csp.key), *escrow, job_id, spec_hash(spec), 1,
                                                      command["expiry"]), csp.address, spec)
            if "placed" in command:  # the replicas of these jobs placed, as node 0 sees them
                where = [h for j in command["placed"] for h in assignment(nodes[0], j).values()]
                print(json.dumps({"placed": len(where), "holders": len(set(where))}), flush=True)
        print(json.dumps({"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - began}), flush=True)
        nursery.cancel_scope.cancel()


async def drive_placement(nodes: list[Node], every_s: float, lease_ms: int) -> None:
    """Every node's placement, one node after the other, every ``every_s``: ``mesh._scheduler.step``
    is the plan ``run_scheduler`` makes (same rules, same signed claim sets, leases renewed well
    within the lease), but ``run_scheduler`` re-plans on every change of the node's view, and 100
    of those loops in one process saturate it while 100 replicas are placed."""
    memos = {node.address: PlanMemo() for node in nodes}
    while True:
        began = trio.current_time()
        for node in nodes:
            step(node, lease_ms, memo=memos[node.address])
            await trio.lowlevel.checkpoint()
        await trio.sleep_until(began + every_s)


async def poll(predicate: Callable[[], bool], deadline_s: float, what: str,
               status: Callable[[], str] | None = None) -> None:
    began = last = time.monotonic()
    with trio.move_on_after(deadline_s):
        while not predicate():
            await trio.sleep(0.2)
            if status is not None and time.monotonic() - last > 10:
                last = time.monotonic()
                print(f"  waiting {last - began:.0f} s until {what}: {status()}", file=sys.stderr, flush=True)
        return
    raise TimeoutError(f"{what}: not within {deadline_s} s")


def landed(oracles: list[TimedOracle]) -> dict[int, Sent]:
    """Epoch -> the submitReport that landed it (each oracle's chain records what it sent)."""
    out: dict[int, Sent] = {}
    for o in oracles:
        assert isinstance(o.chain, TimedChain)
        for s in o.chain.sent:
            if s.fn == "submitReport":
                out[int(s.first_arg)] = s
    return out


@dataclass
class Run:
    oracles: list[TimedOracle]
    jobs: list[int]
    first_epoch: int
    last_epoch: int
    window: tuple[float, float]  # wall time of the job epochs: start of the first, landing of the last
    cpu_s: float  # this process's CPU during the window
    anvil_cpu_s: float
    rss_mb: float
    mesh_ready_s: float
    holders: int  # distinct nodes holding a replica when the jobs started
    watch_view: dict[str, Any]  # one oracle watcher's view of the mesh (taken every 250 ms), at the end
    nodes_cpu_share: float  # the nodes' process: CPU over its lifetime, share of one core


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_node_process(world: World, args: argparse.Namespace) -> tuple[subprocess.Popen[str], list[str]]:
    """The nodes' process (``node_process``), started and listening: (its handle, its gateways)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--node-process", "--nodes", str(len(world.nodes)),
               "--oracles", str(len(world.oracles)), "--chain-id", str(world.chain.chain_id),
               "--escrow", world.dep.escrow(world.chain).address, "--heartbeat-ms", str(args.heartbeat_ms),
               "--plan-s", str(args.plan_s), "--gateways", str(args.gateways), "--lease-s", str(args.lease_s),
               "--capacity-refresh-s", str(args.capacity_refresh_s)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        return process, json.loads(process.stdout.readline())["gateways"]
    except BaseException:
        stop_process(process)
        raise


async def run_mesh(world: World, args: argparse.Namespace, work: Path, anvil_pid: int, started: float,
                   nodes_proc: subprocess.Popen[str], gateways: list[str], mesh_began: float) -> Run:
    """The oracles' side of a run: their participants on libp2p (each dials two of the nodes'
    gateways), the oracles, the jobs, and the measured epochs."""
    assert nodes_proc.stdin is not None
    assert nodes_proc.stdout is not None
    licensed: set[str] = {i.address for i in world.nodes}
    registered: set[str] = {k.address for k in world.oracles}
    clock = EpochClock(genesis_ms=world.dep.genesis_time * 1000, epoch_ms=world.dep.epoch_seconds * 1000)
    oracle_config = OracleConfig(settle_s=args.settle_s, round_s=args.round_s, request_s=args.request_s,
                                 poll_s=args.poll_s)
    chain_id = world.chain.chain_id
    escrow_address = world.dep.escrow(world.chain).address
    genesis, epoch_s = world.dep.genesis_time, world.dep.epoch_seconds
    n = len(world.nodes)
    async with _host_stack() as stack:
        watchers = []
        for index, account in enumerate(world.oracles):
            ident = NodeIdentity(bytes(account.key))
            bootstrap = [gateways[(2 * index + d) % len(gateways)] for d in range(2)]
            transport = await stack.enter_async_context(open_libp2p_transport(ident, Libp2pConfig(pubsub=False),
                                                                              bootstrap))
            watchers.append(await stack.enter_async_context(open_node(
                mesh_config(args), ident, transport, oracle_capacity(), licensed.__contains__,
                bootstrap=bootstrap, escrow=(chain_id, escrow_address), is_oracle=registered.__contains__)))
        nursery = await stack.enter_async_context(trio.open_nursery())

        def alive_counts() -> list[int]:
            return [sum(1 for a in w.membership.alive() if a in licensed) for w in watchers]

        await poll(lambda: min(alive_counts()) == n, 60 + 2 * n, "every oracle sees every node alive",
                   lambda: f"nodes alive to each oracle {alive_counts()}")
        mesh_ready_s = time.monotonic() - mesh_began
        log(started, f"mesh up: {n} nodes (another process) and {len(watchers)} oracles see each other "
                     f"({mesh_ready_s:.1f} s)")

        oracles = []
        for account, watcher in zip(world.oracles, watchers, strict=True):
            chain = timed_chain(world.url)  # each oracle its own connection, key and chain thread
            chain.add_signer(account)
            oracles.append(TimedOracle(watcher, bytes(account.key), chain, world.dep, clock, work / account.address,
                                       TimedGate(), oracle_config))
        for o in oracles:
            await nursery.start(o.run)
        started_epoch = clock.epoch_at(int(time.time() * 1000))
        # an oracle starts with the epoch before (it saw none of it) and the one it joined (it saw
        # part): neither can settle, and each gives way only at a round's end after the next epoch
        # ended, so the epoch after those may start late. The jobs start after that, and at least
        # placement_s from now (placing 100 replicas on 100 nodes took 45-60 s here)
        first = max(started_epoch + 3, clock.epoch_at(int((time.time() + args.placement_s) * 1000)) + 1)
        log(started, f"oracles running from epoch {started_epoch}; the jobs will start at epoch {first}")
        job_ids = await trio.to_thread.run_sync(create_jobs, world, the_spec(), args.jobs, args.replicas, first,
                                                args.epochs)
        nodes_proc.stdin.write(json.dumps({"announce": job_ids, "expiry": int(time.time()) + 3600}) + "\n")
        nodes_proc.stdin.flush()
        last = first + args.epochs - 1
        log(started, f"{len(job_ids)} jobs x {args.replicas} replicas funded for epochs {first}-{last}, announced")

        def placed() -> int:
            return sum(len(assignment(watchers[0], j)) for j in job_ids)

        first_start = genesis + first * epoch_s
        with trio.move_on_at(trio.current_time() + first_start - time.time()):
            await poll(lambda: placed() == len(job_ids) * args.replicas, 600, "every replica placed",
                       lambda: f"{placed()} placed; the first oracle knows {len(watchers[0].jobs)} jobs and "
                               f"{sum(1 for c in watchers[0].claims.values() if c.claims)} claim sets")
        holders = len({h for j in job_ids for h in assignment(watchers[0], j).values()})
        log(started, f"{placed()} of {len(job_ids) * args.replicas} replicas placed on {holders} distinct nodes")
        await trio.sleep(max(0.0, first_start - time.time()))
        cpu0, anvil0, began = time.process_time(), cpu_of(anvil_pid), time.time()
        reported: set[int] = set()
        deadline = genesis + (last + 1) * epoch_s + max(60, 4 * epoch_s)
        while last not in (done := landed(oracles)) and time.time() < deadline:
            for e in sorted(set(done) - reported):
                if first <= e <= last:
                    end = genesis + (e + 1) * epoch_s
                    log(started, f"epoch {e} ({e - first + 1}/{args.epochs}) on chain "
                                 f"{done[e].mined - end:.2f} s after its end")
                reported.add(e)
            await trio.sleep(0.2)
        ended = time.time()
        cpu, anvil_cpu = time.process_time() - cpu0, cpu_of(anvil_pid) - anvil0
        leader_of_last = [r for o in oracles for r in o.rounds if r["epoch"] == last]
        with trio.move_on_after(15):  # the landing leader's round ends
            while any("ended" not in r for r in leader_of_last):  # noqa: ASYNC110
                await trio.sleep(0.1)
        rss = _rss_mb()
        nodes_proc.stdin.close()  # the nodes' process reports its CPU and exits
        nodes_cpu = json.loads(await trio.to_thread.run_sync(nodes_proc.stdout.readline))
        t0 = time.perf_counter()  # what each oracle's watcher computes every 250 ms
        for o in oracles:
            o.watcher.view()
        watch_view = {"view_ms": round((time.perf_counter() - t0) / len(oracles) * 1000, 1)}
        nursery.cancel_scope.cancel()
    return Run(oracles, job_ids, first, last, (began, ended), cpu, anvil_cpu, rss, mesh_ready_s, holders, watch_view,
               round(nodes_cpu["cpu_s"] / nodes_cpu["wall_s"], 2))



@dataclass
class ProcessRun:
    """A run with every oracle a ``deedmesh oracle run`` process: what the bench saw from outside."""

    jobs: list[int]
    first_epoch: int
    last_epoch: int
    window: tuple[float, float]
    seen: dict[int, float]  # epoch -> wall time the bench first saw its root on chain (polling)
    events: list[dict[str, Any]]  # the oracles' JSON lines (settled / no-quorum)
    report_dirs: list[Path]
    holders: int
    mesh_ready_s: float
    nodes_cpu_share: float


POLL_S = 0.05  # how often the bench asks the chain whether an epoch landed, in the processes mode


async def run_processes(world: World, args: argparse.Namespace, work: Path, started: float,
                        nodes_proc: subprocess.Popen[str], gateways: list[str], mesh_began: float) -> ProcessRun:
    """The oracles as deployed: each a ``deedmesh oracle run`` process with its keystore, dialing
    two of the nodes' gateways; finalization as seen from outside (the chain polled every
    ``POLL_S``: at most that much is added to each figure)."""
    assert nodes_proc.stdin is not None
    assert nodes_proc.stdout is not None
    record = work / "deployment.json"
    record.write_text(world.dep.to_json())
    password = "bench-oracle"
    env = os.environ | {"DEEDMESH_KEY_PASSWORD": password}
    deedmesh = str(Path(sys.executable).with_name("deedmesh"))
    procs: list[subprocess.Popen[str]] = []
    events: list[dict[str, Any]] = []
    dirs = [work / f"oracle-{i}" for i in range(len(world.oracles))]
    genesis, epoch_s = world.dep.genesis_time, world.dep.epoch_seconds
    escrow = world.dep.escrow(world.chain)
    try:
        for index, (account, directory) in enumerate(zip(world.oracles, dirs, strict=True)):
            keystore = write_keystore(work / f"oracle-{index}.json", NodeIdentity(bytes(account.key)), password,
                                      scrypt_n=2**10)
            bootstrap = [a for d in range(2) for a in ("--bootstrap", gateways[(2 * index + d) % len(gateways)])]
            procs.append(subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
                [deedmesh, "--log-level", "warning", "oracle", "run", "--key", str(keystore), "--rpc", world.url,
                 "--deployment", str(record), "--dir", str(directory), "--settle-s", str(args.settle_s),
                 "--round-s", str(args.round_s), "--heartbeat-interval-ms", str(min(args.heartbeat_ms, 60_000)),
                 *bootstrap], stdout=subprocess.PIPE, text=True, env=env))
        for proc in procs:  # each prints {"event": "ready"} once its participant is up
            assert proc.stdout is not None
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            if json.loads(line or "{}").get("event") != "ready":
                raise RuntimeError(f"an oracle process did not start: {line!r}")

        async def follow(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            while line := await trio.to_thread.run_sync(proc.stdout.readline,  # type: ignore[call-arg]
                                                        abandon_on_cancel=True):
                events.append(json.loads(line) | {"at": time.time()})

        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(follow, proc)
            mesh_ready_s = time.monotonic() - mesh_began
            log(started, f"{len(procs)} oracle processes up ({mesh_ready_s:.1f} s after the mesh started)")
            clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=epoch_s * 1000)
            started_epoch = clock.epoch_at(int(time.time() * 1000))
            first = max(started_epoch + 3, clock.epoch_at(int((time.time() + args.placement_s) * 1000)) + 1)
            job_ids = await trio.to_thread.run_sync(create_jobs, world, the_spec(), args.jobs, args.replicas, first,
                                                    args.epochs)
            nodes_proc.stdin.write(json.dumps({"announce": job_ids, "expiry": int(time.time()) + 3600}) + "\n")
            nodes_proc.stdin.flush()
            last = first + args.epochs - 1
            log(started, f"{len(job_ids)} jobs x {args.replicas} replicas funded for epochs {first}-{last}, "
                         "announced")

            async def placed() -> dict[str, int]:
                nodes_proc.stdin.write(json.dumps({"placed": job_ids}) + "\n")  # type: ignore[union-attr]
                nodes_proc.stdin.flush()  # type: ignore[union-attr]
                reader = nodes_proc.stdout
                assert reader is not None
                answer: dict[str, int] = json.loads(await trio.to_thread.run_sync(reader.readline))
                return answer

            first_start = genesis + first * epoch_s
            with trio.move_on_at(trio.current_time() + first_start - time.time()):
                while (count := await placed())["placed"] < len(job_ids) * args.replicas:  # noqa: ASYNC110
                    await trio.sleep(1)  # polling the nodes' process until every replica is placed
            count = await placed()
            log(started, f"{count['placed']} of {len(job_ids) * args.replicas} replicas placed on "
                         f"{count['holders']} distinct nodes")
            await trio.sleep(max(0.0, first_start - time.time()))
            began = time.time()
            seen: dict[int, float] = {}
            deadline = genesis + (last + 1) * epoch_s + max(60, 4 * epoch_s)
            while time.time() < deadline:
                landed_to = await trio.to_thread.run_sync(escrow.next_epoch)  # epochs below it have landed
                now = time.time()
                for e in range(first, min(landed_to, last + 1)):
                    if e not in seen:
                        seen[e] = now
                        log(started, f"epoch {e} ({e - first + 1}/{args.epochs}) landed or given up "
                                     f"{now - (genesis + (e + 1) * epoch_s):.2f} s after its end")
                if last in seen:
                    break
                await trio.sleep(POLL_S)
            ended = time.time()
            nodes_proc.stdin.close()  # the nodes' process reports its CPU and exits
            nodes_cpu = json.loads(await trio.to_thread.run_sync(nodes_proc.stdout.readline))  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            stop_process(proc)
    return ProcessRun(job_ids, first, last, (began, ended), seen, events, [d / "reports" for d in dirs],
                      count["holders"], mesh_ready_s, round(nodes_cpu["cpu_s"] / nodes_cpu["wall_s"], 2))


def process_figures(world: World, run: ProcessRun) -> dict[str, Any]:
    """Finalization, rounds and gas of a processes run (``run_processes``)."""
    genesis, epoch_s = world.dep.genesis_time, world.dep.epoch_seconds
    reports = read_reports(run.report_dirs)
    escrow = world.dep.escrow(world.chain)
    settled = [e for e in escrow.contract.events.EpochSettled().get_logs(from_block=world.dep.block)
               if run.first_epoch <= int(e["args"]["epoch"]) <= run.last_epoch]
    # an epoch given up (no quorum) is passed by the next one's landing: only EpochSettled says it landed;
    # one that landed did so when the chain's nextEpoch first passed it (reports land in order)
    landed = {int(e["args"]["epoch"]) for e in settled}
    rows: list[dict[str, Any]] = [
        {"epoch": e, "landed": e in landed,
         **({"finalization_s": round(run.seen[e] - (genesis + (e + 1) * epoch_s), 3)} if e in landed else {}),
         "rounds": sorted({ev["rounds"] for ev in run.events if ev.get("epoch") == e and "rounds" in ev})}
        for e in range(run.first_epoch, run.last_epoch + 1)]
    submit_gas = [int(world.chain.w3.eth.get_transaction_receipt(e["transactionHash"])["gasUsed"]) for e in settled]
    money = settle_money(world, run.jobs, sorted(p for d in run.report_dirs for p in d.glob("*.json")))
    in_window = {e: r for e, r in reports.items() if run.first_epoch <= e <= run.last_epoch}
    gas = gas_totals(submit_gas, money, in_window)
    finals = [r["finalization_s"] for r in rows if "finalization_s" in r]
    return {"finalization_s": stats(finals), "epochs_measured": len(rows), "epochs_landed": len(finals),
            "epochs_needing_more_than_one_round": sum(1 for r in rows if any(n > 1 for n in r["rounds"])),
            "epochs_not_landed": [r["epoch"] for r in rows if not r["landed"]], "gas": gas,
            "conservation": {"balanced": money["balanced"], "locked": money["locked"],
                             "unclaimed": money["unclaimed"]},
            "process": {"mesh_ready_s": round(run.mesh_ready_s, 1), "distinct_holders": run.holders,
                        "nodes_process_cpu_share_of_one_core": run.nodes_cpu_share,
                        "window_s": round(run.window[1] - run.window[0], 1)},
            "epochs": rows}


# ------------------------------------------------------------------------------------- figures


def stats(values: list[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p99": None, "samples": 0}
    return {"p50": round(statistics.median(values), digits), "p99": round(percentile(values, 99), digits),
            "max": round(max(values), digits), "samples": len(values)}


def epoch_rows(world: World, run: Run) -> list[dict[str, Any]]:
    genesis, epoch_s = world.dep.genesis_time, world.dep.epoch_seconds
    done = landed(run.oracles)
    rows = []
    for e in range(run.first_epoch, run.last_epoch + 1):
        end = genesis + (e + 1) * epoch_s
        led = sorted(({**r, "oracle": o.address} for o in run.oracles for r in o.rounds if r["epoch"] == e),
                     key=lambda r: r["round"])
        row: dict[str, Any] = {"epoch": e, "landed": e in done,
                               "rounds": [(r["round"], r["outcome"]) for r in led]}
        if e not in done:
            rows.append(row)
            continue
        sent = done[e]
        block = world.chain.w3.eth.get_block(sent.block)
        # the landing round: the one its submitter was leading when it sent the report (its outcome
        # may read "round over" if the burns after landing were cut by the round's time)
        lead = max((r for r in led if r["oracle"].lower() == sent.sender.lower() and r["began"] <= sent.began),
                   key=lambda r: r["began"], default=None)
        row |= {"finalization_s": round(sent.mined - end, 3),
                "finalization_block_timestamp_s": int(block["timestamp"]) - end,
                "landing_round": None if lead is None else lead["round"]}
        oracle = next((o for o in run.oracles if lead is not None and o.address == lead["oracle"]), None)
        if lead is not None and oracle is not None:
            asks = {kind: (a, b, n) for kind, epoch, a, b, n in oracle.asks if epoch == e and a >= lead["began"]}
            obs, sig = asks.get("observation"), asks.get("sign")
            if obs is not None and sig is not None:
                row["phases_s"] = {
                    "to_lead": round(obs[0] - end, 3),  # settle_s, then its own observation and chain checks
                    "observations": round(obs[1] - obs[0], 3),
                    "build": round(sig[0] - obs[1], 3),
                    "signatures": round(sig[1] - sig[0], 3),
                    "submit": round(sent.mined - sig[1], 3),
                }
                row["answers"] = {"observations": obs[2], "signatures": sig[2]}
        rows.append(row)
    return rows


def settle_money(world: World, jobs: list[int], published: list[Path]) -> dict[str, Any]:
    """What ``deedmesh claim``, ``refund`` and ``burn`` do (``oracle._settle``): each license owner
    claims in one transaction against the latest settled report (from the oracles' published
    files), the CSP takes its refunds, anyone burns what is due, each applying the report's totals
    first; then conservation per job."""
    chain = world.chain
    escrow = world.dep.escrow(chain)
    marks = [len(chain.sent)]
    claimed = [claim_round(chain, world.dep, owner.address, report_paths=published) for owner in world.owners]
    marks.append(len(chain.sent))
    refund = refund_round(chain, world.dep, world.csp.address, job_ids=jobs, report_paths=published)
    marks.append(len(chain.sent))
    burn = burn_round(chain, world.dep, world.admin, job_ids=jobs, report_paths=published)
    marks.append(len(chain.sent))
    sent = {kind: chain.sent[a:b] for kind, a, b in zip(("claims", "refunds", "burns"), marks[:-1], marks[1:],
                                                         strict=True)}
    balanced = True
    locked = 0
    for j in jobs:
        c = escrow.get_job(j).conservation()
        balanced &= c["deposited"] == c["released"] + c["refunded"] + c["burned"] + c["locked"]
        locked += c["locked"]
    claimable = sum(max(0, j.alloc_release - j.release_spent) for j in (escrow.get_job(i) for i in jobs))
    return {"sent": sent, "claim_transactions": sum(1 for c in claimed if c.tx),
            "claims": sum(len(c.paid) for c in claimed), "claim_skipped": sum(len(c.skipped) for c in claimed),
            "claim_epochs": sorted({c.epoch for c in claimed if c.epoch is not None}),
            "refund": refund.note or f"{len(refund.moved)} jobs", "burn": burn.note or f"{len(burn.moved)} jobs",
            "balanced": balanced, "locked": locked, "unclaimed": claimable}


def gas_figures(world: World, run: Run, money: dict[str, Any], reports: dict[int, EpochReport]) -> dict[str, Any]:
    oracle_sent = [s for o in run.oracles for s in o.chain.sent]  # type: ignore[attr-defined]
    in_window = [s.gas for s in oracle_sent
                 if s.fn == "submitReport" and run.first_epoch <= int(s.first_arg) <= run.last_epoch]
    warmup = [s for s in oracle_sent if s.fn == "submitReport" and int(s.first_arg) < run.first_epoch]
    settled = {e: r for e, r in reports.items() if run.first_epoch <= e <= run.last_epoch}
    return gas_totals(in_window, money, settled) | {
        "warmup_reports_not_counted": {"transactions": len(warmup), "gas": sum(s.gas for s in warmup)}}


def gas_totals(submit_gas: list[int], money: dict[str, Any], reports: dict[int, EpochReport]) -> dict[str, Any]:
    """Gas per node-epoch: the job epochs' ``submitReport``s (``submit_gas``) and what
    ``settle_money`` sent, over the (node, epoch) pairs the settled ``reports`` name."""
    claims, refunds, burns = money["sent"]["claims"], money["sent"]["refunds"], money["sent"]["burns"]
    node_epochs = sum(len({row[2] for row in r.tenure if row[3] > 0}) for r in reports.values())
    slot_epochs = sum(len({(row[0], row[1]) for row in r.tenure if row[3] > 0}) for r in reports.values())
    parts = {"submit_report": sum(submit_gas), "execute_burn": sum(s.gas for s in burns),
             "claims": sum(s.gas for s in claims), "take_refund": sum(s.gas for s in refunds)}
    total = sum(parts.values())
    return {
        "gas_per_node_epoch": round(total / node_epochs) if node_epochs else None,
        "gas_per_slot_epoch": round(total / slot_epochs) if slot_epochs else None,
        "node_epochs_settled": node_epochs, "slot_epochs_settled": slot_epochs,
        "total_gas": total, "by_kind": parts,
        "transactions": {"submit_report": len(submit_gas), "execute_burn": len(burns), "claim": len(claims),
                         "take_refund": len(refunds)},
        "per_transaction": {
            "submit_report": stats([float(g) for g in submit_gas], 0),
            "execute_burn": stats([float(s.gas) for s in burns], 0),
            "claim": stats([float(s.gas) for s in claims], 0),
        },
        "claims_batched": money["claims"],
        "counted": "every submitReport of the job epochs (the ones that landed); after the last, one batched "
                   "claim per license owner against the last report (cumulative: covers every epoch), applying "
                   "the totals of its jobs in the same transaction, the CSP's refund and one burn (each applying "
                   "what is not applied yet); warm-up epochs' reports (no jobs) are not counted. node-epochs: "
                   "(node, epoch) pairs in which a node held a replica (tenure > 0) in a settled job epoch",
    }


def read_inputs_alone(world: World, epoch: int, reader: Callable[..., ChainInputs], runs: int = 3) -> float:
    """An oracle's chain read (the inputs for every node) with nothing else running, median s."""
    nodes = [i.address for i in world.nodes]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        reader(world.chain, world.dep, epoch, nodes)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def follower_sign_alone(run: Run, reports: dict[int, EpochReport], runs: int = 3) -> dict[str, Any]:
    """A follower's whole answer to "sign" (``Oracle._sign``: decode, oracle set, verify, previous
    report, chain inputs at the cited block, own view) for the last settled job epoch, with
    nothing else running: what it costs on an oracle's own machine (median s)."""
    settled = [e for e in reports if run.first_epoch <= e <= run.last_epoch]
    if not settled:
        return {}
    report = reports[max(settled)]
    raw = json.loads(report.model_dump_json())
    oracle = next(o for o in run.oracles if not any(r["epoch"] == report.epoch and r["outcome"] == "submitted"
                                                     for r in o.rounds))
    oracle.gate = TimedGate()  # a fresh chain thread for a fresh event loop
    times, signed = [], True
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = trio.run(oracle._sign, raw)
        times.append(time.perf_counter() - t0)
        signed &= "signature" in answer
    return {"follower_sign_alone_s": round(statistics.median(times), 3), "signed": signed, "epoch": report.epoch}


def test_suite_running() -> bool:
    """Whether a pytest process is running on the machine (the shared VM's background load)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"pytest" in (proc / "cmdline").read_bytes() and int(proc.name) != os.getpid():
                    return True
            except OSError:
                continue
    return False


# epochs of a few seconds, as a devnet runs them; the service's round and request times for them
DEFAULTS: dict[str, Any] = {"epoch_s": 10, "round_s": 8.0, "request_s": OracleConfig.request_s, "epochs": 20}


def chain_call_stats(run: Run) -> dict[str, Any]:
    """Each chain call the oracles made during the job epochs: how many, how long each ran, and how
    long it waited for its oracle's chain thread (medians, s)."""
    calls: dict[str, list[tuple[float, float]]] = {}
    for o in run.oracles:
        if isinstance(o.gate, TimedGate):
            for name, asked, got, done in o.gate.calls:
                if run.window[0] <= asked <= run.window[1]:
                    calls.setdefault(name, []).append((done - got, got - asked))
    return {name: {"calls": len(v), "run_s_p50": round(statistics.median(r for r, _ in v), 4),
                   "wait_s_p50": round(statistics.median(w for _, w in v), 4),
                   "run_s_total": round(sum(r for r, _ in v), 1)}
            for name, v in sorted(calls.items())}


def run_bench(args: argparse.Namespace, started: float) -> dict[str, Any]:
    settings = DEFAULTS | {k: v for k, v in (("epoch_s", args.epoch_s), ("round_s", args.round_s),
                                             ("request_s", args.request_s), ("epochs", args.epochs))
                           if v is not None}
    margs = argparse.Namespace(**(vars(args) | settings))
    machine = {"load_1min_at_start": os.getloadavg()[0], "test_suite_running_at_start": test_suite_running()}
    log(started, f"epochs of {margs.epoch_s} s, rounds of {margs.round_s} s, {margs.epochs} job epochs")
    with Anvil() as anvil, tempfile.TemporaryDirectory(prefix="deedmesh-bench-oracle-") as tmp:
        assert anvil.process is not None
        world = build_world(anvil.url, nodes=margs.nodes, oracles=margs.oracles, threshold=margs.threshold,
                            owners=margs.owners, epoch_s=margs.epoch_s)
        log(started, f"chain ready in {world.setup_s} s: {margs.nodes} licensed nodes, {margs.oracles} oracles "
                     f"(t = {margs.threshold})")
        mesh_began = time.monotonic()
        nodes_proc, gateways = start_node_process(world, margs)
        if margs.mode == "processes":
            try:
                outside = trio.run(run_processes, world, margs, Path(tmp), started, nodes_proc, gateways, mesh_began)
            finally:
                stop_process(nodes_proc)
            return process_figures(world, outside) | {"load": machine | {
                "load_1min_at_end": os.getloadavg()[0], "test_suite_running_at_end": test_suite_running()}}
        try:
            run = trio.run(run_mesh, world, margs, Path(tmp), anvil.process.pid, started, nodes_proc, gateways,
                           mesh_began)
        finally:
            stop_process(nodes_proc)
        machine["load_1min_at_end"] = os.getloadavg()[0]
        machine["test_suite_running_at_end"] = test_suite_running()
        reports: dict[int, EpochReport] = {}
        for o in run.oracles:
            reports |= {e: r for e, r in o.reports.items() if e not in reports}
        rows = epoch_rows(world, run)
        published = sorted(p for o in run.oracles for p in (o.directory / "reports").glob("*.json"))
        money = settle_money(world, run.jobs, published)
        gas = gas_figures(world, run, money, reports)
        alone = follower_sign_alone(run, reports) | {
                 "read_inputs_s": read_inputs_alone(world, run.last_epoch, read_inputs)}
    finals = [r["finalization_s"] for r in rows if "finalization_s" in r]
    phases = [r["phases_s"] for r in rows if "phases_s" in r]
    follower_sign = [b - a for o in run.oracles for e, a, b, _ in o.signed if run.first_epoch <= e <= run.last_epoch]
    window_s = run.window[1] - run.window[0]
    if args.trace is not None:
        args.trace.write_text(json.dumps({o.address: {
            "rounds": o.rounds, "asks": o.asks, "signed": o.signed, "settles": o.settles,
            "gate": o.gate.calls if isinstance(o.gate, TimedGate) else [],
            "sent": [asdict(x) for x in o.chain.sent], "refused": o.chain.refused,  # type: ignore[attr-defined]
        } for o in run.oracles}, default=str))
    return {
        "finalization_s": stats(finals),
        "epochs_measured": len(rows), "epochs_landed": len(finals),
        "epochs_needing_more_than_one_round": sum(1 for r in rows if (r.get("landing_round") or 0) > 0),
        "epochs_not_landed": [r["epoch"] for r in rows if not r["landed"]],
        "phases_s": {name: stats([p[name] for p in phases]) for name in (phases[0] if phases else {})},
        "follower_sign_s": stats(follower_sign),
        "chain_calls": chain_call_stats(run),
        "alone": alone,
        "gas": gas,
        "conservation": {"balanced": money["balanced"], "locked": money["locked"], "unclaimed": money["unclaimed"]},
        "settings": {
            "nodes": margs.nodes, "oracles": margs.oracles, "threshold": margs.threshold, "jobs": margs.jobs,
            "replicas": margs.replicas, "license_owners": margs.owners, "distinct_holders": run.holders,
            "epoch_s": margs.epoch_s, "job_epochs": margs.epochs, "heartbeat_ms": margs.heartbeat_ms,
            "mesh": f"{margs.nodes} nodes on the memory transport in a second process, placed by "
                    f"mesh._scheduler.step every {margs.plan_s} s (drive_placement); {margs.gateways} of them also "
                    "on libp2p, which the oracles' participants (libp2p, this process) dial",
            "lease_s": margs.lease_s, "capacity_refresh_s": margs.capacity_refresh_s,
            "oracle_config": {"settle_s": margs.settle_s, "round_s": margs.round_s, "request_s": margs.request_s,
                              "poll_s": margs.poll_s},
            "chain": "anvil 1.7.1, hardfork prague, automine",
            "price": PRICE, "policy": asdict(POLICY),
        },
        "process": {"cpu_share_of_one_core": round(run.cpu_s / window_s, 2),
                    "anvil_cpu_share_of_one_core": round(run.anvil_cpu_s / window_s, 2),
                    "nodes_process_cpu_share_of_one_core": run.nodes_cpu_share,
                    "rss_mb": round(run.rss_mb), "mesh_ready_s": round(run.mesh_ready_s, 1),
                    "watcher": run.watch_view,
                    "chain_setup_s": world.setup_s, "window_s": round(window_s, 1)},
        "epochs": rows,
        "load": machine,
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of the packages changed since (others edit them while
    benchmarks run: the oracles run the code as it was when the bench started)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--short", "--", "oracle", "mesh", "contracts").splitlines()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 nodes, 10 jobs, 3 epochs: checks the harness")
    parser.add_argument("--mode", choices=["processes", "in-process", "both"], default="both",
                        help="oracles as `deedmesh oracle run` processes, or all in this process (timed inside)")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--oracles", type=int, default=7)
    parser.add_argument("--threshold", type=int, default=5)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help=f"job epochs measured ({DEFAULTS['epochs']})")
    parser.add_argument("--epoch-s", type=int, default=None, help=f"default {DEFAULTS['epoch_s']}")
    parser.add_argument("--round-s", type=float, default=None, help=f"default {DEFAULTS['round_s']}")
    # every participant checks every record (beats, claim sets, capacities): 100 nodes in one
    # process with 10 s beats and 30 s leases kept it at 0.7-0.95 core, and on this 2-core machine
    # late beats then made nodes flap between alive and dead in the oracles' eyes; slower beats,
    # leases and capacity refreshes cost the nodes' process a third of that (the oracles' own work
    # does not depend on them: they judge a node by its own declared interval)
    parser.add_argument("--heartbeat-ms", type=int, default=20_000)
    parser.add_argument("--lease-s", type=float, default=120.0)
    parser.add_argument("--capacity-refresh-s", type=float, default=600.0)
    parser.add_argument("--gateways", type=int, default=4, help="nodes also on libp2p, for the oracles to dial")
    parser.add_argument("--plan-s", type=float, default=5.0, help="how often every node plans (drive_placement)")
    parser.add_argument("--placement-s", type=float, default=90.0, help="time to place replicas before jobs start")
    parser.add_argument("--settle-s", type=float, default=OracleConfig.settle_s)
    parser.add_argument("--poll-s", type=float, default=OracleConfig.poll_s)
    parser.add_argument("--request-s", type=float, default=None, help=f"default {DEFAULTS['request_s']}")
    parser.add_argument("--trace", type=Path, default=None, help="write every oracle's timestamps to PATH")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/oracle.json (not with --quick)")
    parser.add_argument("--node-process", action="store_true", help=argparse.SUPPRESS)  # node_process's own flags:
    parser.add_argument("--chain-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--escrow", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node_process:
        trio.run(node_process, args)
        return
    quiet_libp2p_logs()
    if args.quick:
        args.nodes, args.jobs, args.epochs, args.epoch_s = 20, 10, 3, args.epoch_s or 10
        args.round_s, args.placement_s = args.round_s or 8.0, 15.0
    out_path = args.out or (None if args.quick else ROOT / "benchmarks" / "oracle.json")
    started, code = time.monotonic(), code_state()
    modes = ["processes", "in-process"] if args.mode == "both" else [args.mode]
    runs = {mode: run_bench(argparse.Namespace(**(vars(args) | {"mode": mode})), started) for mode in modes}
    out: dict[str, Any] = {
        "finalization_s": {mode: r["finalization_s"] | {"landed": f"{r['epochs_landed']} of {r['epochs_measured']}"}
                           for mode, r in runs.items()},
        "gas_per_node_epoch": {mode: r["gas"]["gas_per_node_epoch"] for mode, r in runs.items()},
        "target": {"finalization_s": 2.0, "gas_per_node_epoch": 3000},
        "finalization": {
            "processes": "each oracle a `deedmesh oracle run` process (as deployed): the wall time at which the "
                         f"bench, polling the chain every {POLL_S} s, first saw the epoch landed, minus the epoch's "
                         "end on the escrow's clock (genesis + (e + 1) x epoch)",
            "in-process": "the 7 oracles in the bench's process (one interpreter, timed inside): the wall time at "
                          "which the submitting oracle had the receipt of the submitReport that landed the epoch, "
                          "minus the epoch's end"},
        "runs": runs,
        "code": code | {"at_end": code_state()},
        "bench_s": round(time.monotonic() - started, 1),
    }
    if out_path is None:
        print(json.dumps(out, indent=2, default=str))
    else:
        write_result(out_path, out)


if __name__ == "__main__":
    main()
