"""What an oracle writes down of the mesh (``oracle._watch``): the pure replay of a log into
intervals and coverage, and a watcher on the memory mesh (fake clock) following nodes going down
(suspect counts as down, while the suspect still holds its replica) and a replica moving, across
an epoch boundary and a restart of the oracle."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import trio
import trio.testing

from mesh import NodeConfig, open_node
from mesh._jobspec import spec_hash
from mesh._scheduler import run_scheduler
from mesh._transport import MemoryNetwork
from oracle._watch import EpochClock, Watcher, epoch_log, replay

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from ..mesh.test_node_memory import IDS, capacity, until, wall, wall_now
from ..mesh.test_scheduler import SPEC


def lines(*events: dict[str, object]) -> list[str]:
    return [json.dumps(e) for e in events]


def test_replay_turns_a_log_into_clipped_intervals_and_coverage() -> None:
    log = lines({"at": 900, "watching": True}, {"at": 900, "up": ["a", "b"], "down": []},
                {"at": 900, "held": [[7, 0, "a"]], "released": []},
                {"at": 1500, "watching": True}, {"at": 1500, "up": [], "down": ["a"]},
                {"at": 1500, "held": [[7, 0, "b"]], "released": [[7, 0, "a"]]},
                {"at": 2500, "watching": True})
    got = replay([*log, '{"at": 26'], 1000, 3000)  # a line cut short by a crash is skipped
    assert got.alive == (("a", 1000, 1500), ("b", 1000, 2500))  # clipped to the epoch; open ones end at the last sample
    assert got.held == ((7, 0, "a", 1000, 1500), (7, 0, "b", 1500, 2500))
    assert got.watched == ((1000, 2500),)
    assert got.coverage_ms == 1500


def test_a_gap_in_the_samples_is_time_the_oracle_did_not_watch() -> None:
    log = lines({"at": 0, "watching": True}, {"at": 0, "up": ["a"], "down": []},
                {"at": 1000, "watching": True},
                # the oracle was down from 1000 to 9000; a restarted watcher writes the whole state again
                {"at": 9000, "watching": True}, {"at": 9000, "up": ["a"], "down": []},
                {"at": 10_000, "watching": True})
    got = replay(log, 0, 10_000, gap_ms=2000)
    assert got.alive == (("a", 0, 1000), ("a", 9000, 10_000))
    assert got.coverage_ms == 2000


async def test_a_watcher_follows_a_node_going_down_and_its_replica_moving(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    network = MemoryNetwork()
    licensed, oracle = {i.address for i in IDS[:3]}, IDS[3]
    spec = SPEC.model_copy(update={"replicas": 1, "placement": SPEC.placement.model_copy(update={"include": ()})})
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(
            NodeConfig(), i, network.endpoint(i.address), capacity(), licensed.__contains__, wall(), escrow=ESCROW,
            is_oracle=lambda a: a == oracle.address)) for i in IDS[:4]]
        nursery = await stack.enter_async_context(trio.open_nursery())
        for node in nodes[:3]:
            await nursery.start(partial(run_scheduler, node))
        watching = nodes[3]
        await until(lambda: len(watching.membership.alive()) == 3)
        clock = EpochClock(genesis_ms=wall_now() - wall_now() % 20_000 + 20_000, epoch_ms=20_000)  # the next 20 s
        watcher = Watcher(watching, clock, tmp_path)
        nodes[0].announce_job(submission(1, spec_hash(spec)), CSP, spec)
        scope = trio.CancelScope()

        async def watch() -> None:
            with scope:
                await watcher.run()

        nursery.start_soon(watch)
        start, end = clock.bounds(0)
        await until(lambda: wall_now() > start + 5000, deadline_s=60)
        holder = next(h for _, _, h in watcher.view()[1])
        network.partition({holder}, {i.address for i in IDS[:4]} - {holder})  # the holder's machine goes away
        down_at = wall_now()
        await until(lambda: wall_now() > end + 3000, deadline_s=60)
        scope.cancel()  # the oracle stops for a while, then a new watcher resumes the log
        await trio.sleep(10)
        resumed = Watcher(watching, clock, tmp_path)
        nursery.start_soon(resumed.run)
        await until(lambda: wall_now() > clock.bounds(1)[1] + 1000, deadline_s=60)
        nursery.cancel_scope.cancel()

    first = replay(epoch_log(tmp_path, 0).read_text().splitlines(), start, end)
    assert first.coverage_ms == end - start  # watched the whole epoch, its boundaries included
    alive = {n: sum(b - a for m, a, b in first.alive if m == n) for n in licensed}
    assert all(alive[n] == end - start for n in licensed - {holder})
    # the holder counted alive until the oracle's view judged it suspect (liveness: ~2 beats)...
    assert down_at - start < alive[holder] < down_at - start + 5000
    # ... and holding its replica until judged dead (~2.75 beats): the time between is held, not alive
    held = sum(b - a for _, _, h, a, b in first.held if h == holder)
    assert 0 < held - alive[holder] <= 1500
    tenures = {(h, a, b) for _, _, h, a, b in first.held}
    assert {h for h, _, _ in tenures} == {holder, next(h for h, _, _ in tenures if h != holder)}  # it moved once
    assert sum(b - a for _, a, b in tenures) <= end - start
    second = replay(epoch_log(tmp_path, 1).read_text().splitlines(), *clock.bounds(1))
    assert 0 < second.coverage_ms < 20_000 - 9000  # the oracle was down for ~10 s of it, and says so
