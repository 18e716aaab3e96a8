"""Nodes on the in-memory transport and trio's fake clock: views converge over neighbour sync,
silence kills within three intervals however far away, partitions heal, restarts rejoin,
discovery grows a sparse topology, and unlicensed, banned or forging peers are cut off and counted."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

from mesh._envelope import seal
from mesh._identity import NodeIdentity
from mesh._membership import LivenessConfig, PeerState
from mesh._node import TRIM_SLACK, Node, NodeConfig, open_node
from mesh._sync import MAX_FRAME_BYTES, encode_frames
from mesh._transport import DIRECT, MemoryNetwork, Message
from mesh._wire_capacity import TOPIC as CAPACITY
from mesh._wire_capacity import Capacity, Resources
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_heartbeat import Heartbeat

IDS = [NodeIdentity(bytes([i + 1]) * 32) for i in range(8)]
WALL_START = 1_800_000_000_000
INTERVAL_S = NodeConfig().liveness.heartbeat_interval_ms / 1000


def capacity(version: int = 1, free_cpu: int = 2000) -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    return Capacity(version=version, total=total, free=Resources(cpu_millis=free_cpu, memory_mb=4096, gpus=0,
                                                                disk_mb=5000), tags=("edge", "runner:car"))


def wall_now() -> int:
    return WALL_START + int(trio.current_time() * 1000)


def wall() -> Callable[[], int]:
    return wall_now


@asynccontextmanager
async def mesh(network: MemoryNetwork, ids: list[NodeIdentity], eligible: set[str] | None = None,
               config: NodeConfig | None = None, escrow: tuple[int, str] | None = None,
               no_escrow: frozenset[str] = frozenset()) -> AsyncIterator[list[Node]]:
    """Nodes on ``network``; those outside ``eligible`` believe everyone is licensed (a stale or
    malicious view), so they talk and the licensed nodes must cut them off. ``eligible`` is read
    live, so a test can ban a node mid-run. Nodes in ``no_escrow`` are not told the escrow."""
    allowed = eligible if eligible is not None else {i.address for i in ids}
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(
            config or NodeConfig(), i, network.endpoint(i.address), capacity(),
            allowed.__contains__ if i.address in allowed else (lambda _: True), wall(),
            escrow=None if i.address in no_escrow else escrow)) for i in ids]
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


def all_alive(nodes: list[Node]) -> bool:
    return all(len(n.membership.alive()) == len(nodes) - 1 for n in nodes)


async def test_views_converge_with_capacity(autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(), IDS[:5]) as nodes:
        await until(lambda: all_alive(nodes))
        for n in nodes:
            assert {p.address for p in n.view()} == {i.address for i in IDS[:5]} - {n.address}
            assert all(p.capacity is not None and p.capacity.free == capacity().free for p in n.view())
            assert all(p.capacity is not None and p.capacity.addrs == (p.address,) for p in n.view())
        published = trio.current_time()
        nodes[0].set_capacity(capacity(version=2, free_cpu=500))
        await until(lambda: all(n.capacities[IDS[0].address].version == 2 for n in nodes[1:]))
        # a change is news: it skipped the sync delay that batches a wave's heartbeats
        assert trio.current_time() - published < nodes[0]._sync_delay_s
        assert all(n.gossip.counters[(HEARTBEAT, "ACCEPT", "ok")] > 0 for n in nodes)
        assert nodes[1].gossip.counters[(CAPACITY, "ACCEPT", "ok")] >= 2


async def test_a_silent_node_goes_dead_within_three_intervals(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with mesh(network, IDS[:3]) as nodes:
        await until(lambda: all_alive(nodes))
        network.partition({IDS[2].address}, {IDS[0].address, IDS[1].address})  # a freeze, as others see it
        cut = trio.current_time()
        await until(lambda: nodes[0].state_of(IDS[2].address) is PeerState.DEAD)
        assert trio.current_time() - cut <= 3 * INTERVAL_S
        states = [t.after for t in nodes[0].transitions if t.peer == IDS[2].address]
        assert states[-2:] == [PeerState.SUSPECT, PeerState.DEAD]
        network.heal()
        await until(lambda: nodes[0].state_of(IDS[2].address) is PeerState.ALIVE)
        await until(lambda: nodes[2].state_of(IDS[0].address) is PeerState.ALIVE)


async def test_records_hop_through_a_line_and_far_deaths_are_as_fast_as_near_ones(
        autojump_clock: trio.testing.MockClock) -> None:
    # a line 0-1-2-3-4-5 with discovery off: heartbeats reach the far end only through relays
    network = MemoryNetwork(auto_connect=False)
    ids = IDS[:6]
    for a, b in itertools.pairwise(ids):
        network.link(a.address, b.address)
    config = NodeConfig(target_peers=0)
    async with mesh(network, ids, config=config) as nodes:
        await until(lambda: all_alive(nodes))
        assert nodes[0].transport.peers() == {ids[1].address}  # still a line
        # a capacity change crosses all five hops faster than one hop's batching delay
        changed = trio.current_time()
        nodes[0].set_capacity(capacity(version=2))
        await until(lambda: nodes[5].capacities[ids[0].address].version == 2)
        assert trio.current_time() - changed < nodes[0]._sync_delay_s
        network.partition({ids[5].address}, {i.address for i in ids[:5]})
        cut = trio.current_time()
        await until(lambda: nodes[4].state_of(ids[5].address) is PeerState.DEAD)
        near = trio.current_time() - cut
        await until(lambda: nodes[0].state_of(ids[5].address) is PeerState.DEAD)
        far = trio.current_time() - cut
        assert far <= 3 * INTERVAL_S
        assert far - near <= config.tick_s  # judged on the beat's own timestamp, not on arrival


async def test_long_dead_peers_are_forgotten_and_no_longer_relayed(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    config = NodeConfig(forget_after_s=30)
    async with mesh(network, IDS[:3], config=config) as nodes:
        await until(lambda: all_alive(nodes))
        network.partition({IDS[2].address}, {IDS[0].address, IDS[1].address})
        await until(lambda: nodes[0].state_of(IDS[2].address) is PeerState.DEAD)
        assert nodes[0].store.seq_of(HEARTBEAT, IDS[2].address) > 0
        await until(lambda: all(n.state_of(IDS[2].address) is None for n in nodes[:2]), deadline_s=60)
        assert nodes[0].store.seq_of(HEARTBEAT, IDS[2].address) == 0
        assert IDS[2].address not in nodes[1].capacities


async def test_discovery_dials_peers_learned_through_the_mesh(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(auto_connect=False)
    ids = IDS[:6]
    for a, b in itertools.pairwise(ids):
        network.link(a.address, b.address)
    async with mesh(network, ids, config=NodeConfig(target_peers=4)) as nodes:
        await until(lambda: all(len(n.transport.peers()) >= 4 for n in nodes))
        await until(lambda: all_alive(nodes))


async def test_a_restarted_node_rejoins(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with mesh(network, IDS[:3], eligible={i.address for i in IDS[:4]}) as nodes:
        await until(lambda: all_alive(nodes))
        async with open_node(NodeConfig(), IDS[3], network.endpoint(IDS[3].address), capacity(),
                             lambda _: True, wall()):
            await until(lambda: nodes[0].state_of(IDS[3].address) is PeerState.ALIVE)
        await until(lambda: nodes[0].state_of(IDS[3].address) is PeerState.DEAD)
        first_seq = nodes[0].store.seq_of(HEARTBEAT, IDS[3].address)
        async with open_node(NodeConfig(), IDS[3], network.endpoint(IDS[3].address), capacity(version=5),
                             lambda _: True, wall()) as again:
            await until(lambda: nodes[0].state_of(IDS[3].address) is PeerState.ALIVE)
            await until(lambda: len(again.membership.alive()) == 3)
            assert nodes[0].store.seq_of(HEARTBEAT, IDS[3].address) > first_seq
            await until(lambda: nodes[1].capacities[IDS[3].address].version == 5)


async def test_unlicensed_peers_are_cut_off_and_banned_ones_dropped_mid_run(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    licensed = {i.address for i in IDS[:3]}
    async with mesh(network, IDS[:4], eligible=licensed) as nodes:
        counters = nodes[0].gossip.counters
        await until(lambda: counters[("peer", "REJECT", "unlicensed")] >= 1)
        await until(lambda: all(len(n.membership.alive()) == 2 for n in nodes[:3]))
        assert nodes[0].state_of(IDS[3].address) is None  # never admitted to the view
        assert IDS[3].address not in nodes[0].transport.peers()
        # node 2's license is revoked on chain: at the next look it is cut off and forgotten
        licensed.discard(IDS[2].address)
        await until(lambda: all(IDS[2].address not in n.transport.peers() for n in nodes[:2]))
        await until(lambda: all(n.state_of(IDS[2].address) is None for n in nodes[:2]))
        assert IDS[2].address not in nodes[1].capacities
        assert nodes[0].state_of(IDS[1].address) is PeerState.ALIVE


async def test_a_registered_oracle_takes_part_but_is_never_placed_on(autojump_clock: trio.testing.MockClock) -> None:
    from mesh._scheduler import nodes_of, view_of

    network = MemoryNetwork()
    licensed, oracle = {i.address for i in IDS[:2]}, IDS[2]
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(
            NodeConfig(), i, network.endpoint(i.address), capacity(), licensed.__contains__, wall(),
            is_oracle=lambda a: a == oracle.address)) for i in IDS[:3]]
        # every participant (the oracle too) hears the others: the oracle is kept, not cut
        await until(lambda: all(len(n.membership.alive()) == 2 for n in nodes))
        assert nodes[0].gossip.counters[("peer", "REJECT", "unlicensed")] == 0
        assert nodes[0].may_participate(oracle.address)
        assert not nodes[0].is_eligible(oracle.address)
        # its capacity says runner:car, yet placement sees it as ineligible: it never holds a replica
        await until(lambda: oracle.address in nodes[0].capacities)
        _, _, capacities, eligible, alive = view_of(nodes[0])
        info = {n.address: n for n in nodes_of(capacities, eligible, alive)}
        assert info[oracle.address].alive
        assert not info[oracle.address].eligible
    async with mesh(MemoryNetwork(), IDS[:3], eligible=licensed) as nodes:  # the same, unregistered: cut off
        await until(lambda: nodes[0].gossip.counters[("peer", "REJECT", "unlicensed")] >= 1)
        assert nodes[0].state_of(oracle.address) is None


async def test_forged_replayed_and_oversized_sync_traffic_is_rejected_counted_and_cut(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with mesh(network, IDS[:2], eligible={IDS[n].address for n in (0, 1, 5, 6)}) as nodes:
        await until(lambda: all_alive(nodes))
        node, counters = nodes[0], nodes[0].gossip.counters
        # a raw endpoint holding a licensed address (node 5's) relays bad records to node 0
        raw = network.endpoint(IDS[5].address)
        now = wall_now()
        beat = Heartbeat(interval_ms=1000, capacity_version=1, uptime_s=1)
        forged = seal(IDS[4].private_key, HEARTBEAT, 10**15, now, beat).model_copy(update={"origin": IDS[1].address})
        replayed = seal(IDS[1].private_key, HEARTBEAT, 1, now, beat)
        skewed = seal(IDS[6].private_key, HEARTBEAT, now + 1, now + 3_600_000, beat)
        held = node.store.latest[(HEARTBEAT, IDS[1].address.lower())][1]
        duplicates = counters[(HEARTBEAT, "IGNORE", "duplicate")]
        for frame in encode_frames([replayed.encode(), skewed.encode(), held]):
            await raw.send(IDS[0].address, frame)
        await until(lambda: counters[(HEARTBEAT, "IGNORE", "replay")] == 1
                    and counters[(HEARTBEAT, "IGNORE", "clock-skew")] == 1
                    and counters[(HEARTBEAT, "IGNORE", "duplicate")] > duplicates)
        assert IDS[5].address in node.transport.peers()  # ignoring is not punishing
        await raw.send(IDS[0].address, encode_frames([forged.encode(), b"not json"])[0])
        await until(lambda: counters[(HEARTBEAT, "REJECT", "bad-signature")] == 1
                    and counters[("sync", "REJECT", "malformed")] == 1)
        await until(lambda: IDS[5].address not in node.transport.peers())
        assert counters[("peer", "REJECT", "relayed-invalid")] == 1
        network.link(IDS[5].address, IDS[0].address)
        node._on_frame(Message(DIRECT, b"", IDS[5].address, oversized=MAX_FRAME_BYTES + 1))
        assert counters[("sync", "REJECT", "oversized")] == 1
        await until(lambda: IDS[5].address not in node.transport.peers())
        assert node.state_of(IDS[1].address) is PeerState.ALIVE


async def test_lossy_network_still_converges(autojump_clock: trio.testing.MockClock) -> None:
    # real links lose no frame silently (a failed send resends everything); this one drops 30 %,
    # so a lost capacity record comes back only when it is re-signed
    async with mesh(MemoryNetwork(seed=7, drop_rate=0.3), IDS[:5]) as nodes:
        await until(lambda: all_alive(nodes))
        refresh = nodes[0].config.capacity_refresh_s
        await until(lambda: all(len(n.capacities) == 4 for n in nodes), deadline_s=3 * refresh)


def test_liveness_config_is_checked() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        LivenessConfig(heartbeat_interval_ms=100)
    with pytest.raises(ValueError, match="suspect_factor"):
        LivenessConfig(suspect_factor=3.0, dead_factor=2.0)


def diameter(nodes: list[Node]) -> int:
    edges = {n.address: n.transport.peers() for n in nodes}
    longest = 0
    for start in edges:
        seen, frontier, hops = {start}, {start}, 0
        while frontier:
            frontier = {p for a in frontier for p in edges[a]} - seen
            seen |= frontier
            hops += bool(frontier)
        assert len(seen) == len(nodes)
        longest = max(longest, hops)
    return longest


@pytest.mark.parametrize("max_peers", [2, 4])
async def test_a_mesh_grown_from_a_line_dials_far_peers_until_no_beat_is_late(
        autojump_clock: trio.testing.MockClock, max_peers: int) -> None:
    # 24 nodes joined in a line: a beat relayed 23 hops (125 ms batching each) arrives ~3
    # intervals late, so the far ends look suspect to each other; the nodes must rewire
    network = MemoryNetwork(auto_connect=False)
    ids = [NodeIdentity(bytes([0x90 + i]) * 32) for i in range(24)]
    for a, b in itertools.pairwise(ids):
        network.link(a.address, b.address)
    config = NodeConfig(target_peers=2, max_peers=max_peers)
    async with mesh(network, ids, config=config) as nodes:
        await until(lambda: all_alive(nodes), deadline_s=60)
        await trio.sleep(30)  # discovery rounds
        transitions = sum(len(n.transitions) for n in nodes)
        await trio.sleep(20 * INTERVAL_S)
        flaps = sum(len(n.transitions) for n in nodes) - transitions
        late = max(max(n._lag_ms.values()) for n in nodes)
        if max_peers == 2:  # no room beyond the target: the far ends keep flapping
            assert flaps > 0
        else:
            assert flaps == 0
            assert late <= 0.75 * INTERVAL_S * 1000  # discovery's threshold for "far"
            assert diameter(nodes) <= 7


async def test_a_node_measures_how_late_its_loop_runs_and_its_peers_beats_arrive(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(), IDS[:2]) as nodes:
        await until(lambda: all_alive(nodes))
        assert all(p.beat_lag_ms is not None and 0 <= p.beat_lag_ms < 1000 for p in nodes[0].view())
        assert nodes[0].loop_lag_s < 0.05
        autojump_clock.jump(1.0)  # the clock moves on while no task runs: a node stuck for a second
        await until(lambda: nodes[0].loop_lag_s > 0.5)


async def test_a_node_with_too_many_connections_closes_the_surplus_and_the_mesh_stays_whole(
        autojump_clock: trio.testing.MockClock) -> None:
    # the memory network starts as a full mesh: 7 connections each, above max_peers + TRIM_SLACK
    config = NodeConfig(target_peers=2, max_peers=3)
    cap = config.max_peers + TRIM_SLACK
    async with mesh(MemoryNetwork(), IDS[:8], config=config) as nodes:
        await until(lambda: all(len(n.transport.peers()) <= cap for n in nodes) and all_alive(nodes))
        assert all(n.gossip.counters[("peer", "IGNORE", "surplus")] >= 1 for n in nodes)
        assert all(len(n.transport.peers()) >= 1 for n in nodes)


async def test_a_beat_counts_from_when_its_frame_arrived_not_from_when_it_was_read(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(auto_connect=False), IDS[:2]) as nodes:
        sender = IDS[1]
        interval = NodeConfig().liveness.heartbeat_interval_ms
        beat = seal(sender.private_key, HEARTBEAT, wall_now(), wall_now(),
                    Heartbeat(interval_ms=interval, capacity_version=0, uptime_s=1))
        arrived = trio.current_time()
        await trio.sleep(2.0)  # the frame waits in node 0's queue (a node short of CPU)
        nodes[0]._on_frame(Message(DIRECT, beat.encode(), sender.address, received_at=arrived))
        assert nodes[0].view()[0].beat_lag_ms == 0  # not the 2,000 ms it sat in the queue
        late = seal(sender.private_key, HEARTBEAT, wall_now(), wall_now(),
                    Heartbeat(interval_ms=interval, capacity_version=0, uptime_s=1))
        await trio.sleep(2.0)
        nodes[0]._on_frame(Message(DIRECT, late.encode(), sender.address))  # no arrival time: read now
        assert nodes[0].view()[0].beat_lag_ms == 2000


async def test_a_node_that_is_itself_behind_dials_no_far_peer(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(auto_connect=False)
    ids = IDS[:3]
    for a, b in itertools.pairwise(ids):
        network.link(a.address, b.address)
    config = NodeConfig(target_peers=1, max_peers=2, discovery_s=3600)  # discovery by hand below
    async with mesh(network, ids, config=config) as nodes:
        await until(lambda: all_alive(nodes))
        far = ids[2].address
        nodes[0]._lag_ms[far] = 2 * NodeConfig().liveness.heartbeat_interval_ms  # its beats come late
        assert nodes[0]._discovery_picks() == [nodes[0].capacities[far].addrs]
        nodes[0]._loop_lags.append(1.0)  # ... but so do everyone's: this node is a second behind
        assert nodes[0]._discovery_picks() == []


async def test_a_node_restarted_between_two_ticks_gets_every_record_again(
        autojump_clock: trio.testing.MockClock) -> None:
    # its neighbours never see the connection gone (no tick runs between the close and the
    # reconnect), so their record of what it holds is stale: its beats show it started again
    network = MemoryNetwork()
    async with mesh(network, IDS[:2], eligible={i.address for i in IDS[:4]}) as nodes:
        async with open_node(NodeConfig(), IDS[3], network.endpoint(IDS[3].address), capacity(),
                             lambda _: True, wall()) as first:
            await until(lambda: all_alive([*nodes, first]))
            await until(lambda: len(first.capacities) == 2)
            await trio.sleep(5)  # a few seconds of uptime to lose
        async with open_node(NodeConfig(), IDS[3], network.endpoint(IDS[3].address), capacity(),
                             lambda _: True, wall()) as again:
            # the others' capacity records go out once (and again after capacity_refresh_s)
            await until(lambda: len(again.capacities) == 2, deadline_s=10)
            assert nodes[0].gossip.counters[("peer", "RESYNC", "restarted")] == 1
