"""The mesh runs ChainDist jobs in real containers: three nodes (memory transport, real clock),
each with its runners; the job's holder coordinates, its shards run on the workers placement
orders, a worker that dies mid-run loses its shards to the next ones, and the answer is exact;
every node sees the result's digest; the word-count example's input is dealt out by lines."""

from __future__ import annotations

from pathlib import Path

import docker
import trio

from mesh._chaindist import result_digest
from mesh._identity import NodeIdentity
from mesh._job_events import JobEvents
from mesh._jobspec import ChainDistJob, spec_hash
from mesh._jobspec_load import load_spec, parse_spec
from mesh._node import Node, NodeConfig, open_node
from mesh._runner_car import CarRunner
from mesh._runner_chaindist import ChainDistRun
from mesh._runners import Runners
from mesh._scheduler import assignment, run_scheduler
from mesh._transport import MemoryNetwork
from mesh._wire_capacity import Capacity, Resources

from ..mesh.test_jobs_gossip import CSP, ESCROW, submission
from .conftest import BUSYBOX_IMAGE
from .test_war_runner import until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IDS = [NodeIdentity(bytes([0xD0 + i]) * 32) for i in range(3)]
PROGRAM = ('BEGIN { s = ENVIRON["SHARD"]; n = ENVIRON["SHARDS"]; end = ENVIRON["RANGE_END"]; c = 0; '
           "for (i = 2 + s; i < end; i += n) { p = 1; for (d = 2; d * d <= i; d++) if (i % d == 0) { p = 0; break }; "
           "c += p }; print c }")
# the primes example's count, each shard pausing first so that a worker can be killed mid-run
SLOW_PRIMES = parse_spec(f"""
kind: chaindist
name: primes
resources: {{cpu_millis: 200, memory_mb: 32}}
env: {{RANGE_END: "20000", PAUSE_S: "4", PROGRAM: '{PROGRAM}'}}
restart: {{policy: never}}
chaindist:
  shards: 6
  worker: {{image: "{BUSYBOX_IMAGE}", command: [sh, -c, 'sleep "$PAUSE_S"; awk "$PROGRAM"']}}
  aggregate: [awk, '{{ s += $1 }} END {{ print s }}']
  shard_timeout_s: 60
""")
PRIMES_BELOW_20000 = 2262


def chaindist_capacity() -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    return Capacity(version=1, total=total, free=total, tags=("runner:chaindist",))


class Mesh:
    """Three nodes with their runners; ``scopes`` stop a node as a crash would."""

    def __init__(self, engine: docker.DockerClient, tmp: Path) -> None:
        self.network = MemoryNetwork()
        self.runners = {i.address: CarRunner(engine, i.address) for i in IDS}
        self.scopes = {i.address: trio.CancelScope() for i in IDS}
        self.nodes: dict[str, Node] = {}
        self.of: dict[str, Runners] = {}
        self.events = {i.address: JobEvents() for i in IDS}
        self.tmp = tmp

    async def run(self, ident: NodeIdentity) -> None:
        with self.scopes[ident.address]:
            async with open_node(NodeConfig(), ident, self.network.endpoint(ident.address), chaindist_capacity(),
                                 lambda _: True, escrow=ESCROW) as node, trio.open_nursery() as inner:
                runners = Runners(node, self.runners[ident.address], self.tmp / ident.address, check_s=0.5)
                self.nodes[ident.address], self.of[ident.address] = node, runners
                await inner.start(runners.run)
                await inner.start(lambda task_status: run_scheduler(
                    node, on_plan=runners.offer, states=runners.state_of, versions=runners.versions,
                    results=runners.results, events=self.events[ident.address], task_status=task_status))

    async def start(self, nursery: trio.Nursery) -> Node:
        """Every node up and alive to the others; the first node."""
        for ident in IDS:
            nursery.start_soon(self.run, ident)
        await until(lambda: len(self.nodes) == 3 and all(len(n.membership.alive()) == 2 for n in self.nodes.values()),
                    30, "three nodes alive")
        return self.nodes[IDS[0].address]

    async def place(self, first: Node, spec: ChainDistJob) -> str:
        """Job 7 of ``spec`` announced at ``first`` and placed: its holder (the coordinator)."""
        first.announce_job(submission(1, spec_hash(spec)), CSP, spec)
        await until(lambda: 0 in assignment(first, 7), 30, "the job placed")
        return assignment(first, 7)[0]

    def cleanup(self, engine: docker.DockerClient) -> None:
        for runner in self.runners.values():
            for leftover in runner.list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)


async def test_a_chaindist_job_gives_the_exact_answer_with_a_worker_killed_mid_run(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    assert isinstance(SLOW_PRIMES, ChainDistJob)
    mesh = Mesh(engine, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            first = await mesh.start(nursery)
            first.announce_job(submission(1, spec_hash(SLOW_PRIMES)), CSP, SLOW_PRIMES)
            await until(lambda: mesh.of.get(assignment(first, 7).get(0, ""), mesh.of[IDS[0].address])
                        .chaindist.runs.get(7) is not None, 30, "the coordinator running the job")
            coordinator = assignment(first, 7)[0]
            run = mesh.of[coordinator].chaindist.runs.get(7)
            assert isinstance(run, ChainDistRun)
            await until(lambda: len(run.book.running) == 6, 30, "every shard given to a worker")
            victim = next(w for w in run.book.running.values() if w != coordinator)
            lost = sorted(s for s, w in run.book.running.items() if w == victim)
            # the victim's machine goes away: its node stops, its shard containers with it
            mesh.scopes[victim].cancel()
            for status in await trio.to_thread.run_sync(mesh.runners[victim].list_managed):
                await trio.to_thread.run_sync(mesh.runners[victim].remove, status.container_id, 1)
            await until(lambda: run.state != "running", 90, "the run to finish")
            assert run.state == "completed", run.lines
            assert run.result["output"] == f"{PRIMES_BELOW_20000}\n"
            for shard in lost:  # each lost shard was redone on another worker
                assert run.book.outputs[shard][0] != victim
                assert run.book.failures[shard][0].startswith(f"{victim}: ")
            outputs = run.book.ordered_outputs()
            assert sum(int(o) for o in outputs) == PRIMES_BELOW_20000
            digest = result_digest(7, outputs, run.result["output"].encode())
            assert run.result["digest"] == digest
            assert (tmp_path / coordinator / "chaindist" / "runs" / "7" / "result.json").exists()
            # the other live node sees the digest in the coordinator's claim set, and as an event
            viewer = next(n for a, n in mesh.nodes.items() if a not in (coordinator, victim))

            def seen() -> str | None:
                held = viewer.claims.get(coordinator)
                return None if held is None else held.results_of.get((7, 0))

            await until(lambda: seen() == digest, 30, "the digest in the coordinator's claim set")
            entry = next(e for e in viewer.claims[coordinator].claims if e.job_id == 7)
            assert entry.state == "completed"
            await until(lambda: any(e.what == "result" and e.detail == f"digest {digest}"
                                    for e in mesh.events[viewer.address].of(7)), 10, "the result event")
            assert f"completed: digest {digest}" in mesh.of[coordinator].logs(7, 0)
            assert 'deedmesh_chaindist_runs{state="completed"} 1' in mesh.of[coordinator].metrics()
            ran = sum(r.shards.counters.get("run", 0) for a, r in mesh.of.items())
            assert len(run.book.outputs) < ran <= run._attempts  # the lost shards ran twice
            assert any(f'deedmesh_chaindist_shards_total{{outcome="run"}} {r.shards.counters["run"]}'
                       in r.metrics() for r in mesh.of.values() if r.shards.counters.get("run"))
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup(engine)


async def test_the_word_count_example_deals_its_input_out_by_lines(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "chaindist-wordcount.yaml")
    assert isinstance(spec, ChainDistJob)
    assert spec.chaindist.input is not None
    mesh = Mesh(engine, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            first = await mesh.start(nursery)
            coordinator = mesh.of[await mesh.place(first, spec)]
            await until(lambda: coordinator.results(7, 0) is not None, 60, "the count")
            run = coordinator.chaindist.runs.get(7)
            assert run is not None
            assert run.result["output"].strip() == str(len(spec.chaindist.input.split()))
            assert [int(o) for o in run.book.ordered_outputs()] == [
                len(" ".join(spec.chaindist.input.splitlines()[s::3]).split()) for s in range(3)]
            # a run is not repeated: the stored result is what a restarted coordinator finds
            again = ChainDistRun(coordinator.chaindist.node, coordinator.shards, 7, spec,
                                 tmp_path / assignment(first, 7)[0] / "chaindist")
            await again.run()
            assert (again.state, again.result) == ("completed", run.result)
            assert again.book.tried == {}
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup(engine)


async def test_a_shard_that_fails_on_every_try_fails_the_run_and_says_why(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    spec = parse_spec(f"""
kind: chaindist
name: broken
resources: {{cpu_millis: 200, memory_mb: 32}}
chaindist:
  shards: 2
  worker: {{image: "{BUSYBOX_IMAGE}", command: [sh, -c, 'echo "no luck with shard $SHARD" >&2; exit 3']}}
  aggregate: [cat]
""")
    mesh = Mesh(engine, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            runners = mesh.of[await mesh.place(await mesh.start(nursery), spec)]
            await until(lambda: runners.state_of(7, 0)[0] == "failed", 60, "the run failed")
            run = runners.chaindist.runs.get(7)
            assert run is not None
            assert run.result["state"] == "failed"
            assert run.result["attempts"] == 2 * 3  # MAX_ATTEMPTS per shard, every live worker first
            for shard in (0, 1):
                assert len(set(run.book.tried[shard])) == 3  # all three workers tried
                assert all(f.endswith(f"no luck with shard {shard}\n") for f in run.book.failures[shard])
            assert runners.results(7, 0) is None  # no digest for a failed run
            assert "failed on every worker tried" in runners.logs(7, 0)
            nursery.cancel_scope.cancel()
    finally:
        mesh.cleanup(engine)
