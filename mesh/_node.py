"""The gossiping node: beats, advertises capacity, syncs records with its neighbours, keeps the
mesh view, and keeps its connections to licensed, live peers.

``open_node`` is an async context manager that owns its nursery; every loop lives in it and takes
``task_status``. Intervals come from trio's clock and timestamps from an injected wall clock (in
tests both run on trio's fake clock).

Traffic (shared/notes/libp2p.md, BENCHMARKS.md): heartbeats and capacity travel by neighbour sync
(``_sync``): each hop batches one wave's records into one frame per neighbour over a direct
stream, never one gossipsub message per beat. A capacity change is news: every hop passes it on
at once instead of waiting for the wave. Gossipsub carries none of this: a frame costs ~0.5 ms of
CPU to send and receive, a gossipsub message ~5 ms at each of its ~D copies per node, and it was
the slower path (N = 20 in one process: p99 to all 650 ms published on gossipsub as well, 200 ms
by sync alone).
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import trio

from ._envelope import MAX_ENVELOPE_BYTES, Envelope, Payload, next_seq, seal
from ._errors import TransportError
from ._identity import NodeIdentity
from ._jobspec import JobSpec, revision_of
from ._membership import LivenessConfig, Membership, PeerState, Transition
from ._submission import Rejected, Submission
from ._sync import MAX_FRAME_BYTES, RecordStore, TokenBucket, decode_frame, encode_frames, peek
from ._transport import Message, Transport
from ._trio_types import TaskStatus
from ._validate import GossipState, GossipVerdict, Reject, check, record
from ._wire_capacity import TOPIC as CAPACITY_TOPIC
from ._wire_capacity import Capacity
from ._wire_claim import TOPIC as CLAIMS_TOPIC
from ._wire_claim import Claims
from ._wire_heartbeat import TOPIC as HEARTBEAT_TOPIC
from ._wire_heartbeat import Heartbeat
from ._wire_job import TOPIC as JOBS_TOPIC
from ._wire_job import JobRecord, check_job_record, job_seq, job_subject

log = logging.getLogger("deedmesh.mesh")
MODELS: dict[str, type[Payload]] = {HEARTBEAT_TOPIC: Heartbeat, CAPACITY_TOPIC: Capacity, JOBS_TOPIC: JobRecord,
                                    CLAIMS_TOPIC: Claims}
# a neighbour that relays these broke the protocol itself (honest nodes verify before relaying);
# "unlicensed" is not among them: license views may lag each other by a refresh interval
MISBEHAVIOUR = frozenset({"oversized", "malformed", "wrong-topic", "bad-signature", "malformed-payload"})
# records checked apart from their frame (Node._backlog_loop): the costly ones, that liveness must not wait for
DEFERRED = frozenset({JOBS_TOPIC, CLAIMS_TOPIC})
BACKLOG_SLICE_S = 0.01  # the backlog loop yields to the others after this much work
TRIM_SLACK = 2  # connections a node keeps above max_peers before it trims: each cut costs a resync elsewhere
MAX_WAITING = 4  # distinct records of one key the backlog keeps (the newest), see Node._on_frame
PEER = "peer"  # counters about connections rather than records
SYNC = "sync"  # counters about frames


@dataclass(frozen=True)
class NodeConfig:
    """The gossip side of a node; every default has a reason."""

    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    capacity_refresh_s: float = 60.0  # capacity goes out on change; this re-signs it now and then anyway
    tick_s: float = 0.25  # liveness and the license gate are re-judged 4x a second
    # a hop waits this long so one wave's records leave in one frame; it also caps the frames per
    # neighbour at 8 an interval when records trickle in (a loaded host); None: interval / 8
    sync_delay_s: float | None = None
    # frames to one neighbour: up to frame_burst at once, then frames_per_interval a heartbeat
    # interval (_sync.TokenBucket). A frame costs ~0.5 ms of CPU whatever it carries, and under a
    # stream of jobs every link runs at this pace: at 1,000 jobs on 20 nodes (2 s beats), 4 a
    # second took 73-87 ms of node CPU a job, 2 a second 63 (BENCHMARKS.md "Placement"). A beat
    # waits at most a quarter interval a hop for its frame
    frames_per_interval: float = 4.0
    frame_burst: float = 8.0
    # discovery dials until this many connections: records flood along them, so 4 keeps a random
    # mesh connected (diameter ~4 at N = 50), and each more neighbour costs a frame per hop per wave
    # (N = 50 in one process, 3 runs: 0.40 core idle with 4, 0.45 with 6)
    target_peers: int = 4
    max_peers: int = 6  # ... and up to this many to reach far peers (see Node._discovery_picks)
    discovery_s: float = 2.0
    forget_after_s: float = 600.0  # a peer dead this long leaves the view and is no longer relayed


@dataclass(frozen=True)
class KnownJob:
    """The newest accepted action of a CSP on a job, as the mesh relays it."""

    record: JobRecord
    spec: JobSpec | None  # None: the CSP stopped the job
    received_ms: int  # our clock when this action reached us
    # the spec of the action before, while a rolling update may still need it (``_rollout``):
    # kept across actions that change no revision (a scale), dropped by a stop
    previous: JobSpec | None = None

    @property
    def job_id(self) -> int:
        return self.record.submission.job_id

    @cached_property
    def revision(self) -> str | None:
        """The spec's revision (``revision_of``); None for a stop."""
        return None if self.spec is None else revision_of(self.spec)

    @cached_property
    def previous_revision(self) -> str | None:
        return None if self.previous is None else revision_of(self.previous)

    @property
    def nonce(self) -> int:
        return self.record.submission.nonce


class ChainCheck(Protocol):
    """The chain's verdict on relayed jobs (``_job_check.JobCheck``), for the nodes that have one."""

    def verdict(self, known: KnownJob) -> bool | None: ...

    def want(self, jobs: Iterable[KnownJob]) -> None: ...


@dataclass(frozen=True)
class PeerView:
    address: str
    state: PeerState
    last_beat_ms: int | None  # the peer's own timestamp of its freshest heartbeat
    capacity: Capacity | None
    capacity_received_ms: int | None  # our clock when this capacity version reached us
    connected: bool
    since_ms: int | None  # our clock when the peer entered its current state
    beat_lag_ms: int | None = None  # how long its freshest beat took to reach us (hops, queues)


class Node:
    """A running node (create with ``open_node``)."""

    def __init__(self, config: NodeConfig, identity: NodeIdentity, transport: Transport, capacity: Capacity,
                 is_eligible: Callable[[str], bool], wall_ms: Callable[[], int],
                 bootstrap: Sequence[str] = (), escrow: tuple[int, str] | None = None,
                 is_oracle: Callable[[str], bool] = lambda _: False) -> None:
        self.config = config
        self.identity = identity
        self.address = identity.address
        self.transport = transport
        self.membership = Membership(config.liveness)
        # who may take part at all: licensed nodes, and the oracles of the oracle registry, which
        # watch the mesh (and run nothing: placement asks ``is_eligible``, licensed nodes only)
        self._is_oracle = is_oracle
        self.gossip = GossipState(now_ms=wall_ms, is_eligible=self.may_participate)
        self.store = RecordStore()
        self.capacities: dict[str, Capacity] = {}
        self.capacity_received_ms: dict[str, int] = {}  # origin -> our wall clock when its capacity changed
        self.transitions: list[Transition] = []
        self.state_since_ms: dict[str, int] = {}  # peer -> our clock at its last state change
        self._lag_ms: dict[str, int] = {}  # peer -> how late its freshest beat reached us (its hops)
        self._uptime_s: dict[str, int] = {}  # peer -> the uptime its freshest beat reported
        # job and claim records waiting for their check, newest per key: (seq, raw, from)
        self._backlog: dict[tuple[str, str], list[tuple[int, bytes, str]]] = {}
        self._backlog_ready = trio.Event()
        self._frames: trio.MemoryReceiveChannel[Message] | None = None
        self._loop_lags: collections.deque[float] = collections.deque(maxlen=max(1, int(10 / config.tick_s)))
        self.bootstrap = tuple(bootstrap)
        # (chain id, escrow address): the EIP-712 domain CSPs sign jobs under; without it this node
        # neither accepts nor relays job records (it cannot verify them)
        self.escrow = escrow
        self.jobs: dict[tuple[int, str], KnownJob] = {}  # (job id, csp) -> newest action
        self.claims: dict[str, Claims] = {}  # claimant -> its claim set
        # set by a node process with the escrow: relayed jobs are read on chain before this node
        # claims them (None: claimed as relayed, as in the memory tests)
        self.chain_check: ChainCheck | None = None
        self._is_eligible = is_eligible
        self._capacity = capacity
        self._wall_ms = wall_ms
        self._seq = 0
        self._started = trio.current_time()
        self._dirty = trio.Event()  # some neighbour lacks a record
        self._urgent = trio.Event()  # ... and it is news (a capacity change): no batching delay
        self._sending: set[str] = set()  # neighbours a send is running to
        self._rush: set[str] = set()  # ... which then lack news: send again without the delay
        self._pacer = TokenBucket(config.frames_per_interval * 1000 / config.liveness.heartbeat_interval_ms,
                                  config.frame_burst)
        self._dialing: set[str] = set()
        self._closing: set[str] = set()
        self._neighbours: dict[str, float] = {}  # connected peer -> trio time first seen connected
        self._heard: dict[str, float] = {}  # neighbour -> trio time of its last frame
        # sync frames and their bytes, by direction ("sent", "received"): a frame's libp2p cost is
        # most of a loaded node's CPU, whatever it carries (``/metrics``)
        self.frames: dict[str, list[int]] = {"sent": [0, 0], "received": [0, 0]}
        self._rng = random.Random(identity.address)
        interval_s = config.liveness.heartbeat_interval_ms / 1000
        self._sync_delay_s = config.sync_delay_s if config.sync_delay_s is not None else max(0.02, interval_s / 8)
        self._nursery: trio.Nursery  # set by _run: sends, dials and disconnects run in it
        self.changed = trio.Event()  # set (and replaced) whenever the view changes
        # set once the first neighbour's frame is taken in: a (re)started node then knows the jobs
        # and claims, its own claims from before a restart included (the placement loop waits for it)
        self.synced = trio.Event()

    # ---------------------------------------------------------------- the view

    def view(self) -> list[PeerView]:
        connected = {self.transport.address_of(p) for p in self.transport.peers()}
        return [PeerView(p, s, self.membership.last_beat_ms(p), self.capacities.get(p),
                         self.capacity_received_ms.get(p), p in connected, self.state_since_ms.get(p),
                         self._lag_ms.get(p))
                for p, s in sorted(self.membership.peers().items())]

    @property
    def loop_lag_s(self) -> float:
        """The most the node's event loop ran late in the last 10 s: a node behind on its work
        also takes in its peers' beats late."""
        return max(self._loop_lags, default=0.0)

    @property
    def backlog(self) -> tuple[int, int]:
        """Frames received and not yet read, and job and claim records waiting for their check."""
        frames = 0 if self._frames is None else self._frames.statistics().current_buffer_used
        return frames, len(self._backlog)

    def state_of(self, peer: str) -> PeerState | None:
        return self.membership.state(peer)

    def now_ms(self) -> int:
        return self._wall_ms()

    def notify(self) -> None:
        """Wake whoever waits on ``changed`` (something outside the node changed its view)."""
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # ---------------------------------------------------------------- own records

    def _seal(self, topic: str, payload: Payload) -> Envelope:
        self._seq = next_seq(self._seq, self._wall_ms())
        env = seal(self.identity.private_key, topic, self._seq, self._wall_ms(), payload)
        self.gossip.last_seq[env.key] = env.seq
        self.store.put(topic, env.key[1], env.seq, env.encode())
        self._dirty.set()
        return env

    def announce_job(self, sub: Submission, csp: str, spec: JobSpec | None) -> KnownJob:
        """Relay a submission this node accepted (``check_submission`` passed): sealed about the job,
        with seq = nonce + 1, and sent on at once. ``Rejected`` if the record would be too large or
        a newer action on the job is already known."""
        rec = JobRecord(submission=sub, csp=csp.lower(), spec=None if spec is None else spec.model_dump(mode="json"))
        env = seal(self.identity.private_key, JOBS_TOPIC, job_seq(sub), self._wall_ms(), rec,
                   subject=job_subject(sub.job_id, csp))
        raw = env.encode()
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise Rejected("spec-too-large", f"the job record is {len(raw)} bytes, above {MAX_ENVELOPE_BYTES}")
        if not record(self.gossip, JOBS_TOPIC, env):
            raise Rejected("replayed", f"a newer action on job {sub.job_id} is known")
        self.store.put(JOBS_TOPIC, env.key[1], env.seq, raw)
        known = self._keep_job(rec, spec)
        self._dirty.set()
        self._urgent.set()
        return known

    def set_claims(self, claims: Claims) -> None:
        """Advertise this node's claim set now (a change, or leases renewed)."""
        self.claims[self.address] = claims
        self._seal(CLAIMS_TOPIC, claims)
        self._urgent.set()
        self._notify()

    def _keep_job(self, rec: JobRecord, spec: JobSpec | None) -> KnownJob:
        before = self.jobs.get((rec.submission.job_id, rec.csp))
        previous = None
        if before is not None and before.spec is not None and spec is not None:
            previous = before.spec if before.revision != revision_of(spec) else before.previous
        known = KnownJob(rec, spec, self._wall_ms(), previous)
        self.jobs[(rec.submission.job_id, rec.csp)] = known
        self._notify()
        return known

    def advertised_capacity(self) -> Capacity:
        return self._capacity

    async def peer_of(self, address: str) -> str:
        """The peer id of a connected node; dialled first (from its capacity record's addresses)
        if it is not a neighbour. ``TransportError`` if it cannot be reached."""
        transport = self.transport
        for attempt in range(2):
            for peer in transport.peers():
                known = transport.address_of(peer)
                if known is not None and known.lower() == address.lower():
                    return peer
            capacity = self.capacities.get(address)
            if attempt or capacity is None or not capacity.addrs:
                break
            for addr in capacity.addrs:
                try:
                    await transport.connect(addr)
                    break
                except TransportError as exc:
                    log.debug("dial failed", extra={"addr": addr, "error": str(exc)})
        raise TransportError(address, "not connected and no address to dial")

    def is_eligible(self, address: str) -> bool:
        """The license view's verdict on ``address``: a licensed node that may run replicas."""
        return self._is_eligible(address)

    def may_participate(self, address: str) -> bool:
        """Whether ``address`` may be a neighbour and publish: a licensed node or a registered oracle."""
        return self._is_eligible(address) or self._is_oracle(address)

    def _advertisement(self) -> Capacity:
        return self._capacity.model_copy(update={"addrs": tuple(self.transport.addrs())[:8]})

    def set_capacity(self, capacity: Capacity) -> None:
        """Advertise new capacity now: a change skips the sync delay at every hop."""
        self._capacity = capacity
        self._seal(CAPACITY_TOPIC, self._advertisement())
        self._urgent.set()

    def beat(self) -> None:
        uptime = int(trio.current_time() - self._started)
        interval = self.config.liveness.heartbeat_interval_ms
        self._seal(HEARTBEAT_TOPIC, Heartbeat(interval_ms=interval, capacity_version=self._capacity.version,
                                              uptime_s=uptime))

    # ---------------------------------------------------------------- records from others

    def _accept(self, raw: bytes, env: Envelope, payload: Payload, forwarder: str | None = None,
                spec: JobSpec | None = None, queued_ms: int = 0) -> None:
        if not record(self.gossip, env.topic, env):
            return
        self.store.put(env.topic, env.key[1], env.seq, raw)
        if forwarder is not None:
            self.store.holds(forwarder, env.topic, env.key[1], env.seq)
        self._dirty.set()
        if isinstance(payload, JobRecord):
            self._keep_job(payload, spec)
            self._urgent.set()  # a job is news: every hop passes it on at once
            return
        if env.origin == self.address:
            if isinstance(payload, Claims) and self.address not in self.claims:
                # our claim set from before a restart, kept by the mesh: hold on to what we held
                self.claims[self.address] = payload
                self._notify()
            return
        if isinstance(payload, Claims):
            self.claims[env.origin] = payload
            self._urgent.set()  # a claim must reach the other candidates before they claim too
            self._notify()
            return
        assert isinstance(payload, Heartbeat | Capacity)
        transition = None
        if isinstance(payload, Heartbeat):
            # the beat counts from when it reached this node, not from when this node got to it
            arrived_ms = self._wall_ms() - queued_ms
            self._lag_ms[env.origin] = arrived_ms - env.ts_ms
            if payload.uptime_s < self._uptime_s.get(env.origin, 0):
                self._restarted(env.origin)
            self._uptime_s[env.origin] = payload.uptime_s
            transition = self.membership.observe(env.origin, env.ts_ms, payload.interval_ms, arrived_ms)
        else:
            known = self.capacities.get(env.origin)
            if known is None or payload.version > known.version:
                self.capacity_received_ms[env.origin] = self._wall_ms()
                if known is not None:
                    self._urgent.set()  # a change, not a refresh or a newcomer: pass it on now
            if known is None or payload.version >= known.version:
                self.capacities[env.origin] = payload
        if transition is not None:
            self._record([transition])
        if transition is not None or isinstance(payload, Capacity):
            self._notify()

    def _restarted(self, address: str) -> None:
        """``address`` started again (its uptime went back): it holds none of our records, even if
        its connection came back between two ticks and was never seen gone, so it gets them all."""
        for peer in list(self._neighbours):
            if (self.transport.address_of(peer) or "").lower() == address.lower():
                self.store.drop_neighbour(peer)
                self.store.add_neighbour(peer)
                self.gossip.counters[(PEER, "RESYNC", "restarted")] += 1
                self._dirty.set()
                log.info("neighbour restarted: every record goes to it again", extra={"peer": address})

    def _record(self, changes: list[Transition]) -> None:
        self.transitions.extend(changes)
        del self.transitions[:-1000]  # a bounded history; state_since_ms keeps the latest per peer
        for t in changes:
            self.state_since_ms[t.peer] = t.at_ms
            log.info("peer %s", t.after.value, extra={"peer": t.peer, "before": t.before and t.before.value})

    def _on_frame(self, msg: Message) -> None:
        """A neighbour's sync frame: heartbeats and capacity records are checked and kept at once;
        job and claim records go to the backlog (``_backlog_loop``), newest per key only."""
        peer = msg.forwarder
        self._heard[peer] = trio.current_time()
        self.frames["received"][0] += 1
        self.frames["received"][1] += len(msg.data)
        address = self.transport.address_of(peer)
        if address is None or not self.may_participate(address):
            # [REJECT] frames from a peer that is not a licensed node (or an oracle): close the connection
            self._cut(peer, "unlicensed")
            return
        if msg.oversized or len(msg.data) > MAX_FRAME_BYTES:
            # [REJECT] a frame above the limit (its bytes were not even read)
            self.gossip.counters[(SYNC, "REJECT", "oversized")] += 1
            self._cut(peer, "oversized-frame")
            return
        misbehaved = False
        queued_ms = 0 if msg.received_at is None else max(0, int((trio.current_time() - msg.received_at) * 1000))
        for raw in decode_frame(msg.data):
            copy = self.store.held(raw)
            if copy is not None:
                # [IGNORE] a record we hold, these very bytes (normal: several neighbours relay it)
                (topic, owner), seq = copy
                self.store.holds(peer, topic, owner, seq)
                self.gossip.counters[(topic, "IGNORE", "duplicate")] += 1
                continue
            head = peek(raw)
            if head is None or head.topic not in MODELS:
                # [REJECT] not a record of a synced kind
                self.gossip.counters[(SYNC, "REJECT", "malformed")] += 1
                misbehaved = True
                continue
            held = self.store.seq_of(head.topic, head.owner)
            key = (head.topic, head.owner.lower())
            waiting = self._backlog.get(key, [])
            if head.seq <= held or any(raw == w[1] for w in waiting):
                # [IGNORE] we hold this record (normal: several neighbours relay it), a fresher
                # one (a replay, or a neighbour that had not heard the newer record yet), or these
                # very bytes wait in the backlog already
                self.store.holds(peer, head.topic, head.owner, head.seq)
                self.gossip.counters[(head.topic, "IGNORE", "replay" if head.seq < held else "duplicate")] += 1
                continue
            if head.topic in DEFERRED:
                # checked later, the highest seq first; the others are then superseded, unchecked
                # (under load only the newest claim set of a node is verified). Records that differ
                # are all kept (up to a few): the routing fields were read before any signature, so
                # a forged one must not push out the real record it claims to be newer than
                waiting = sorted([*waiting, (head.seq, raw, peer)], key=lambda w: -w[0])
                if len(waiting) > MAX_WAITING:
                    self.gossip.counters[(head.topic, "IGNORE", "superseded")] += len(waiting) - MAX_WAITING
                self._backlog[key] = waiting[:MAX_WAITING]
                self._backlog_ready.set()
                continue
            misbehaved |= not self._take(raw, head.topic, peer, queued_ms)
        if misbehaved:
            self._cut(peer, "relayed-invalid")
        elif not self._backlog:
            self.synced.set()

    def _take(self, raw: bytes, topic: str, peer: str, queued_ms: int = 0) -> bool:
        """Check one record relayed by ``peer`` and keep it if it holds; False if ``peer``
        misbehaved by relaying it."""
        try:
            env, payload = check(self.gossip, topic, raw, MODELS[topic], stale_ok=True)
        except Reject as verdict:
            return verdict.reason not in MISBEHAVIOUR
        except GossipVerdict:
            return True
        spec = None
        if isinstance(payload, JobRecord):
            if self.escrow is None:
                # [IGNORE] this node cannot verify job records: it neither keeps nor relays them
                self.gossip.counters[(JOBS_TOPIC, "IGNORE", "no-escrow")] += 1
                return True
            try:
                spec = check_job_record(env, payload, *self.escrow)
            except Rejected as bad:
                # [REJECT] a job record whose CSP signature, subject or spec does not hold
                self.gossip.counters[(JOBS_TOPIC, "REJECT", bad.reason)] += 1
                return False
        self._accept(raw, env, payload, forwarder=peer, spec=spec, queued_ms=queued_ms)
        return True

    async def _backlog_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check the job and claim records frames brought, apart from the frames: a node short of
        CPU takes in its peers' beats on time (it would otherwise judge live peers dead while a
        queue of frames full of job records waits), while these wait here, newest per key. The
        loop yields every ``BACKLOG_SLICE_S`` of work."""
        task_status.started()
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready = trio.Event()
            began = time.perf_counter()
            while self._backlog:
                key = next(iter(self._backlog))
                for seq, raw, peer in self._backlog.pop(key):
                    if seq <= self.store.seq_of(*key):  # a newer one of these was good
                        self.gossip.counters[(key[0], "IGNORE", "superseded")] += 1
                        continue
                    if not self._take(raw, key[0], peer):
                        self._cut(peer, "relayed-invalid")
                    if time.perf_counter() - began > BACKLOG_SLICE_S:
                        await trio.lowlevel.checkpoint()
                        began = time.perf_counter()
            self.synced.set()

    # ---------------------------------------------------------------- connections

    def _cut(self, peer: str, reason: str, verdict: str = "REJECT") -> None:
        """Close the connection to ``peer`` (once), counting why."""
        if peer in self._closing:
            return
        self._closing.add(peer)
        self.gossip.counters[(PEER, verdict, reason)] += 1
        log.info("closing connection", extra={"peer": peer, "reason": reason})
        self._nursery.start_soon(self._disconnect, peer)

    async def _disconnect(self, peer: str) -> None:
        try:
            await self.transport.disconnect(peer)
        finally:
            self._closing.discard(peer)
            self._drop_neighbour(peer)

    def _drop_neighbour(self, peer: str) -> None:
        """Forget what was kept about a neighbour whose connection is gone."""
        self._neighbours.pop(peer, None)
        self._heard.pop(peer, None)
        self.store.drop_neighbour(peer)
        self._pacer.drop(peer)

    def _sweep(self) -> None:
        """Keep the neighbour table, close connections to ineligible or long-dead peers, and forget
        origins whose license lapsed."""
        now = trio.current_time()
        peers = self.transport.peers()
        for gone in set(self._neighbours) - peers:
            self._drop_neighbour(gone)
        for peer in peers:
            if peer not in self._neighbours:
                self._neighbours[peer] = now
                self.store.add_neighbour(peer)
                self._dirty.set()  # a new neighbour gets our full state
            address = self.transport.address_of(peer)
            if address is None or not self.may_participate(address):
                self._cut(peer, "unlicensed")
            elif (self.membership.state(address) is PeerState.DEAD
                  and now - max(self._neighbours[peer], self._heard.get(peer, 0.0)) > self._grace_s()):
                # frozen: its TCP connection is open but it says nothing. Its frames count, not
                # only its beats: on a host short of CPU its beats may be judged late while its
                # frames still come, and a cut costs both sides a full resync
                self._cut(peer, "dead")
        self._trim(now)
        oldest = self._wall_ms() - self.config.forget_after_s * 1000
        for origin, state in self.membership.peers().items():
            if not self.may_participate(origin) or (state is PeerState.DEAD
                                                 and (self.membership.last_beat_ms(origin) or 0) < oldest):
                self._forget(origin)

    def _trim(self, now: float) -> None:
        """Above ``max_peers`` + ``TRIM_SLACK`` connections, close one random connection older
        than two discovery rounds (one per tick, so that peers trimming at once do not strip one
        node bare): a node that many peers dialed (the bootstrap node) would otherwise receive
        every record from each of them. The peers cut dial others if they fall below
        ``target_peers``."""
        if len(self._neighbours) - len(self._closing) <= self.config.max_peers + TRIM_SLACK:
            return
        settled = [p for p, since in sorted(self._neighbours.items())
                   if now - since > 2 * self.config.discovery_s and p not in self._closing]
        if settled:
            self._cut(self._rng.choice(settled), "surplus", verdict="IGNORE")

    def _forget(self, origin: str) -> None:
        self.membership.forget(origin)
        self.capacities.pop(origin, None)
        self.capacity_received_ms.pop(origin, None)
        self.state_since_ms.pop(origin, None)
        self._lag_ms.pop(origin, None)
        self.claims.pop(origin, None)
        self.store.drop_origin(origin)
        self._notify()

    def _grace_s(self) -> float:
        """How long a fresh connection may stay quiet before a dead verdict closes it."""
        cfg = self.config.liveness  # a (re)joining peer sends its fresh heartbeat within one sync delay
        return cfg.dead_factor * cfg.heartbeat_interval_ms / 1000

    # ---------------------------------------------------------------- loops

    async def _heartbeat_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat on the wall clock's multiples of the interval, so every node's beat of one interval
        travels in the same wave."""
        task_status.started()
        interval = self.config.liveness.heartbeat_interval_ms
        self.beat()
        while True:
            now = self._wall_ms()
            await trio.sleep((math.floor(now / interval) + 1) * interval / 1000 - now / 1000)
            self.beat()

    async def _capacity_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._seal(CAPACITY_TOPIC, self._advertisement())
            await trio.sleep(self.config.capacity_refresh_s)

    async def _tick_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            due = trio.current_time() + self.config.tick_s
            await trio.sleep_until(due)
            # how late this loop woke: the node's backlog (a host short of CPU), kept for 10 s
            self._loop_lags.append(trio.current_time() - due)
            self._sweep()
            changes = self.membership.tick(self._wall_ms())
            if changes:
                self._record(changes)
                self._notify()

    async def _sync_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._dirty.wait()
            with trio.move_on_after(self._sync_delay_s):  # let the wave's other records arrive
                await self._urgent.wait()
            urgent = self._urgent.is_set()
            self._dirty = trio.Event()
            self._urgent = trio.Event()
            for peer in list(self._neighbours):
                if peer in self._closing or not self.store.lacks(peer):
                    continue
                if peer in self._sending:
                    if urgent:
                        self._rush.add(peer)  # the running send goes again at once when it is done
                    continue
                self._sending.add(peer)
                self._nursery.start_soon(self._send_to, peer)

    async def _send_to(self, peer: str) -> None:
        try:
            while True:
                await trio.sleep(self._pacer.wait_s(peer, trio.current_time()))  # what piles up goes together
                self._rush.discard(peer)
                sent = self.store.delta(peer)
                if sent:
                    self._pacer.spend(peer, trio.current_time())
                try:
                    for frame in encode_frames([raw for _, _, raw in sent]):
                        await self.transport.send(peer, frame)
                        self.frames["sent"][0] += 1
                        self.frames["sent"][1] += len(frame)
                except TransportError as exc:
                    # only what this send carried goes again; the connection stays: a slow peer (a
                    # loaded machine) is not a dead one, and if it is frozen, its silence closes it
                    self.store.unsend(peer, sent)
                    self.gossip.counters[(SYNC, "IGNORE", "send-failed")] += 1
                    log.info("sync send failed", extra={"peer": peer, "error": str(exc)})
                    break
                if peer not in self._rush or not self.store.lacks(peer):
                    break
        finally:
            self._sending.discard(peer)
            self._rush.discard(peer)
        if self.store.lacks(peer):
            self._dirty.set()

    async def _discovery_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.config.discovery_s)
            for addrs in self._discovery_picks():
                self._nursery.start_soon(self._dial, addrs)

    def _discovery_picks(self) -> list[tuple[str, ...]]:
        """Whom to dial this round, learned from capacity records (they carry dial addresses).

        Below ``target_peers`` connections: live, licensed peers, the farthest first (whose beats
        reach us the most delayed: a shortcut to them shrinks the mesh's diameter most), plus one
        peer not heard from lately (it may be back, or a partition may have healed); with no
        connection at all, the bootstrap peers again. At or above the target, while one of the
        three farthest live (or suspect: late) peers' beats arrive more than 3/4 of an interval
        late (records cross many hops: a mesh grown from a line), one more connection to it, up to
        ``max_peers``. A beat a whole interval late makes its origin look suspect everywhere; this
        keeps the verdicts independent of the order in which nodes joined (N = 50 in one process
        grown from a line: diameter 12 and 1,640 false transitions in 15 s before, diameter 6 and
        none after)."""
        connected = {self.transport.address_of(p) for p in self.transport.peers()}
        alive: list[tuple[int, str, tuple[str, ...]]] = []
        quiet: list[tuple[str, ...]] = []
        for origin, cap in sorted(self.capacities.items()):
            if (origin in connected or not cap.addrs or cap.addrs[0] in self._dialing
                    or not self.may_participate(origin)):
                continue
            if self.membership.state(origin) in (PeerState.ALIVE, PeerState.SUSPECT):  # suspect: late
                alive.append((self._lag_ms.get(origin, 0), origin, cap.addrs))
            else:
                quiet.append(cap.addrs)
        self._rng.shuffle(alive)
        alive.sort(key=lambda a: -a[0])  # stable: equally far peers stay in random order
        missing = self.config.target_peers - len(connected)
        if missing > 0:
            picks = [addrs for _, _, addrs in alive[:missing]]
            if quiet and len(alive) < missing:
                picks.append(self._rng.choice(quiet))
            if not connected:
                picks += [(addr,) for addr in self.bootstrap]
            return picks
        far_ms = self.config.liveness.heartbeat_interval_ms * 3 / 4
        far = [addrs for lag, _, addrs in alive[:3] if lag > far_ms]  # among the three farthest
        # a node that is itself behind (a host short of CPU) sees every beat late: more connections
        # would bring it more to do, and each new one a full resync
        behind = self.loop_lag_s * 1000 > self.config.liveness.heartbeat_interval_ms / 8
        if far and not behind and len(connected) < self.config.max_peers:
            return [self._rng.choice(far)]
        return []

    async def _dial(self, addrs: Sequence[str]) -> None:
        key = addrs[0]
        if key in self._dialing:
            return
        self._dialing.add(key)
        try:
            for addr in addrs:
                try:
                    await self.transport.connect(addr)
                    return
                except TransportError as exc:
                    self.gossip.counters[(PEER, "IGNORE", "dial-failed")] += 1
                    log.debug("dial failed", extra={"addr": addr, "error": str(exc)})
        finally:
            self._dialing.discard(key)

    async def _direct_loop(self, channel: trio.MemoryReceiveChannel[Message], *,
                           task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._frames = channel
        task_status.started()
        async for msg in channel:
            self._on_frame(msg)
            # take every frame that waits before yielding: one frame per scheduling round fell
            # behind a loaded node's other tasks, and the beats in the queue aged there
            while True:
                try:
                    self._on_frame(channel.receive_nowait())
                except trio.WouldBlock:
                    break

    async def _run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._direct_loop, await self.transport.direct())
            for loop in (self._tick_loop, self._sync_loop, self._heartbeat_loop, self._capacity_loop,
                         self._discovery_loop, self._backlog_loop):
                await nursery.start(loop)
            task_status.started()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@asynccontextmanager
async def open_node(config: NodeConfig, identity: NodeIdentity, transport: Transport, capacity: Capacity,
                    is_eligible: Callable[[str], bool], wall_ms: Callable[[], int] = _wall_ms,
                    bootstrap: Sequence[str] = (), escrow: tuple[int, str] | None = None,
                    is_oracle: Callable[[str], bool] = lambda _: False) -> AsyncIterator[Node]:
    """Run a node on ``transport`` until the block exits; then stop every loop and close it.
    ``is_eligible``: licensed nodes (they run replicas); ``is_oracle``: registered oracles, which
    may be neighbours and publish too (an oracle is a mesh participant, ``Node.may_participate``)."""
    node = Node(config, identity, transport, capacity, is_eligible, wall_ms, bootstrap, escrow, is_oracle)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node._run)
            yield node
            nursery.cancel_scope.cancel()
    finally:
        await transport.aclose()
