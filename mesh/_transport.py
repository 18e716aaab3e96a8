"""The transport seam: what the node needs from a network, and a deterministic in-memory twin of
it for unit tests (links, drops, partitions, no wall clock).

Three ways to talk: pub/sub topics (gossipsub: a message reaches every subscriber, several hops
away), direct frames to a connected neighbour (neighbour sync), and request/response exchanges on
a named protocol (one request, one answer, a deadline: job logs between nodes, the API for CLI
clients). The real implementation is ``_transport_libp2p`` (the only module that imports libp2p).
Every implementation runs each topic's validator on receipt, before delivery and forwarding, and
delivers through channels that the node drains at once.

Nodes and clients: a node's id is its secp256k1 key, so every node has an address
(``address_of``); a CLI client dials in with a throwaway key of another type and has none.
``peers()`` lists nodes only: a client is no mesh peer (the license gate, sync and discovery never
see it); the transport itself bounds how long a client stays connected.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ._errors import TransportError, TransportTimeout


@dataclass(frozen=True)
class Message:
    """A message as received: the topic (or the direct protocol), the raw bytes, and the peer that
    forwarded it to us. ``oversized`` is the declared length of a direct frame that exceeded the
    limit (its bytes were not read, ``data`` is empty). ``received_at``: trio's clock when it
    arrived, before any queue (None: now)."""

    topic: str
    data: bytes
    forwarder: str
    oversized: int = 0
    received_at: float | None = None


Validator = Callable[[Message], bool]
# answers one request (a Message on the protocol, from the requester; ``oversized`` set and no
# data if it exceeded the limit) with the response bytes
Handler = Callable[[Message], Awaitable[bytes]]
SUBSCRIPTION_BUFFER = 1024  # a subscriber drains at once; the buffer absorbs bursts, not backlogs
DIRECT = "direct"  # the topic of Messages that arrived as direct frames


class Transport(Protocol):
    """A network endpoint: pub/sub plus direct frames to connected peers."""

    @property
    def local_id(self) -> str: ...

    def addrs(self) -> list[str]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]: ...

    def set_validator(self, topic: str, validator: Validator) -> None: ...

    async def send(self, peer: str, frame: bytes) -> None:
        """Send one frame to a connected peer; ``TransportError`` if it cannot be delivered."""
        ...

    async def direct(self) -> trio.MemoryReceiveChannel[Message]:
        """The frames neighbours send us (one receiver)."""
        ...

    async def connect(self, addr: str) -> None:
        """Dial ``addr`` (one of a peer's ``addrs()``); ``TransportError`` if it fails."""
        ...

    def set_handler(self, protocol: str, handler: Handler, *, max_request_bytes: int, timeout_s: float) -> None:
        """Answer requests on ``protocol`` with ``handler``. A request above ``max_request_bytes``
        is not read (the handler sees ``oversized``); a handler still running after ``timeout_s``
        is abandoned and the requester sees the exchange fail."""
        ...

    async def request(self, peer: str, protocol: str, data: bytes, *, timeout_s: float,
                      max_response_bytes: int) -> bytes:
        """One exchange with a connected peer: ``data`` out, its answer back.
        ``TransportTimeout`` if no answer came within ``timeout_s``; ``TransportError`` if it cannot
        be done (not connected, the protocol unsupported, the exchange reset, or an answer above
        ``max_response_bytes``)."""
        ...

    async def disconnect(self, peer: str) -> None: ...

    def peers(self) -> set[str]:
        """Nodes we hold a connection to (clients are not peers: module docstring)."""
        ...

    def address_of(self, peer: str) -> str | None:
        """The node (Ethereum) address behind a connected peer id, or None if it has none."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class MemoryNetwork:
    """A set of in-memory endpoints joined by links, with deterministic faults.

    With ``auto_connect`` every new endpoint is linked to all others (a full mesh); otherwise
    links come from ``connect``. Publishing reaches every endpoint reachable over links (as
    gossipsub's relaying does); direct frames cross one link.
    """

    seed: int = 0
    drop_rate: float = 0.0  # probability that one delivery is lost
    auto_connect: bool = True
    _endpoints: dict[str, MemoryTransport] = field(default_factory=dict)
    _links: set[frozenset[str]] = field(default_factory=set)
    _group_of: dict[str, int] = field(default_factory=dict)  # partition group; absent = group 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def endpoint(self, local_id: str) -> MemoryTransport:
        if local_id in self._endpoints:
            raise ValueError(f"{local_id} already joined")
        t = MemoryTransport(self, local_id)
        if self.auto_connect:
            self._links |= {frozenset((local_id, other)) for other in self._endpoints}
        self._endpoints[local_id] = t
        return t

    def partition(self, *groups: set[str]) -> None:
        """Split the network: endpoints in different groups no longer reach each other."""
        self._group_of = {member: n + 1 for n, group in enumerate(groups) for member in group}

    def heal(self) -> None:
        self._group_of = {}

    def link(self, a: str, b: str) -> None:
        self._links.add(frozenset((a, b)))

    def unlink(self, a: str, b: str) -> None:
        self._links.discard(frozenset((a, b)))

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._links and b in self._endpoints and a in self._endpoints

    def reachable(self, a: str, b: str) -> bool:
        """Over a live link: both joined, linked, and on the same side of any partition."""
        return a != b and self.linked(a, b) and self._group_of.get(a, 0) == self._group_of.get(b, 0)

    def _leave(self, local_id: str) -> None:
        self._endpoints.pop(local_id, None)
        self._links = {link for link in self._links if local_id not in link}

    def _component(self, start: str) -> list[str]:
        seen, todo = {start}, [start]
        while todo:
            here = todo.pop()
            for other in self._endpoints:
                if other not in seen and self.reachable(here, other):
                    seen.add(other)
                    todo.append(other)
        return sorted(seen - {start})

    def _lost(self) -> bool:
        return self._rng.random() < self.drop_rate

    def _deliver(self, sender: str, topic: str, data: bytes) -> None:
        for peer_id in self._component(sender):
            if not self._lost():
                self._endpoints[peer_id]._receive(Message(topic, data, sender))


class MemoryTransport:
    """One endpoint of a ``MemoryNetwork``; conforms to ``Transport``. Its id is its address."""

    def __init__(self, network: MemoryNetwork, local_id: str) -> None:
        self._network = network
        self._id = local_id
        self._subs: dict[str, list[trio.MemorySendChannel[Message]]] = {}
        self._validators: dict[str, Validator] = {}
        self._direct_send, self._direct_receive = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
        self._handlers: dict[str, tuple[Handler, int, float]] = {}  # protocol -> handler, request limit, timeout
        self._closed = False
        self.dropped_full = 0  # deliveries lost to a full subscription buffer

    @property
    def local_id(self) -> str:
        return self._id

    def addrs(self) -> list[str]:
        return [self._id]

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

    async def send(self, peer: str, frame: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed or not self._network.reachable(self._id, peer):
            raise TransportError(peer, "not connected")
        if not self._network._lost():
            target = self._network._endpoints[peer]
            target._put(target._direct_send, Message(DIRECT, frame, self._id))

    async def direct(self) -> trio.MemoryReceiveChannel[Message]:
        await trio.lowlevel.checkpoint()
        return self._direct_receive

    async def connect(self, addr: str) -> None:
        await trio.lowlevel.checkpoint()
        if addr not in self._network._endpoints or addr == self._id:
            raise TransportError(addr, "no such endpoint")
        self._network.link(self._id, addr)

    async def disconnect(self, peer: str) -> None:
        await trio.lowlevel.checkpoint()
        self._network.unlink(self._id, peer)

    def set_handler(self, protocol: str, handler: Handler, *, max_request_bytes: int, timeout_s: float) -> None:
        self._handlers[protocol] = (handler, max_request_bytes, timeout_s)

    async def request(self, peer: str, protocol: str, data: bytes, *, timeout_s: float,
                      max_response_bytes: int) -> bytes:
        """The peer's handler runs in the requester's task (its deadline, its cancellation); a lost
        request (``drop_rate``) is one that never gets an answer."""
        await trio.lowlevel.checkpoint()
        if self._closed or not self._network.reachable(self._id, peer):
            raise TransportError(peer, "not connected")
        served = self._network._endpoints[peer]._handlers.get(protocol)
        if served is None:
            raise TransportError(peer, f"protocol {protocol} not supported")
        handler, limit, handler_timeout_s = served
        msg = Message(protocol, data, self._id) if len(data) <= limit else Message(protocol, b"", self._id,
                                                                                   oversized=len(data))
        with trio.move_on_after(timeout_s):
            if self._network._lost():
                await trio.sleep_forever()
            with trio.move_on_after(handler_timeout_s):
                answer = await handler(msg)
                if not self._network.reachable(self._id, peer):  # the link went while it worked
                    raise TransportError(peer, "connection lost")
                if len(answer) > max_response_bytes:
                    raise TransportError(peer, f"answer of {len(answer)} bytes exceeds {max_response_bytes}")
                return answer
            raise TransportError(peer, "the exchange was reset (the handler took too long)")
        raise TransportTimeout(peer, f"no answer within {timeout_s} s")

    def peers(self) -> set[str]:
        return {p for p in self._network._endpoints
                if self._network.reachable(self._id, p) and self.address_of(p) is not None}

    def address_of(self, peer: str) -> str | None:
        return peer if peer.startswith("0x") and len(peer) == 42 else None

    async def aclose(self) -> None:
        self._closed = True
        self._network._leave(self._id)
        for sends in self._subs.values():
            for s in sends:
                s.close()
        self._direct_send.close()
        await trio.lowlevel.checkpoint()

    def _put(self, channel: trio.MemorySendChannel[Message], msg: Message) -> None:
        try:
            channel.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped_full += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _receive(self, msg: Message) -> None:
        validator = self._validators.get(msg.topic)
        if validator is not None and not validator(msg):
            return
        for send in self._subs.get(msg.topic, []):
            self._put(send, msg)
