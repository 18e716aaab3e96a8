"""Real py-libp2p hosts on 127.0.0.1 in one process: the node core over neighbour sync, the
license gate closing connections, bad traffic rejected and counted, the transport's pubsub, its
request/response exchanges, and CLI clients (not peers, not gated, bounded in time and number)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from mesh._envelope import seal
from mesh._errors import TransportError, TransportTimeout
from mesh._identity import NodeIdentity
from mesh._membership import PeerState
from mesh._node import Node, NodeConfig, _wall_ms, open_node
from mesh._sync import MAX_FRAME_BYTES, encode_frames
from mesh._transport import Message
from mesh._transport_libp2p import (
    Libp2pConfig,
    Libp2pTransport,
    _exchange,
    address_of_peer,
    open_libp2p_transport,
    peer_id_of,
    request_once,
)
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_heartbeat import Heartbeat

from .test_node_memory import capacity, until


async def until_wall(predicate: Callable[[], bool], deadline_s: float) -> float:
    """Poll (real clock) until ``predicate`` holds; the seconds it took, or fail at the deadline."""
    started = trio.current_time()
    with trio.fail_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)
    return trio.current_time() - started

IDS = [NodeIdentity(bytes([0x40 + i]) * 32) for i in range(6)]  # IDS[5]: a raw host, no node
INTERVAL_S = NodeConfig().liveness.heartbeat_interval_ms / 1000


def test_peer_id_and_address_are_one_key() -> None:
    assert peer_id_of(IDS[0]).startswith("16Uiu2HA")
    assert peer_id_of(IDS[0]) == peer_id_of(NodeIdentity(IDS[0].private_key))
    assert peer_id_of(IDS[0]) != peer_id_of(IDS[1])
    assert address_of_peer(peer_id_of(IDS[0])) == IDS[0].address
    assert address_of_peer("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA") is None  # ed25519: no address
    assert address_of_peer("not-a-peer-id") is None


async def test_five_hosts_mesh_gate_reject_bad_traffic_and_detect_a_silent_node() -> None:
    allowed = {i.address for i in IDS[:4]} | {IDS[5].address}  # IDS[4] holds no license
    nodes: dict[int, Node] = {}
    scopes = {n: trio.CancelScope() for n in range(5)}
    now = _wall_ms

    async def run(n: int, transport: Libp2pTransport) -> None:
        with scopes[n]:
            # the unlicensed node believes itself licensed (a stale or malicious view) and talks
            gate = allowed.__contains__ if IDS[n].address in allowed else (lambda _: True)
            async with open_node(NodeConfig(), IDS[n], transport, capacity(), gate) as node:
                nodes[n] = node
                await trio.sleep_forever()

    # all hosts stop at once: py-libp2p hosts closed one by one while the others still send to them
    # can crash with "Nursery is closed to new arrivals" (seen by the benchmark harness)
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            transports: list[Libp2pTransport] = []
            for ident in IDS:
                bootstrap = transports[0].addrs()[:1] if transports else []
                config = Libp2pConfig(max_frame_bytes=4 * MAX_FRAME_BYTES) if ident is IDS[5] else Libp2pConfig()
                t = await stack.enter_async_context(open_libp2p_transport(ident, config, bootstrap=bootstrap))
                assert t.local_id == peer_id_of(ident)
                transports.append(t)
            async with trio.open_nursery() as nursery:
                for n, t in enumerate(transports[:5]):
                    nursery.start_soon(run, n, t)
                await until(lambda: len(nodes) == 5
                            and all(len(nodes[n].membership.alive()) == 3 for n in range(4)))
                # the unlicensed node was cut off: counted, never in a view, no connection left to it
                await until(lambda: nodes[0].gossip.counters[("peer", "REJECT", "unlicensed")] > 0)
                await until(lambda: all(peer_id_of(IDS[4]) not in transports[n].peers() for n in range(4)))
                assert nodes[0].state_of(IDS[4].address) is None
                assert nodes[0].capacities[IDS[1].address].free == capacity().free
                # discovery: nodes that only knew the bootstrap node now hold direct connections
                await until(lambda: all(len(transports[n].peers()) >= 3 for n in range(4)))
                # a raw host holding a license injects forged, replayed and oversized traffic
                raw = transports[5]
                beat = Heartbeat(interval_ms=1000, capacity_version=1, uptime_s=1)
                counters = nodes[0].gossip.counters
                target = peer_id_of(IDS[0])
                await raw.connect(transports[0].addrs()[0])
                stale = seal(IDS[1].private_key, HEARTBEAT, 1, now(), beat)
                await raw.send(target, encode_frames([stale.encode()])[0])
                await until(lambda: counters[(HEARTBEAT, "IGNORE", "replay")] >= 1)
                with contextlib.suppress(TransportError):  # the receiver may reset before the write ends
                    await raw.send(target, b"x" * (MAX_FRAME_BYTES + 1))
                await until(lambda: counters[("sync", "REJECT", "oversized")] == 1)
                await until(lambda: peer_id_of(IDS[5]) not in transports[0].peers()
                            and target not in raw.peers())
                forged_beat = seal(IDS[4].private_key, HEARTBEAT, 10**15, now(), beat).model_copy(
                    update={"origin": IDS[2].address})
                await raw.connect(transports[0].addrs()[0])
                await raw.send(target, encode_frames([forged_beat.encode()])[0])
                await until(lambda: counters[(HEARTBEAT, "REJECT", "bad-signature")] == 1)
                await until(lambda: counters[("peer", "REJECT", "relayed-invalid")] == 1)
                assert nodes[0].state_of(IDS[2].address) is PeerState.ALIVE
                # node 3 stops beating: every other node marks it dead from silence alone
                scopes[3].cancel()
                stopped = trio.current_time()
                await until(lambda: all(nodes[n].state_of(IDS[3].address) is PeerState.DEAD for n in range(3)))
                assert trio.current_time() - stopped < 3 * INTERVAL_S + 1  # + a tick and a loaded machine's slack
                nursery.cancel_scope.cancel()


async def test_gossipsub_delivers_through_a_relay_whose_validator_drops_what_it_rejects() -> None:
    # the transport seam's pubsub half (the node itself syncs by direct frames): a line A - B - C
    topic = "deedmesh/test/1"
    judged: list[bytes] = []

    def relay_check(msg: Message) -> bool:
        judged.append(msg.data)
        return not msg.data.startswith(b"bad")

    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            a, b, c = [await stack.enter_async_context(open_libp2p_transport(i)) for i in IDS[:3]]
            await a.connect(b.addrs()[0])
            await c.connect(b.addrs()[0])
            b.set_validator(topic, relay_check)
            inbox = await c.subscribe(topic)
            await b.subscribe(topic)
            got: list[bytes] = []
            with trio.fail_after(30):  # until the gossipsub meshes have formed
                while not got:
                    await a.publish(topic, b"good-first")
                    with trio.move_on_after(0.5):
                        got.append((await inbox.receive()).data)
            assert got == [b"good-first"]
            await a.publish(topic, b"bad-one")
            await a.publish(topic, b"good-after")
            with trio.fail_after(10):
                while got[-1] != b"good-after":
                    got.append((await inbox.receive()).data)
            assert b"bad-one" in judged  # B saw it and judged it ...
            assert b"bad-one" not in got  # ... and kept it


async def test_sync_frames_flow_with_window_credit_granted_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # py-libp2p's Yamux sent a WINDOW_UPDATE after every read (one extra encrypted frame per sync
    # frame); the transport grants credit in half-window batches, and frames far above one window
    # (256 KiB) still flow
    updates: list[int] = []
    grant = YamuxStream.send_window_update

    async def counted(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await grant(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            a, b = [await stack.enter_async_context(open_libp2p_transport(i)) for i in IDS[:2]]
            await a.connect(b.addrs()[0])
            inbox = await b.direct()
            with trio.fail_after(30):
                for k in range(200):
                    await a.send(b.local_id, b"%d" % k + b"." * 300)
                    assert (await inbox.receive()).data.startswith(b"%d." % k)
                assert len(updates) <= 2  # ~60 KiB read: under half a window, no grant was due
                big = [bytes([k]) * MAX_FRAME_BYTES for k in range(4)]
                async with trio.open_nursery() as nursery:
                    for frame in big:
                        nursery.start_soon(a.send, b.local_id, frame)
                    received = [(await inbox.receive()).data for _ in big]
            assert sorted(received) == big
            assert len(updates) > 2  # 4 MiB through a 256 KiB window: credit did come back



async def test_a_host_without_gossipsub_still_syncs_and_refuses_to_publish() -> None:
    # ``node run`` turns gossipsub off: the node sends everything by sync frames
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            config = Libp2pConfig(pubsub=False)
            a, b = [await stack.enter_async_context(open_libp2p_transport(i, config)) for i in IDS[:2]]
            await a.connect(b.addrs()[0])
            inbox = await b.direct()
            with trio.fail_after(30):
                await a.send(b.local_id, b"frame")
                received = await inbox.receive()
            assert (received.data, received.received_at is not None) == (b"frame", True)
            with pytest.raises(RuntimeError, match="without gossipsub"):
                await a.publish("deedmesh/heartbeat/1", b"x")
            with pytest.raises(RuntimeError, match="without gossipsub"):
                await a.subscribe("deedmesh/heartbeat/1")


ECHO = "/deedmesh/test-echo/1"


async def echo(msg: Message) -> bytes:
    """Answers who asked, what, and how big a refused request was."""
    if msg.data == b"hang":
        await trio.sleep_forever()
    if msg.data.startswith(b"big answer"):
        return b"x" * 5000
    return b"%s|%s|%d" % (msg.forwarder.encode(), msg.data.upper(), msg.oversized)


async def test_request_response_between_nodes_with_limits_and_deadlines() -> None:
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            a, b = [await stack.enter_async_context(open_libp2p_transport(i)) for i in IDS[:2]]
            b.set_handler(ECHO, echo, max_request_bytes=100, timeout_s=1.0)
            with pytest.raises(TransportError, match="not connected"):
                await a.request(b.local_id, ECHO, b"hi", timeout_s=5, max_response_bytes=1000)
            await a.connect(b.addrs()[0])
            ask = partial(a.request, b.local_id, ECHO, timeout_s=5, max_response_bytes=1000)
            assert await ask(b"hello") == f"{a.local_id}|HELLO|0".encode()
            assert await ask(b"") == f"{a.local_id}||0".encode()
            # above the limit: not read, the handler answers from the size alone
            assert await ask(b"y" * 101) == f"{a.local_id}||101".encode()
            with pytest.raises(TransportError, match="answer of 5000 bytes exceeds 1000"):
                await ask(b"big answer")
            with pytest.raises(TransportError, match=r"not supported|request failed"):
                await a.request(b.local_id, "/deedmesh/none/1", b"x", timeout_s=5, max_response_bytes=1000)
            # a stuck handler: the requester's deadline first ...
            started = trio.current_time()
            with pytest.raises(TransportTimeout):
                await a.request(b.local_id, ECHO, b"hang", timeout_s=0.3, max_response_bytes=1000)
            assert trio.current_time() - started < 2.0
            # ... or the handler's own (1 s): the exchange is reset, well before the requester's 5 s
            started = trio.current_time()
            with pytest.raises(TransportError) as reset:
                await ask(b"hang")
            assert not isinstance(reset.value, TransportTimeout)
            assert trio.current_time() - started < 4.0
            assert await ask(b"still there") == f"{a.local_id}|STILL THERE|0".encode()  # the connection lived
            assert b.peers() == {a.local_id}


async def raw_client(stack: AsyncExitStack, server: Libp2pTransport) -> tuple[Any, Any]:
    """An ed25519 host (as the CLI's) connected to ``server``, left to the test to use or not."""
    key_pair = ed25519_key_pair()
    host = new_host(key_pair=key_pair, muxer_preference="YAMUX",
                    sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)})
    await stack.enter_async_context(host.run([]))
    info = info_from_p2p_addr(multiaddr.Multiaddr(server.addrs()[0]))
    await host.connect(info)
    return host, info.peer_id


async def test_clients_are_not_peers_nor_gated_and_are_bounded() -> None:
    # node 0 licenses nobody: an unlicensed node is cut, a client is left alone and answered
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            server = await stack.enter_async_context(open_libp2p_transport(IDS[0]))
            unlicensed = await stack.enter_async_context(open_libp2p_transport(IDS[1]))
            node = await stack.enter_async_context(open_node(NodeConfig(), IDS[0], server, capacity(), lambda _: False))
            server.set_handler(ECHO, echo, max_request_bytes=100, timeout_s=5)
            answer = await request_once(server.addrs()[0], ECHO, b"from the cli", timeout_s=5, max_response_bytes=1000)
            caller, text, _ = answer.decode().split("|")
            assert (caller.startswith("12D3KooW"), text) == (True, "FROM THE CLI")  # an ed25519 id: no address
            host, server_id = await raw_client(stack, server)  # a client that stays connected
            await unlicensed.connect(server.addrs()[0])
            counters = node.gossip.counters
            await until(lambda: counters[("peer", "REJECT", "unlicensed")] == 1 and not server.peers())
            # the gate has swept (it cut the node), and the client is still there, never a peer
            client_id = str(host.get_id())  # type: ignore[attr-defined]
            assert client_id in server.clients()
            assert server.peers() == set()
            assert counters[("peer", "REJECT", "unlicensed")] == 1
            assert await _exchange(host, server_id, ECHO, b"again", 5, 1000) == f"{client_id}|AGAIN|0".encode()
            # answered: the transport closes it after client_linger_s (1 s), not client_lifetime_s (30 s)
            closed_after = await until_wall(lambda: client_id not in server.clients(), 10)
            assert closed_after < 5
            with pytest.raises(TransportError, match=r"dial failed"):
                await request_once("/ip4/127.0.0.1/tcp/1/p2p/" + server.local_id, ECHO, b"x", timeout_s=5,
                                   max_response_bytes=1000)


async def test_clients_that_never_ask_are_closed_at_their_lifetime_and_above_the_cap() -> None:
    config = Libp2pConfig(client_lifetime_s=3.0, client_check_s=0.1, max_clients=1)
    with trio.CancelScope() as everything:
        async with AsyncExitStack() as stack:
            stack.callback(everything.cancel)
            server = await stack.enter_async_context(open_libp2p_transport(IDS[0], config))
            first, _ = await raw_client(stack, server)
            first_id = str(first.get_id())
            await until(lambda: first_id in server.clients())
            connected_at = trio.current_time()
            second, _ = await raw_client(stack, server)  # one too many: the newer is closed at once
            took = await until_wall(lambda: not second.get_network().connections, 10)
            assert took < 2.0  # well before its lifetime
            assert first_id in server.clients()  # the older stays ...
            await until_wall(lambda: not first.get_network().connections, 10)  # ... until its lifetime ends
            assert 2.5 < trio.current_time() - connected_at < 6.0
            assert server.peers() == set()
