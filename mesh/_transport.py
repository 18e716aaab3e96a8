"""The transport seam: what the node needs from a pub/sub network, and a deterministic in-memory
twin of it for unit tests (drops, partitions, no wall clock).

The real implementation is ``_transport_libp2p`` (the only module that imports libp2p). Every
implementation runs each topic's validator on receipt, before delivery, and delivers to
subscribers through channels that the node drains at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio


@dataclass(frozen=True)
class Message:
    """A message as received: the topic, the raw bytes, and the peer that forwarded it to us."""

    topic: str
    data: bytes
    forwarder: str


Validator = Callable[[Message], bool]
SUBSCRIPTION_BUFFER = 1024  # a subscriber drains at once; the buffer absorbs bursts, not backlogs


class Transport(Protocol):
    """A pub/sub network endpoint."""

    @property
    def local_id(self) -> str: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]: ...

    def set_validator(self, topic: str, validator: Validator) -> None: ...

    def peers(self) -> set[str]: ...

    async def aclose(self) -> None: ...


@dataclass
class MemoryNetwork:
    """A set of in-memory endpoints that deliver to each other, with deterministic faults."""

    seed: int = 0
    drop_rate: float = 0.0  # probability that one delivery is lost
    _endpoints: dict[str, MemoryTransport] = field(default_factory=dict)
    _group_of: dict[str, int] = field(default_factory=dict)  # partition group; absent = group 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def endpoint(self, local_id: str) -> MemoryTransport:
        if local_id in self._endpoints:
            raise ValueError(f"{local_id} already joined")
        t = MemoryTransport(self, local_id)
        self._endpoints[local_id] = t
        return t

    def partition(self, *groups: set[str]) -> None:
        """Split the network: endpoints in different groups no longer reach each other."""
        self._group_of = {member: n + 1 for n, group in enumerate(groups) for member in group}

    def heal(self) -> None:
        self._group_of = {}

    def reachable(self, a: str, b: str) -> bool:
        return a != b and b in self._endpoints and self._group_of.get(a, 0) == self._group_of.get(b, 0)

    def _leave(self, local_id: str) -> None:
        self._endpoints.pop(local_id, None)

    def _deliver(self, sender: str, topic: str, data: bytes) -> None:
        for peer_id in sorted(self._endpoints):
            if self.reachable(sender, peer_id) and self._rng.random() >= self.drop_rate:
                self._endpoints[peer_id]._receive(Message(topic, data, sender))


class MemoryTransport:
    """One endpoint of a ``MemoryNetwork``; conforms to ``Transport``."""

    def __init__(self, network: MemoryNetwork, local_id: str) -> None:
        self._network = network
        self._id = local_id
        self._subs: dict[str, list[trio.MemorySendChannel[Message]]] = {}
        self._validators: dict[str, Validator] = {}
        self._closed = False
        self.dropped_full = 0  # deliveries lost to a full subscription buffer

    @property
    def local_id(self) -> str:
        return self._id

    async def publish(self, topic: str, data: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("transport closed")
        validator = self._validators.get(topic)
        # as in py-libp2p, our own validator also judges what we publish
        if validator is None or validator(Message(topic, data, self._id)):
            self._network._deliver(self._id, topic, data)
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]:
        await trio.lowlevel.checkpoint()
        send, receive = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
        self._subs.setdefault(topic, []).append(send)
        return receive

    def set_validator(self, topic: str, validator: Validator) -> None:
        self._validators[topic] = validator

    def peers(self) -> set[str]:
        return {p for p in self._network._endpoints if self._network.reachable(self._id, p)}

    async def aclose(self) -> None:
        self._closed = True
        self._network._leave(self._id)
        for sends in self._subs.values():
            for s in sends:
                s.close()
        await trio.lowlevel.checkpoint()

    def _receive(self, msg: Message) -> None:
        validator = self._validators.get(msg.topic)
        if validator is not None and not validator(msg):
            return
        for send in self._subs.get(msg.topic, []):
            try:
                send.send_nowait(msg)
            except trio.WouldBlock:
                self.dropped_full += 1
            except trio.BrokenResourceError:
                pass
