"""Runs what the placement loop says this node holds: one container per held CAR replica.

The scheduler hands every plan over (``offer``); the loop keeps only the newest and reconciles it
against the engine, and re-checks every ``check_s`` to notice containers that exited:

- a held replica with no container, or a stopped one, is (re)started through ``CarRunner.start``
  (which adopts a running container of the same spec instead of duplicating it), after the job's
  restart backoff (``next_backoff`` over the runner's restart count) and only if the restart policy
  allows it (``never``; ``on-failure`` only after a non-zero exit);
- a container of this node whose replica it no longer holds (lost to a takeover, stopped, or left
  from before a restart) is stopped and removed.

Every engine call is blocking (docker SDK) and runs in a worker thread, one at a time. WAR and
ChainDist replicas are not run yet (issue 5); they are claimed but left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from docker.errors import DockerException

from ._jobspec import CarJob, HttpHealth, JobSpec, TcpHealth
from ._runner_car import CarRunner, CarRunnerError, ContainerRequest, ContainerStatus, HealthCheck, PortMapping
from ._runner_car import next_backoff as backoff_s
from ._scheduler import Plan
from ._trio_types import TaskStatus
from ._wire_claim import ReplicaState

log = logging.getLogger("deedmesh.runner")
T = TypeVar("T")
PIDS_LIMIT = 256  # a replica's processes; fork bombs stop here


def container_request(job_id: int, replica: int, spec: CarJob) -> ContainerRequest:
    """The container of one replica of a CAR job."""
    health = None
    if spec.health is not None:
        timing = {"interval_s": spec.health.interval_s, "timeout_s": spec.health.timeout_s,
                  "retries": spec.health.retries, "start_period_s": spec.health.start_period_s}
        if isinstance(spec.health, HttpHealth):
            health = HealthCheck.http(spec.health.port, spec.health.path, **timing)
        elif isinstance(spec.health, TcpHealth):
            health = HealthCheck.tcp(spec.health.port, **timing)
        else:
            health = HealthCheck.command(tuple(spec.health.argv), **timing)
    # a port without ``host`` gets one the engine picks (read it from the status); one marked
    # ``expose`` publishes on every interface, and then so do the job's other ports
    exposed = any(p.expose for p in spec.ports)
    return ContainerRequest(
        job_id=job_id, replica=replica, image=spec.car.image,
        command=None if spec.car.command is None else tuple(spec.car.command), env=dict(spec.env),
        ports=tuple(PortMapping(p.container, p.protocol, p.host) for p in spec.ports),
        cpu_millis=spec.resources.cpu_millis, memory_mb=spec.resources.memory_mb, pids_limit=PIDS_LIMIT,
        health=health, labels={"deedmesh.name": spec.name}, bind_address="0.0.0.0" if exposed else "127.0.0.1")


class Reconciler:
    def __init__(self, runner: CarRunner, check_s: float = 2.0, on_change: Callable[[], None] | None = None) -> None:
        self.runner = runner
        self.on_change = on_change  # a replica's state changed (the scheduler re-signs the claim set)
        self.check_s = check_s
        self.statuses: dict[tuple[int, int], ContainerStatus] = {}  # what the engine said last
        self._plan: tuple[dict[int, int], dict[int, JobSpec]] = ({}, {})
        self._wake = trio.Event()
        self._retry_at: dict[tuple[int, int], float] = {}  # replica -> trio time it may restart
        self._limiter = trio.CapacityLimiter(1)
        self.failures = 0  # rounds the engine failed

    def state_of(self, job_id: int, replica: int) -> tuple[ReplicaState, int]:
        """How a held replica is doing here (for the claim set): its container's state and restarts."""
        status = self.statuses.get((job_id, replica))
        if status is None:
            return ("starting" if (job_id, replica) in self._retry_at else "claimed"), 0
        if not status.running:
            return "exited", status.restarts
        if status.health == "healthy":
            return "healthy", status.restarts
        if status.health == "unhealthy":
            return "unhealthy", status.restarts
        return ("starting" if status.health == "starting" else "running"), status.restarts

    def offer(self, plan: Plan) -> None:
        """The newest plan (called by the scheduler on every plan; never blocks)."""
        if (plan.holding, plan.specs) != self._plan:
            self._plan = (plan.holding, plan.specs)
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self.check_s):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                before = {key: self.state_of(*key) for key in self.statuses}
                await self.reconcile()
                if self.on_change is not None and before != {key: self.state_of(*key) for key in self.statuses}:
                    self.on_change()
            except (DockerException, OSError, CarRunnerError) as exc:  # requests' errors are OSErrors
                # the engine went away or failed: nothing is lost, the next round tries again
                self.failures += 1
                log.warning("reconcile failed", extra={"error": str(exc)[:500]})

    async def reconcile(self) -> None:
        holding, specs = self._plan
        managed = await self._engine(self.runner.list_managed)
        for status in managed:
            if holding.get(status.job_id) != status.replica:
                log.info("stopping a replica this node no longer holds",
                         extra={"job": status.job_id, "replica": status.replica})
                await self._engine(self.runner.stop, status.job_id, status.replica)
                self.statuses.pop((status.job_id, status.replica), None)
        found = {(s.job_id, s.replica): s for s in managed}
        for job_id, replica in sorted(holding.items()):
            spec = specs.get(job_id)
            if isinstance(spec, CarJob):
                await self._ensure(job_id, replica, spec, found.get((job_id, replica)))

    async def _ensure(self, job_id: int, replica: int, spec: CarJob, status: ContainerStatus | None) -> None:
        key = (job_id, replica)
        if status is not None:
            self.statuses[key] = status
            if status.running:
                return
            policy = spec.restart.policy
            if policy == "never" or (policy == "on-failure" and status.exit_code == 0):
                return
        if trio.current_time() < self._retry_at.get(key, 0.0):
            return
        attempts = 0 if status is None else status.restarts + 1
        b = spec.restart.backoff
        self._retry_at[key] = trio.current_time() + backoff_s(attempts, b.initial_s, b.max_s, b.multiplier)
        try:
            if not (spec.car.pull == "never" and spec.car.image_file is None):
                await self._engine(self.runner.ensure_image, spec.car.image, spec.car.image_file)
            await self._engine(self.runner.start, container_request(job_id, replica, spec))
            started = await self._engine(self.runner.status, job_id, replica)
            if started is not None:
                self.statuses[key] = started
        except CarRunnerError as exc:
            log.warning("replica did not start", extra={"job": job_id, "replica": replica, "error": str(exc)})

    async def _engine(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
