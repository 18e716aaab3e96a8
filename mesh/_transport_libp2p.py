"""The libp2p transport: the only module of deedmesh that imports libp2p.

One host factory with safe settings (shared/notes/libp2p.md §6-7): Noise only (py-libp2p's
default also offers plaintext), Yamux, explicit gossipsub degrees, a 1 s gossipsub heartbeat,
adaptive gossip off (it stretches the heartbeat to a minute), the per-topic spam limiter sized
well above real traffic (it silently stops forwarding otherwise), strict message signing,
subscriptions drained into our own buffers at once (py-libp2p's hold 32), and synchronous
validators only (its async ones let duplicates through).

The node key is the libp2p key: a secp256k1 peer id ("16Uiu2HA...") and the node's Ethereum
address are the same key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from ._identity import NodeIdentity
from ._transport import SUBSCRIPTION_BUFFER, Message, Validator

log = logging.getLogger("deedmesh.transport")


@dataclass(frozen=True)
class Libp2pConfig:
    """Transport settings; every default has a reason."""

    listen: str = "/ip4/127.0.0.1/tcp/0"  # loopback by default: exposing a node is a deliberate choice
    degree: int = 6  # gossipsub D: go-libp2p's default
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval_s: int = 1  # py-libp2p defaults to 120 s; go-libp2p uses 1 s
    max_messages_per_topic_per_second: float = 1000.0  # real traffic is ~N/s; the default 10 drops forwards
    max_inbound_rpc_bytes: int = 1 << 20


def peer_id_of(identity: NodeIdentity) -> str:
    """The libp2p peer id of a node key."""
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(create_new_key_pair(identity.private_key).public_key))


class Libp2pTransport:
    """A running libp2p host with gossipsub; conforms to ``Transport``."""

    def __init__(self, host: object, pubsub: Pubsub, nursery: trio.Nursery) -> None:
        self._host = host
        self._pubsub = pubsub
        self._nursery = nursery
        self.dropped_full = 0

    @property
    def local_id(self) -> str:
        return str(self._host.get_id())  # type: ignore[attr-defined]

    def addrs(self) -> list[str]:
        """Dialable multiaddrs of this host, with its peer id."""
        return [str(a) for a in self._host.get_addrs()]  # type: ignore[attr-defined]

    async def connect(self, addr: str) -> None:
        await self._host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))  # type: ignore[attr-defined]

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pubsub.publish(topic, data)

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]:
        sub = await self._pubsub.subscribe(topic)
        send, receive = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
        self._nursery.start_soon(self._drain, sub, topic, send)
        return receive

    async def _drain(self, sub: object, topic: str, send: trio.MemorySendChannel[Message]) -> None:
        async with send:
            while True:
                msg = await sub.get()  # type: ignore[attr-defined]
                try:
                    send.send_nowait(Message(topic, bytes(msg.data), str(msg.from_id.hex())))
                except trio.WouldBlock:
                    self.dropped_full += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    def set_validator(self, topic: str, validator: Validator) -> None:
        def check(forwarder: object, msg: object) -> bool:
            return validator(Message(topic, bytes(msg.data), str(forwarder)))  # type: ignore[attr-defined]

        self._pubsub.set_topic_validator(topic, check, is_async_validator=False)

    def peers(self) -> set[str]:
        return {str(p) for p in self._host.get_network().connections}  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self._nursery.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_libp2p_transport(identity: NodeIdentity, config: Libp2pConfig = Libp2pConfig(),
                                bootstrap: Sequence[str] = ()) -> AsyncIterator[Libp2pTransport]:
    """Start a host listening on ``config.listen``, dial ``bootstrap``, and yield the transport."""
    key_pair = create_new_key_pair(identity.private_key)
    host = new_host(
        key_pair=key_pair,
        muxer_preference="YAMUX",
        sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)},
    )
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        degree=config.degree, degree_low=config.degree_low, degree_high=config.degree_high,
        heartbeat_interval=config.heartbeat_interval_s,
        adaptive_gossip_enabled=False,
        max_messages_per_topic_per_second=config.max_messages_per_topic_per_second,
    )
    pubsub = Pubsub(host, router, strict_signing=True, max_inbound_rpc_size=config.max_inbound_rpc_bytes)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([multiaddr.Multiaddr(config.listen)]))
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            transport = Libp2pTransport(host, pubsub, nursery)
            for addr in bootstrap:
                try:
                    await transport.connect(addr)
                except Exception as exc:  # a dead bootstrap peer must not stop the node
                    log.warning("bootstrap dial failed", extra={"addr": addr, "error": str(exc)})
            yield transport
            nursery.cancel_scope.cancel()
