"""The libp2p transport: the only module of deedmesh that imports libp2p.

One host factory with safe settings (shared/notes/libp2p.md §6-7): Noise only (py-libp2p's
default also offers plaintext), Yamux, and, when gossipsub is on (``Libp2pConfig.pubsub``; ``node
run`` turns it off, the node sends everything by sync frames), explicit gossipsub degrees, a 1 s
gossipsub heartbeat,
adaptive gossip off (it stretches the heartbeat to a minute), the per-topic spam limiter sized
well above real traffic (it silently stops forwarding otherwise), strict message signing,
subscriptions drained into our own buffers at once (py-libp2p's hold 32), and synchronous
validators only (its async ones let duplicates through).

The node key is the libp2p key: a secp256k1 peer id ("16Uiu2HA...") and the node's Ethereum
address are the same key, so the address behind a connection is known from its peer id (Noise
authenticated it), and the license gate can close connections, not only drop messages.

Direct frames (neighbour sync) go over one long-lived outbound stream per peer
(``/deedmesh/sync/1``), each frame a 4-byte big-endian length and the bytes; a frame above the
limit is not read (the stream is reset and the node told). A send that does not complete within
``send_timeout_s`` (a frozen peer stops reading; its TCP connection stays open) fails and resets
the stream instead of blocking the sender.

A request/response exchange is one fresh stream on its protocol: the request as one
length-prefixed frame, the answer as one, then the stream is closed. Both sides bound the
exchange by a deadline and a size.

Clients (``request_once``: the CLI's ``--via /ip4/.../p2p/...``) dial in with a throwaway ed25519
key and listen nowhere. A node's key is secp256k1, so a client is told apart by the key type
inlined in its peer id (Noise authenticated it): it is not in ``peers()`` (the license gate, sync and discovery leave it
alone), pubsub treats it as blacklisted (never a gossip peer, nothing it sends is relayed), and
this transport closes its connection ``client_linger_s`` after an exchange, or at the latest
``client_lifetime_s`` after it connected; above ``max_clients`` the newest are closed at once.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from eth_keys import keys
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.tools.anyio_service import background_trio_service

from ._errors import TransportError, TransportTimeout
from ._identity import NodeIdentity
from ._sync import MAX_FRAME_BYTES
from ._sync import PROTOCOL as SYNC_PROTOCOL
from ._transport import DIRECT, SUBSCRIPTION_BUFFER, Handler, Message, Validator

log = logging.getLogger("deedmesh.transport")
# py-libp2p, when imported without LIBP2P_DEBUG, detaches its loggers (no handler, no propagation):
# its warnings then reach stderr through logging's last-resort handler, bare, and break the
# one-JSON-object-per-line logs of --log-format json. They go through the process's handlers.
if not os.environ.get("LIBP2P_DEBUG"):
    logging.getLogger("libp2p").propagate = True
READ_CHUNK = 1 << 16  # a sync stream is read in chunks this big: one read usually holds a whole frame


async def _batched_window_credit(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Grant a Yamux stream's window credit back in half-window batches, as go-yamux does.

    py-libp2p 0.8.1 sends one WINDOW_UPDATE frame after every read whatever
    ``PY_YAMUX_RELEASE_ON_READ`` says (its "partial slack" branch fires on any consumed byte):
    measured as one extra Noise-encrypted frame per sync frame, ~30 % of the CPU of a small frame
    (0.76 -> 0.54 ms send + receive, medians of 3; shared/notes/libp2p.md §3). Credit is returned
    once half the window is consumed; the window still auto-tunes upward on a fast stream."""
    del bytes_read  # the consumed bytes are what the window lacks beyond the unread buffer
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta < max(1, self._grow_threshold()):
            return
        self.recv_window += delta
        delta += self._apply_autotune_epoch(buffered)
    await self.send_window_update(delta, skip_lock=True)


YamuxStream._auto_tune_and_send_window_update = _batched_window_credit  # type: ignore[method-assign]


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
    # gossipsub: the node itself sends everything by neighbour sync, so ``node run`` turns it off
    # (it cost each connection a stream, and each node a heartbeat a second, for nothing)
    pubsub: bool = True
    send_timeout_s: float = 10.0  # milliseconds when healthy, seconds on a saturated host; frozen: never
    dial_timeout_s: float = 5.0
    max_frame_bytes: int = MAX_FRAME_BYTES
    # clients (module docstring): one exchange takes well under a second; a generous bound on the
    # slowest one (a logs request waits up to 10 s for a replica's holder) ...
    client_lifetime_s: float = 30.0
    client_linger_s: float = 1.0  # ... and the client closes first after its answer; this is the backstop
    max_clients: int = 32  # CLI users at once; each holds a connection for about a second
    client_check_s: float = 0.5  # how often client connections are judged against those bounds


def peer_id_of(identity: NodeIdentity) -> str:
    """The libp2p peer id of a node key."""
    return str(ID.from_pubkey(create_new_key_pair(identity.private_key).public_key))


def address_of_peer(peer: str) -> str | None:
    """The Ethereum address of a secp256k1 peer id (its key is inlined in the id), else None."""
    try:
        public_key = ID.from_base58(peer).extract_public_key()
    except ValueError:
        return None
    if public_key is None or public_key.get_type().name != "Secp256k1":
        return None
    return str(keys.PublicKey.from_compressed_bytes(public_key.to_bytes()).to_checksum_address())


@functools.lru_cache(maxsize=4096)
def is_node_id(peer_id: ID) -> bool:
    """A secp256k1 key: possibly a node. Anything else is a client (module docstring)."""
    try:
        public_key = peer_id.extract_public_key()
    except ValueError:
        return False
    return public_key is not None and public_key.get_type().name == "Secp256k1"


class _MeshPubsub(Pubsub):
    """Pubsub among nodes: a client is never a gossip peer (py-libp2p would otherwise retry, and log
    at ERROR, opening a gossipsub stream to every CLI connection) and nothing it sends is relayed."""

    def is_peer_blacklisted(self, peer_id: ID) -> bool:
        return not is_node_id(peer_id) or super().is_peer_blacklisted(peer_id)


async def _read_exact(stream: object, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None if the stream ends first."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = await stream.read(min(n - len(buf), READ_CHUNK))  # type: ignore[attr-defined]
            if not chunk:
                return None
            buf += chunk
    except StreamEOF:
        return None
    return bytes(buf)


async def _close_quietly(stream: object, reset: bool) -> None:
    with trio.move_on_after(1):
        try:
            await (stream.reset() if reset else stream.close())  # type: ignore[attr-defined]
        except Exception as exc:  # the connection may be gone already
            log.debug("stream close failed", extra={"error": str(exc)})


async def _exchange(host: object, peer: ID, protocol: str, data: bytes, timeout_s: float,
                    max_response_bytes: int) -> bytes:
    """One request/response exchange on a fresh stream (module docstring)."""
    name = str(peer)
    stream = None
    done = False
    try:
        with trio.fail_after(timeout_s):
            stream = await host.new_stream(peer, [TProtocol(protocol)])  # type: ignore[attr-defined]
            await stream.write(len(data).to_bytes(4, "big") + data)
            head = await _read_exact(stream, 4)
            if head is None:
                raise TransportError(name, "the exchange ended without an answer")
            size = int.from_bytes(head, "big")
            if size > max_response_bytes:
                raise TransportError(name, f"answer of {size} bytes exceeds {max_response_bytes}")
            answer = await _read_exact(stream, size)
            if answer is None:
                raise TransportError(name, "the answer was cut short")
            done = True
            return answer
    except trio.TooSlowError as exc:
        raise TransportTimeout(name, f"no answer within {timeout_s} s") from exc
    except TransportError:
        raise
    except Exception as exc:  # py-libp2p's errors for an unsupported protocol, a reset, a dead connection
        raise TransportError(name, f"request failed: {exc}") from exc
    finally:
        if stream is not None:
            await _close_quietly(stream, reset=not done)


class Libp2pTransport:
    """A running libp2p host with gossipsub; conforms to ``Transport``."""

    def __init__(self, host: object, pubsub: Pubsub | None, nursery: trio.Nursery, config: Libp2pConfig) -> None:
        self._host = host
        self._pubsub = pubsub
        self._nursery = nursery
        self._config = config
        self._streams: dict[str, object] = {}  # peer id -> our outbound sync stream to it
        self._stream_locks: dict[str, trio.Lock] = {}
        self._addresses: dict[str, str | None] = {}
        self._ids: dict[str, ID] = {}  # peer id string -> ID, decoded once (base58 is pure Python)
        self._direct_send, self._direct_receive = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
        self._task_scopes: list[trio.CancelScope] = []  # our own background tasks, stopped by aclose
        self._client_deadlines: dict[str, float] = {}  # connected client -> trio time its connection ends
        self._closed = False
        self.dropped_full = 0
        host.set_stream_handler(TProtocol(SYNC_PROTOCOL), self._serve_stream)  # type: ignore[attr-defined]
        nursery.start_soon(self._guard_clients)

    @property
    def local_id(self) -> str:
        return str(self._host.get_id())  # type: ignore[attr-defined]

    def addrs(self) -> list[str]:
        """Dialable multiaddrs of this host, with its peer id."""
        return [str(a) for a in self._host.get_addrs()]  # type: ignore[attr-defined]

    async def connect(self, addr: str) -> None:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            with trio.fail_after(self._config.dial_timeout_s):
                await self._host.connect(info)  # type: ignore[attr-defined]
        except trio.TooSlowError as exc:
            raise TransportError(addr, "dial timed out") from exc
        except Exception as exc:  # py-libp2p raises a zoo of errors for one failed dial
            raise TransportError(addr, f"dial failed: {exc}") from exc

    async def disconnect(self, peer: str) -> None:
        await self._drop_stream(peer)
        try:
            await self._host.disconnect(self._id(peer))  # type: ignore[attr-defined]
        except Exception as exc:  # already gone is fine
            log.debug("disconnect failed", extra={"peer": peer, "error": str(exc)})

    def _id(self, peer: str) -> ID:
        if peer not in self._ids:
            self._ids[peer] = ID.from_base58(peer)
        return self._ids[peer]

    def address_of(self, peer: str) -> str | None:
        if peer not in self._addresses:
            self._addresses[peer] = address_of_peer(peer)
        return self._addresses[peer]

    # ------------------------------------------------------------ direct frames

    async def send(self, peer: str, frame: bytes) -> None:
        if self._closed:
            raise TransportError(peer, "transport closed")
        if len(frame) > self._config.max_frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes exceeds {self._config.max_frame_bytes}")
        try:
            pid = self._id(peer)
        except ValueError as exc:
            raise TransportError(peer, f"send failed: {exc}") from exc
        lock = self._stream_locks.setdefault(peer, trio.Lock())
        async with lock:  # frames on one stream must not interleave
            # the connection went away: its stream is dead with it (checked by ID: peers() would
            # base58-encode every connection's id on every frame)
            if pid not in self._host.get_network().connections:  # type: ignore[attr-defined]
                await self._drop_stream(peer)
            try:
                with trio.fail_after(self._config.send_timeout_s):
                    stream = self._streams.get(peer)
                    if stream is None:
                        stream = await self._host.new_stream(  # type: ignore[attr-defined]
                            pid, [TProtocol(SYNC_PROTOCOL)])
                        self._streams[peer] = stream
                    await stream.write(len(frame).to_bytes(4, "big") + frame)  # type: ignore[attr-defined]
            except trio.TooSlowError as exc:
                await self._drop_stream(peer)
                raise TransportError(peer, f"send timed out after {self._config.send_timeout_s} s") from exc
            except Exception as exc:
                await self._drop_stream(peer)
                raise TransportError(peer, f"send failed: {exc}") from exc

    async def _drop_stream(self, peer: str) -> None:
        stream = self._streams.pop(peer, None)
        if stream is not None:
            with trio.move_on_after(1):
                try:
                    await stream.reset()  # type: ignore[attr-defined]
                except Exception as exc:  # the connection may be gone already
                    log.debug("stream reset failed", extra={"peer": peer, "error": str(exc)})

    async def direct(self) -> trio.MemoryReceiveChannel[Message]:
        await trio.lowlevel.checkpoint()
        return self._direct_receive

    async def _serve_stream(self, stream: object) -> None:
        """Read length-prefixed frames from a neighbour until it closes the stream."""
        peer = str(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]
        buf = bytearray()
        try:
            while True:
                if not await self._fill(stream, buf, 4):
                    return
                size = int.from_bytes(buf[:4], "big")
                if size > self._config.max_frame_bytes:
                    await self._direct_send.send(Message(DIRECT, b"", peer, oversized=size))
                    await stream.reset()  # type: ignore[attr-defined]
                    return
                if not await self._fill(stream, buf, 4 + size):
                    return
                # waits while the node is behind: the stream stops being read and the sender's send
                # times out and goes again, where dropping the frame would lose its records for good
                # (the sender counts them as held here)
                await self._direct_send.send(Message(DIRECT, bytes(buf[4:4 + size]), peer,
                                                     received_at=trio.current_time()))
                del buf[:4 + size]
        except trio.ClosedResourceError:
            pass  # closed: we no longer listen
        except Exception as exc:  # a reset or a dropped connection ends this stream, not the node
            log.debug("sync stream ended", extra={"peer": peer, "error": str(exc)})

    @staticmethod
    async def _fill(stream: object, buf: bytearray, n: int) -> bool:
        """Read until ``buf`` holds at least ``n`` bytes; False at the end of the stream."""
        while len(buf) < n:
            chunk = await stream.read(max(n - len(buf), READ_CHUNK))  # type: ignore[attr-defined]
            if not chunk:
                return False
            buf += chunk
        return True

    def _gossip(self) -> Pubsub:
        if self._pubsub is None:
            raise RuntimeError("this transport runs without gossipsub (Libp2pConfig.pubsub is off)")
        return self._pubsub

    async def publish(self, topic: str, data: bytes) -> None:
        await self._gossip().publish(topic, data)

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Message]:
        sub = await self._gossip().subscribe(topic)
        send, receive = trio.open_memory_channel[Message](SUBSCRIPTION_BUFFER)
        self._nursery.start_soon(self._drain, sub, topic, send)
        return receive

    async def _drain(self, sub: object, topic: str, send: trio.MemorySendChannel[Message]) -> None:
        with trio.CancelScope() as scope:
            self._task_scopes.append(scope)
            await self._drain_into(sub, topic, send)

    async def _drain_into(self, sub: object, topic: str, send: trio.MemorySendChannel[Message]) -> None:
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

        self._gossip().set_topic_validator(topic, check, is_async_validator=False)

    def peers(self) -> set[str]:
        return {str(p) for p in self._host.get_network().connections if is_node_id(p)}  # type: ignore[attr-defined]

    def clients(self) -> set[str]:
        """Clients connected now (they are not ``peers``: module docstring)."""
        return {str(p) for p in self._host.get_network().connections if not is_node_id(p)}  # type: ignore[attr-defined]

    # ------------------------------------------------------------ request/response

    def set_handler(self, protocol: str, handler: Handler, *, max_request_bytes: int, timeout_s: float) -> None:
        async def serve(stream: object) -> None:
            await self._serve_request(protocol, handler, max_request_bytes, timeout_s, stream)

        self._host.set_stream_handler(TProtocol(protocol), serve)  # type: ignore[attr-defined]

    async def request(self, peer: str, protocol: str, data: bytes, *, timeout_s: float,
                      max_response_bytes: int) -> bytes:
        if self._closed:
            raise TransportError(peer, "transport closed")
        try:
            pid = self._id(peer)
        except ValueError as exc:
            raise TransportError(peer, f"not a peer id: {exc}") from exc
        if pid not in self._host.get_network().connections:  # type: ignore[attr-defined]
            raise TransportError(peer, "not connected")
        return await _exchange(self._host, pid, protocol, data, timeout_s, max_response_bytes)

    async def _serve_request(self, protocol: str, handler: Handler, max_request_bytes: int, timeout_s: float,
                             stream: object) -> None:
        peer_id = stream.muxed_conn.peer_id  # type: ignore[attr-defined]
        peer = str(peer_id)
        answered = False
        try:
            with trio.move_on_after(timeout_s):
                head = await _read_exact(stream, 4)
                if head is None:
                    return
                size = int.from_bytes(head, "big")
                if size > max_request_bytes:  # not read: the handler answers from the size alone
                    msg = Message(protocol, b"", peer, oversized=size)
                else:
                    data = await _read_exact(stream, size)
                    if data is None:
                        return
                    msg = Message(protocol, data, peer)
                answer = await handler(msg)
                await stream.write(len(answer).to_bytes(4, "big") + answer)  # type: ignore[attr-defined]
                answered = True
        except Exception as exc:  # a reset or a dropped connection ends this exchange, not the node
            log.debug("request stream ended", extra={"peer": peer, "protocol": protocol, "error": str(exc)})
        finally:
            if not is_node_id(peer_id):  # the client had its answer (or its chance)
                linger = trio.current_time() + self._config.client_linger_s
                self._client_deadlines[peer] = min(self._client_deadlines.get(peer, linger), linger)
            await _close_quietly(stream, reset=not answered)

    async def _guard_clients(self) -> None:
        """Close client connections past their deadline, and the newest above ``max_clients``."""
        with trio.CancelScope() as scope:
            self._task_scopes.append(scope)
            while True:
                now = trio.current_time()
                clients = [p for p in self._host.get_network().connections if not is_node_id(p)]  # type: ignore[attr-defined]
                names = {str(p): p for p in clients}
                for gone in set(self._client_deadlines) - set(names):
                    del self._client_deadlines[gone]
                for name in names:
                    self._client_deadlines.setdefault(name, now + self._config.client_lifetime_s)
                by_age = sorted(names, key=self._client_deadlines.__getitem__)
                for n, name in enumerate(by_age):
                    if self._client_deadlines[name] <= now or n >= self._config.max_clients:
                        self._client_deadlines[name] = now + self._config.client_lifetime_s  # closing; retried then
                        self._nursery.start_soon(self._close_client, names[name])
                await trio.sleep(self._config.client_check_s)

    async def _close_client(self, peer: ID) -> None:
        try:
            await self._host.disconnect(peer)  # type: ignore[attr-defined]
        except Exception as exc:  # already gone is fine
            log.debug("client disconnect failed", extra={"peer": str(peer), "error": str(exc)})

    async def aclose(self) -> None:
        """Stop delivering and sending. The host itself stops when the ``open_libp2p_transport``
        block exits (cancelling its nursery here would cancel the caller's code inside it)."""
        self._closed = True
        for scope in self._task_scopes:
            scope.cancel()
        self._direct_send.close()
        for peer in list(self._streams):
            await self._drop_stream(peer)
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
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([multiaddr.Multiaddr(config.listen)]))
        pubsub = None
        if config.pubsub:
            router = GossipSub(
                protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
                degree=config.degree, degree_low=config.degree_low, degree_high=config.degree_high,
                heartbeat_interval=config.heartbeat_interval_s,
                adaptive_gossip_enabled=False,
                max_messages_per_topic_per_second=config.max_messages_per_topic_per_second,
            )
            pubsub = _MeshPubsub(host, router, strict_signing=True, max_inbound_rpc_size=config.max_inbound_rpc_bytes)
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            transport = Libp2pTransport(host, pubsub, nursery, config)
            for addr in bootstrap:
                try:
                    await transport.connect(addr)
                except TransportError as exc:  # a dead bootstrap peer must not stop the node
                    log.warning("bootstrap dial failed", extra={"addr": addr, "error": str(exc)})
            yield transport
            nursery.cancel_scope.cancel()


async def request_once(addr: str, protocol: str, data: bytes, *, timeout_s: float, max_response_bytes: int,
                       dial_timeout_s: float = Libp2pConfig.dial_timeout_s) -> bytes:
    """As a client (module docstring): dial the node at ``addr`` (a multiaddr ending in
    ``/p2p/<peer id>``: Noise checks that the node holds that key) with a throwaway ed25519 key,
    make one exchange on ``protocol``, and hang up. ``TransportError`` if any of it fails."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # multiaddr raises several kinds for one bad string
        raise TransportError(addr, f"not a multiaddr ending in /p2p/<peer id>: {exc}") from exc
    # a failure reaches the caller as one TransportError; py-libp2p would also print its own ERROR
    # lines (a failed dial logs three) on stderr through logging's last resort, unless configured
    libp2p_log = logging.getLogger("libp2p")
    quiet = logging.NullHandler()
    if not libp2p_log.handlers:
        libp2p_log.addHandler(quiet)
    try:
        return await _ask_as_client(info, addr, protocol, data, timeout_s, max_response_bytes, dial_timeout_s)
    finally:
        libp2p_log.removeHandler(quiet)


async def _ask_as_client(info: PeerInfo, addr: str, protocol: str, data: bytes, timeout_s: float,
                         max_response_bytes: int, dial_timeout_s: float) -> bytes:
    key_pair = ed25519_key_pair()
    host = new_host(key_pair=key_pair, muxer_preference="YAMUX",
                    sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)})
    failure: TransportError | None = None
    answer = b""
    # raised only once the host has stopped: inside, its nurseries would wrap it in an ExceptionGroup
    async with host.run([]):  # listening nowhere: nothing can dial a client back
        try:
            with trio.fail_after(dial_timeout_s):
                await host.connect(info)
        except trio.TooSlowError:
            failure = TransportTimeout(addr, "dial timed out")
        except Exception as exc:  # py-libp2p raises a zoo of errors for one failed dial
            failure = TransportError(addr, f"dial failed: {exc}")
        if failure is None:
            try:
                answer = await _exchange(host, info.peer_id, protocol, data, timeout_s, max_response_bytes)
            except TransportError as exc:
                failure = exc
            with trio.move_on_after(1):
                await host.disconnect(info.peer_id)
    if failure is not None:
        raise failure
    return answer
