"""Real py-libp2p hosts on 127.0.0.1 in one process: the node core over gossipsub."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from mesh._envelope import seal
from mesh._identity import NodeIdentity
from mesh._membership import PeerState
from mesh._node import Node, NodeConfig, _wall_ms, open_node
from mesh._transport_libp2p import Libp2pTransport, open_libp2p_transport, peer_id_of
from mesh._wire_heartbeat import Heartbeat

from .test_node_memory import capacity, until

IDS = [NodeIdentity(bytes([0x40 + i]) * 32) for i in range(6)]  # IDS[5]: a raw host, no node
HEARTBEAT = "deedmesh/heartbeat/1"


def test_peer_id_is_derived_from_the_node_key() -> None:
    assert peer_id_of(IDS[0]).startswith("16Uiu2HA")
    assert peer_id_of(IDS[0]) == peer_id_of(NodeIdentity(IDS[0].private_key))
    assert peer_id_of(IDS[0]) != peer_id_of(IDS[1])


async def test_five_hosts_mesh_reject_bad_traffic_and_detect_a_silent_node() -> None:
    allowed = {i.address for i in IDS[:4]}  # IDS[4] holds no license
    nodes: dict[int, Node] = {}
    scopes = {n: trio.CancelScope() for n in range(5)}
    wall_ms = _wall_ms

    async def run(n: int, transport: Libp2pTransport) -> None:
        with scopes[n]:
            # the unlicensed node believes itself licensed (a stale or malicious view) and publishes
            gate = allowed.__contains__ if IDS[n].address in allowed else (lambda _: True)
            async with open_node(NodeConfig(), IDS[n], transport, capacity(), gate) as node:
                nodes[n] = node
                await trio.sleep_forever()

    async with AsyncExitStack() as stack:
        transports: list[Libp2pTransport] = []
        for ident in IDS:
            bootstrap = transports[0].addrs()[:1] if transports else []
            t = await stack.enter_async_context(open_libp2p_transport(ident, bootstrap=bootstrap))
            assert t.local_id == peer_id_of(ident)
            transports.append(t)
        async with trio.open_nursery() as nursery:
            for n, t in enumerate(transports[:5]):
                nursery.start_soon(run, n, t)
            await until(lambda: len(nodes) == 5 and all(len(nodes[n].membership.alive()) == 3 for n in range(4)))
            await until(lambda: nodes[0].gossip.counters[(HEARTBEAT, "REJECT", "unlicensed")] > 0)
            assert nodes[0].state_of(IDS[4].address) is None
            assert nodes[0].capacities[IDS[1].address] == capacity()
            # a raw host with no validator of its own injects forged, replayed and oversized traffic
            raw = transports[5]
            forged = seal(IDS[4].private_key, HEARTBEAT, 10**15, wall_ms(), Heartbeat(capacity_version=1, uptime_s=1))
            replayed = seal(IDS[1].private_key, HEARTBEAT, 1, wall_ms(), Heartbeat(capacity_version=1, uptime_s=1))
            for data in (forged.model_copy(update={"origin": IDS[1].address}).encode(), replayed.encode(),
                         b"{" + b" " * 20_000 + b"}"):
                await raw.publish(HEARTBEAT, data)
            counters = nodes[0].gossip.counters
            await until(lambda: counters[(HEARTBEAT, "REJECT", "bad-signature")] >= 1
                        and counters[(HEARTBEAT, "IGNORE", "replay")] >= 1
                        and counters[(HEARTBEAT, "REJECT", "oversized")] >= 1)
            assert nodes[0].state_of(IDS[1].address) is PeerState.ALIVE
            # node 3 stops beaconing: every other node marks it dead from silence alone
            scopes[3].cancel()
            stopped = trio.current_time()
            await until(lambda: all(nodes[n].state_of(IDS[3].address) is PeerState.DEAD for n in range(3)))
            assert trio.current_time() - stopped < 3 * 1.0 + 1.5  # 3 intervals + one tick + delivery
            nursery.cancel_scope.cancel()
