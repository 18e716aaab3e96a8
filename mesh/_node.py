"""The gossiping node: beacons its liveness, advertises capacity, and keeps the mesh view.

``open_node`` is an async context manager that owns its nursery; every loop lives in it and takes
``task_status``. Time comes from trio's clock (so tests run on a fake clock) for intervals and
liveness, and from an injected wall clock for the timestamps other machines check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ._envelope import Envelope, next_seq, seal
from ._identity import NodeIdentity
from ._membership import LivenessConfig, Membership, PeerState, Transition
from ._transport import Message, Transport
from ._trio_types import TaskStatus
from ._validate import GossipState, GossipVerdict, check, record
from ._wire_capacity import TOPIC as CAPACITY_TOPIC
from ._wire_capacity import Capacity
from ._wire_heartbeat import TOPIC as HEARTBEAT_TOPIC
from ._wire_heartbeat import Heartbeat

log = logging.getLogger("deedmesh.mesh")
MAX_CHECKED = 4096  # validated-but-undelivered envelopes kept; far above what is in flight


@dataclass(frozen=True)
class NodeConfig:
    """The gossip side of a node; every default has a reason."""

    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    capacity_refresh_s: float = 30.0  # capacity also goes out on change; this covers late joiners
    tick_s: float = 0.25  # liveness is re-judged 4x a second: detection lags the deadline by < 250 ms
    readvertise_debounce_s: float = 0.2  # a new peer triggers a capacity re-advertisement; joins batch up


@dataclass(frozen=True)
class PeerView:
    address: str
    state: PeerState
    last_seen_ms: int | None
    capacity: Capacity | None


class Node:
    """A running node (create with ``open_node``)."""

    def __init__(self, config: NodeConfig, identity: NodeIdentity, transport: Transport, capacity: Capacity,
                 is_eligible: Callable[[str], bool], wall_ms: Callable[[], int]) -> None:
        self.config = config
        self.identity = identity
        self.address = identity.address
        self.transport = transport
        self.membership = Membership(config.liveness)
        self.gossip = GossipState(now_ms=wall_ms, is_eligible=is_eligible)
        self.capacities: dict[str, Capacity] = {}
        self.transitions: list[Transition] = []
        self._capacity = capacity
        self._wall_ms = wall_ms
        self._seq = 0
        self._started = trio.current_time()
        self._capacity_due = trio.Event()
        # envelopes the transport's validator already checked, by raw bytes, so delivery does not
        # verify a signature twice (bounded: entries leave on delivery, the cap covers drops)
        self._checked: dict[bytes, tuple[Envelope, Heartbeat | Capacity]] = {}
        self.changed = trio.Event()  # set (and replaced) whenever the view changes

    # ---------------------------------------------------------------- the view

    def view(self) -> list[PeerView]:
        return [PeerView(p, s, self.membership.last_seen_ms(p), self.capacities.get(p))
                for p, s in sorted(self.membership.peers().items())]

    def state_of(self, peer: str) -> PeerState | None:
        return self.membership.state(peer)

    def _mono_ms(self) -> int:
        return int(trio.current_time() * 1000)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # ---------------------------------------------------------------- publishing

    async def _publish(self, topic: str, payload: Heartbeat | Capacity) -> None:
        self._seq = next_seq(self._seq, self._wall_ms())
        env = seal(self.identity.private_key, topic, self._seq, self._wall_ms(), payload)
        await self.transport.publish(topic, env.encode())

    async def set_capacity(self, capacity: Capacity) -> None:
        """Advertise new capacity now (on change)."""
        self._capacity = capacity
        await self._publish(CAPACITY_TOPIC, capacity)

    # ---------------------------------------------------------------- loops

    async def _heartbeat_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self.config.liveness.heartbeat_interval_ms / 1000
        while True:
            uptime = int(trio.current_time() - self._started)
            await self._publish(HEARTBEAT_TOPIC, Heartbeat(capacity_version=self._capacity.version, uptime_s=uptime))
            await trio.sleep(interval)

    async def _capacity_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._publish(CAPACITY_TOPIC, self._capacity)
            # periodic refresh, or sooner when a peer (re)joins and lacks our advertisement
            with trio.move_on_after(self.config.capacity_refresh_s):
                await self._capacity_due.wait()
                await trio.sleep(self.config.readvertise_debounce_s)
            self._capacity_due = trio.Event()

    async def _tick_loop(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.config.tick_s)
            changes = self.membership.tick(self._mono_ms())
            if changes:
                self.transitions.extend(changes)
                for t in changes:
                    log.info("peer %s", t.after.value, extra={"peer": t.peer, "before": t.before and t.before.value})
                self._notify()

    async def _receive_loop(self, topic: str, channel: trio.MemoryReceiveChannel[Message], *,
                            task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for msg in channel:
            self._handle(topic, msg)

    def validator(self, topic: str) -> Callable[[Message], bool]:
        """The transport-level validator of ``topic``: a rejected message is neither delivered nor
        forwarded (py-libp2p runs it before relaying)."""
        model: type[Heartbeat] | type[Capacity] = Heartbeat if topic == HEARTBEAT_TOPIC else Capacity

        def validate(msg: Message) -> bool:
            try:
                checked = check(self.gossip, topic, msg.data, model)
            except GossipVerdict:
                return False  # counted in self.gossip.counters
            if len(self._checked) >= MAX_CHECKED:
                self._checked.clear()
            self._checked[msg.data] = checked
            return True

        return validate

    def _handle(self, topic: str, msg: Message) -> None:
        checked = self._checked.pop(msg.data, None)
        if checked is None:  # evicted, or a transport that skipped the validator: check now
            if not self.validator(topic)(msg):
                return
            checked = self._checked.pop(msg.data)
        env, payload = checked
        if not record(self.gossip, topic, env) or env.origin == self.address:
            return
        transition = self.membership.observe(env.origin, self._mono_ms())
        if transition is not None:
            self.transitions.append(transition)
            self._capacity_due.set()  # a newcomer (or a returning peer) has not seen our capacity
        if isinstance(payload, Capacity):
            known = self.capacities.get(env.origin)
            if known is None or payload.version >= known.version:
                self.capacities[env.origin] = payload
        if transition is not None or isinstance(payload, Capacity):
            self._notify()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@asynccontextmanager
async def open_node(config: NodeConfig, identity: NodeIdentity, transport: Transport, capacity: Capacity,
                    is_eligible: Callable[[str], bool], wall_ms: Callable[[], int] = _wall_ms,
                    ) -> AsyncIterator[Node]:
    """Run a node on ``transport`` until the block exits; then stop every loop and close it."""
    node = Node(config, identity, transport, capacity, is_eligible, wall_ms)
    try:
        async with trio.open_nursery() as nursery:
            for topic in (HEARTBEAT_TOPIC, CAPACITY_TOPIC):
                transport.set_validator(topic, node.validator(topic))
                await nursery.start(node._receive_loop, topic, await transport.subscribe(topic))
            await nursery.start(node._tick_loop)
            await nursery.start(node._heartbeat_loop)
            await nursery.start(node._capacity_loop)
            yield node
            nursery.cancel_scope.cancel()
    finally:
        await transport.aclose()
