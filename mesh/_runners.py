"""The runners of a node with a container engine, behind one face for the placement loop.

The scheduler hands each plan to ``offer`` and asks each held replica's state (``state_of``),
version (``versions``) and result (``results``) for the claim set; ``logs`` reads a replica's log
for ``job logs``. Behind it, by the job's kind:

- CAR: ``CarSupervisor`` (versions per replica behind the node's fronts, for jobs with TCP ports
  only) and ``Reconciler`` (one container per replica, recreated in place, for jobs with a UDP port);
- WAR: ``WarSupervisor`` (a checkout, builds and versions per replica, behind the node's fronts);
- ChainDist: ``ChainDistSupervisor`` (a coordinator per held job) and ``ShardWorker`` (the
  shards other coordinators give this node, on ``_runner_chaindist.PROTOCOL``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ._fronted import FrontedSupervisor
from ._node import Node
from ._reconciler import Reconciler, runs_in_place
from ._runner_car import CarRunner
from ._runner_car_fronted import CarSupervisor
from ._runner_chaindist import ANSWER_MARGIN_S, MAX_REQUEST_BYTES, PROTOCOL, ChainDistSupervisor, ShardWorker
from ._runner_native import NativeRunner
from ._runner_war import WarSupervisor
from ._scheduler import Plan
from ._trio_types import TaskStatus
from ._wire_claim import ReplicaState

MAX_SHARD_S = 86_400 + ANSWER_MARGIN_S  # the longest a shard may run (the spec's limit), and its answer


def war_rollout_lines(counters: Mapping[str, int]) -> list[str]:
    """``/metrics`` lines of the WAR rollouts a node ran, by outcome."""
    return ["# HELP deedmesh_war_rollouts_total WAR versions rolled out here, by outcome (interrupted: the remote, "
            "registry or engine failed; tried again).", "# TYPE deedmesh_war_rollouts_total counter",
            *(f'deedmesh_war_rollouts_total{{outcome="{o}"}} {counters[f"rollouts_{o}"]}'
              for o in ("served", "failed", "interrupted"))]


class Runners:
    def __init__(self, node: Node, runner: CarRunner, work_dir: Path, *, check_s: float = 2.0,
                 on_change: Callable[[], None] | None = None, shards_at_once: int = 2) -> None:
        changed = node.notify if on_change is None else on_change
        self.runner = runner
        self.reconciler = Reconciler(runner, check_s=check_s, on_change=changed, runs=runs_in_place)
        self.war = WarSupervisor(runner, work_dir / "war", on_change=changed, check_s=check_s)
        self.car = CarSupervisor(runner, work_dir / "car", on_change=changed, check_s=check_s)
        self.fronted: tuple[FrontedSupervisor[Any, Any], ...] = (self.war, self.car)
        self.shards = ShardWorker(node, runner, work_dir / "chaindist", parallel=shards_at_once)
        self.chaindist = ChainDistSupervisor(node, self.shards, work_dir / "chaindist", on_change=changed)
        node.transport.set_handler(PROTOCOL, self.shards.serve, max_request_bytes=MAX_REQUEST_BYTES,
                                   timeout_s=MAX_SHARD_S)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await self.shards.clear_leftovers()
            await nursery.start(self.reconciler.run)
            await nursery.start(self.war.run)
            await nursery.start(self.car.run)
            await nursery.start(self.chaindist.run)
            task_status.started()

    def offer(self, plan: Plan) -> None:
        self.reconciler.offer(plan)
        self.war.offer(plan)
        self.car.offer(plan)
        self.chaindist.offer(plan)

    def state_of(self, job_id: int, replica: int) -> tuple[ReplicaState, int]:
        for supervisor in self.fronted:
            if (report := supervisor.report(job_id, replica)) is not None:
                return report.state, report.restarts
        if (run := self.chaindist.report(job_id)) is not None:
            return run.state, 0
        return self.reconciler.state_of(job_id, replica)

    def revision_of(self, job_id: int, replica: int) -> tuple[str, ReplicaState, str] | None:
        """The spec revision a held replica runs here, its state and a revision it failed to roll
        out (``_rollout``); None if it runs nothing yet (a ChainDist run is started over for a new
        spec, so it needs no gate)."""
        for supervisor in self.fronted:
            if supervisor.report(job_id, replica) is not None:
                return supervisor.revision_of(job_id, replica)
        return self.reconciler.revision_of(job_id, replica)

    def versions(self, job_id: int, replica: int) -> tuple[str, str] | None:
        return self.war.versions(job_id, replica)

    def endpoints(self, job_id: int, replica: int) -> dict[int, int]:
        """Container port -> the node port a replica here is reached at: its front's, or (run in
        place) the port the engine published."""
        for supervisor in self.fronted:
            if found := supervisor.endpoints(job_id, replica):
                return found
        status = self.reconciler.statuses.get((job_id, replica))
        return {} if status is None else {b.container_port: b.host_port for b in status.ports}

    def results(self, job_id: int, replica: int) -> str | None:
        report = self.chaindist.report(job_id)
        return None if report is None or not report.digest else report.digest

    def metrics(self) -> list[str]:
        """Prometheus lines on the WAR and ChainDist runners (``/metrics``)."""
        war = self.war.counters
        lines = war_rollout_lines(war)
        lines += ["# HELP deedmesh_war_restarts_total Serving WAR versions restarted here after they exited.",
                  "# TYPE deedmesh_war_restarts_total counter", f"deedmesh_war_restarts_total {war['restarts']}"]
        car = self.car.counters
        lines += ["# HELP deedmesh_car_rollouts_total CAR revisions rolled out behind the node's fronts, by "
                  "outcome.", "# TYPE deedmesh_car_rollouts_total counter"]
        lines += [f'deedmesh_car_rollouts_total{{outcome="{o}"}} {car[f"rollouts_{o}"]}'
                  for o in ("served", "failed", "interrupted")]
        shards = self.shards.counters
        lines += ["# HELP deedmesh_chaindist_shards_total Shard requests this node answered, by outcome.",
                  "# TYPE deedmesh_chaindist_shards_total counter"]
        lines += [f'deedmesh_chaindist_shards_total{{outcome="{o}"}} {shards.get(o, 0)}'
                  for o in ("run", "not-coordinator", "malformed")]
        states = [run.state for _, (run, _, _) in self.chaindist.runs.items.items()]
        lines += ["# HELP deedmesh_chaindist_runs ChainDist jobs this node coordinates, by state.",
                  "# TYPE deedmesh_chaindist_runs gauge"]
        lines += [f'deedmesh_chaindist_runs{{state="{s}"}} {states.count(s)}'
                  for s in ("running", "completed", "failed")]
        return lines

    def logs(self, job_id: int, replica: int, tail: int = 100) -> str:
        """The replica's log (blocking: the engine's, through the supervisor that runs it), or a
        ChainDist run's."""
        if (run := self.chaindist.logs(job_id, tail)) is not None:
            return run
        for supervisor in self.fronted:
            if (text := supervisor.logs(job_id, replica, tail)) is not None:
                return text
        return self.runner.logs(job_id, replica, tail)


class NativeRunners:
    """The runners of a node with no engine that runs WAR replicas as processes (``_runner_native``):
    the same face as ``Runners``, for WAR only."""

    def __init__(self, runtime: NativeRunner, work_dir: Path, *, check_s: float = 2.0,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.runtime = runtime
        self.war = WarSupervisor(runtime, work_dir / "war", on_change=on_change, check_s=check_s)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.war.run)
            task_status.started()

    def offer(self, plan: Plan) -> None:
        self.war.offer(plan)

    def state_of(self, job_id: int, replica: int) -> tuple[ReplicaState, int]:
        report = self.war.report(job_id, replica)
        return ("claimed", 0) if report is None else (report.state, report.restarts)

    def revision_of(self, job_id: int, replica: int) -> tuple[str, ReplicaState, str] | None:
        return self.war.revision_of(job_id, replica)

    def versions(self, job_id: int, replica: int) -> tuple[str, str] | None:
        return self.war.versions(job_id, replica)

    def results(self, job_id: int, replica: int) -> str | None:
        return None

    def endpoints(self, job_id: int, replica: int) -> dict[int, int]:
        return self.war.endpoints(job_id, replica)

    def metrics(self) -> list[str]:
        return war_rollout_lines(self.war.counters)

    def logs(self, job_id: int, replica: int, tail: int = 100) -> str:
        text = self.war.logs(job_id, replica, tail)
        return self.runtime.logs(job_id, replica, tail) if text is None else text
