"""Nodes on the in-memory transport and trio's fake clock: views converge, silence kills,
partitions heal, and unlicensed or forged traffic is cut off and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

from mesh._envelope import seal
from mesh._identity import NodeIdentity
from mesh._membership import PeerState
from mesh._node import Node, NodeConfig, open_node
from mesh._transport import MemoryNetwork
from mesh._wire_capacity import Capacity, Resources
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_heartbeat import Heartbeat

IDS = [NodeIdentity(bytes([i + 1]) * 32) for i in range(5)]
WALL_START = 1_800_000_000_000


def capacity(version: int = 1, free_cpu: int = 2000) -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    return Capacity(version=version, total=total, free=Resources(cpu_millis=free_cpu, memory_mb=4096, gpus=0,
                                                                disk_mb=5000), tags=("edge",))


def wall() -> Callable[[], int]:
    return lambda: WALL_START + int(trio.current_time() * 1000)


@asynccontextmanager
async def mesh(network: MemoryNetwork, ids: list[NodeIdentity], eligible: set[str] | None = None,
               ) -> AsyncIterator[list[Node]]:
    """Nodes on ``network``; those outside ``eligible`` believe everyone is licensed (a stale or
    malicious view), so they publish and the licensed nodes must cut them off."""
    allowed = eligible if eligible is not None else {i.address for i in ids}
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(
            NodeConfig(), i, network.endpoint(i.address), capacity(),
            allowed.__contains__ if i.address in allowed else (lambda _: True), wall())) for i in ids]
        yield nodes


async def until(predicate: Callable[[], bool], deadline_s: float = 30) -> None:
    """Wait on the (fake) clock until ``predicate`` holds; fail at the deadline. Polling on the fake
    clock costs no real time and keeps the nodes free of test hooks."""
    with trio.fail_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_views_converge_with_capacity(autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(), IDS) as nodes:
        await until(lambda: all(len(n.membership.alive()) == 4 for n in nodes))
        for n in nodes:
            assert {p.address for p in n.view()} == {i.address for i in IDS} - {n.address}
            assert all(p.capacity == capacity() for p in n.view())
        await nodes[0].set_capacity(capacity(version=2, free_cpu=500))
        await until(lambda: all(n.capacities[IDS[0].address].version == 2 for n in nodes[1:]))


async def test_a_silent_node_goes_dead_within_three_intervals(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with mesh(network, IDS[:3]) as nodes:
        await until(lambda: all(len(n.membership.alive()) == 2 for n in nodes))
        network.partition({IDS[2].address}, {IDS[0].address, IDS[1].address})  # a freeze, as others see it
        cut = trio.current_time()
        await until(lambda: nodes[0].state_of(IDS[2].address) is PeerState.DEAD)
        assert trio.current_time() - cut <= 3 * nodes[0].config.liveness.heartbeat_interval_ms / 1000 + 0.5
        states = [t.after for t in nodes[0].transitions if t.peer == IDS[2].address]
        assert states[-2:] == [PeerState.SUSPECT, PeerState.DEAD]
        network.heal()
        await until(lambda: nodes[0].state_of(IDS[2].address) is PeerState.ALIVE)
        assert nodes[2].state_of(IDS[0].address) is PeerState.ALIVE


async def test_unlicensed_and_forged_traffic_is_rejected_and_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    licensed = {i.address for i in IDS[:2]}
    async with mesh(network, IDS[:3], eligible=licensed) as nodes:
        await until(lambda: nodes[0].gossip.counters[(HEARTBEAT, "REJECT", "unlicensed")] >= 2)
        assert nodes[0].state_of(IDS[2].address) is None  # never admitted to the view
        assert nodes[0].state_of(IDS[1].address) is PeerState.ALIVE
        forger = network.endpoint("forger")
        env = seal(IDS[2].private_key, HEARTBEAT, 10**15, WALL_START, Heartbeat(capacity_version=1, uptime_s=1))
        claimed = env.model_copy(update={"origin": IDS[1].address})
        await forger.publish(HEARTBEAT, claimed.encode())
        await forger.publish(HEARTBEAT, b"\x00garbage")
        counters = nodes[0].gossip.counters
        await until(lambda: counters[(HEARTBEAT, "REJECT", "malformed")] == 1)
        assert counters[(HEARTBEAT, "REJECT", "bad-signature")] == 1  # published first, handled first


async def test_lossy_network_still_converges(autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(seed=7, drop_rate=0.3), IDS) as nodes:
        await until(lambda: all(len(n.membership.alive()) == 4 for n in nodes))
        await until(lambda: all(len(n.capacities) == 4 for n in nodes))
