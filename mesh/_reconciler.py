"""Runs what the placement loop says this node holds: one container per held CAR replica.

The scheduler hands every plan over (``offer``); the loop keeps only the newest and reconciles it
against the engine, and re-checks every ``check_s`` to notice containers that exited:

- a held replica with no container, or a stopped one, is (re)started through ``CarRunner.start``
  (which adopts a running container of the same spec instead of duplicating it), after the job's
  restart backoff (``next_backoff`` over the runner's restart count) and only if the restart policy
  allows it (``never``; ``on-failure`` only after a non-zero exit);
- a container of this node whose replica it no longer holds (lost to a takeover, stopped, or left
  from before a restart) is stopped and removed; but one already there when the reconciler first
  looked is kept for ``adopt_grace_s`` unless the plan claims it sooner: a restarted node's first
  plans come from an empty view (it learns the jobs and claims from its neighbours a moment
  later), and "not held yet" must not mean "remove" for the containers it is about to adopt;
- images are pulled by the job's ``pull`` policy (``never``: only what the engine has; ``if-missing``;
  ``always``: on every (re)start), with the ``registry_auth`` password read on this node from the
  environment variable or file the spec names, at pull time (a rotated secret needs no restart);
- a container killed for exceeding its memory limit shows as ``oom-killed`` in the claim set (not
  ``exited``), with one structured warning per kill.

Every engine call is blocking (docker SDK) and runs in a worker thread, one at a time. WAR
replicas are run by ``_runner_war`` (several containers a replica during a rollout, each named by
its version): this loop only removes them once their replica is not held. ChainDist jobs are run by
``_runner_chaindist``, whose one-off shard and aggregate containers this loop leaves alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio
from docker.errors import DockerException

from ._jobspec import CarJob, HttpHealth, JobSpec, RegistryAuth, TcpHealth, revision_of, updated_in_place
from ._runner_car import (
    CarRunner,
    CarRunnerError,
    ContainerRequest,
    ContainerStatus,
    HealthCheck,
    ImageUnavailable,
    PortMapping,
    RegistryCredentials,
)
from ._runner_car import next_backoff as backoff_s
from ._scheduler import Plan
from ._trio_types import TaskStatus
from ._wire_claim import ReplicaState

log = logging.getLogger("deedmesh.runner")
T = TypeVar("T")
PIDS_LIMIT = 256  # a replica's processes; fork bombs stop here
# A restarted node hears the jobs and claims from its first neighbour within a sync wave of
# connecting (under a second), and dials its peers within a discovery round (2 s); 10 s covers a
# slow libp2p dial several times over, and a replica that really moved while the node was down is
# already running elsewhere, so its stale copy here costs only resources, for this long.
ADOPT_GRACE_S = 10.0


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
        health=health, labels={"deedmesh.name": spec.name}, bind_address="0.0.0.0" if exposed else "127.0.0.1",
        revision=revision_of(spec))


def registry_credentials(image: str, auth: RegistryAuth,
                         environ: Mapping[str, str] | None = None) -> RegistryCredentials:
    """The login for pulling ``image``: the spec's user, with the password its reference names on this
    node (an environment variable, or a file whose one trailing newline is dropped, as ``docker login
    --password-stdin`` does). ``ImageUnavailable`` naming the reference, never the secret, if unset."""
    env = os.environ if environ is None else environ
    if auth.password_env is not None:
        password = env.get(auth.password_env, "")
        if not password:
            raise ImageUnavailable(image, f"registry_auth.password_env ${auth.password_env} is not set on this node")
    else:
        assert auth.password_file is not None  # the spec requires exactly one of the two
        try:
            password = Path(auth.password_file).read_text().removesuffix("\n").removesuffix("\r")
        except OSError as exc:
            raise ImageUnavailable(
                image, f"registry_auth.password_file {auth.password_file}: {exc.strerror or exc}") from exc
        if not password:
            raise ImageUnavailable(image, f"registry_auth.password_file {auth.password_file} is empty")
    return RegistryCredentials(auth.username, password)


def runs_in_place(spec: CarJob) -> bool:
    """Whether a CAR job's replicas run here, recreated in place on a spec change: those with a UDP
    port (a node's fronts carry TCP only). The others run behind fronts (``_runner_car_fronted``)."""
    return updated_in_place(spec)


def prepare_image(runner: CarRunner, spec: CarJob) -> None:
    """Pull or load a CAR job's image by its policy (blocking: runs in an engine thread)."""
    car = spec.car
    if car.pull == "never":  # the spec refuses ``never`` with an image_file
        return
    credentials = None if car.registry_auth is None else registry_credentials(car.image, car.registry_auth)
    runner.ensure_image(car.image, car.image_file, pull=car.pull, credentials=credentials)


class Reconciler:
    def __init__(self, runner: CarRunner, check_s: float = 2.0, on_change: Callable[[], None] | None = None, *,
                 adopt_grace_s: float = ADOPT_GRACE_S, runs: Callable[[CarJob], bool] = lambda _: True) -> None:
        self.runner = runner
        self.runs = runs  # the CAR jobs it runs (the others' replicas are behind fronts: _runner_car_fronted)
        self.on_change = on_change  # a replica's state changed (the scheduler re-signs the claim set)
        self.check_s = check_s
        self.adopt_grace_s = adopt_grace_s
        self.statuses: dict[tuple[int, int], ContainerStatus] = {}  # what the engine said last
        self._plan: tuple[dict[int, int], dict[int, JobSpec]] = ({}, {})
        self._wake = trio.Event()
        self._retry_at: dict[tuple[int, int], float] = {}  # replica -> trio time it may restart
        self._limiter = trio.CapacityLimiter(1)
        self._inherited: set[tuple[int, int]] | None = None  # containers the first round found, not yet held
        self._grace_until = 0.0  # trio time the inherited ones stop being kept
        self._oom_reported: dict[tuple[int, int], tuple[str, str]] = {}  # replica -> (container, finished_at)
        self.failed_revisions: dict[tuple[int, int], str] = {}  # replica -> a revision whose image is missing
        self.failures = 0  # rounds the engine failed
        self.rounds = 0  # rounds completed

    def state_of(self, job_id: int, replica: int) -> tuple[ReplicaState, int]:
        """How a held replica is doing here (for the claim set): its container's state and restarts."""
        status = self.statuses.get((job_id, replica))
        if status is None:
            return ("starting" if (job_id, replica) in self._retry_at else "claimed"), 0
        if not status.running:
            return ("oom-killed" if status.likely_oom else "exited"), status.restarts
        if status.health == "healthy":
            return "healthy", status.restarts
        if status.health == "unhealthy":
            return "unhealthy", status.restarts
        return ("starting" if status.health == "starting" else "running"), status.restarts

    def revision_of(self, job_id: int, replica: int) -> tuple[str, ReplicaState, str] | None:
        """The spec revision a held replica's container runs here, its state, and a revision whose
        image the engine lacks ("": none); None if it has neither."""
        status, failed = self.statuses.get((job_id, replica)), self.failed_revisions.get((job_id, replica), "")
        if status is None:
            return ("", self.state_of(job_id, replica)[0], failed) if failed else None
        return status.revision or "", self.state_of(job_id, replica)[0], failed

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
                self.rounds += 1
                if self.on_change is not None and before != {key: self.state_of(*key) for key in self.statuses}:
                    self.on_change()
            except (DockerException, OSError, CarRunnerError) as exc:  # requests' errors are OSErrors
                # the engine went away or failed: nothing is lost, the next round tries again
                self.failures += 1
                log.warning("reconcile failed", extra={"error": str(exc)[:500]})

    async def reconcile(self) -> None:
        holding, specs = self._plan
        managed = await self._engine(self.runner.list_managed)
        now = trio.current_time()
        if self._inherited is None:
            self._inherited = {(s.job_id, s.replica) for s in managed}
            self._grace_until = now + self.adopt_grace_s
            if self._inherited:
                log.info("containers found at start-up are kept while the node learns what it holds",
                         extra={"replicas": sorted(self._inherited), "grace_s": self.adopt_grace_s})
        if now >= self._grace_until:
            self._inherited.clear()
        for status in managed:
            key = (status.job_id, status.replica)
            if status.role in ("shard", "aggregate"):
                continue  # a ChainDist one-off: its runner waits for it and removes it
            if holding.get(status.job_id) == status.replica:
                self._inherited.discard(key)  # adopted: from now on the plan alone decides
                continue
            if key in self._inherited:
                continue
            log.info("stopping a replica this node no longer holds", extra={"job": key[0], "replica": key[1]})
            await self._engine(self.runner.remove, status.container_id)
            self.statuses.pop(key, None)
            self._retry_at.pop(key, None)
            self._oom_reported.pop(key, None)
            self.failed_revisions.pop(key, None)
        found = {(s.job_id, s.replica): s for s in managed if s.version is None and s.role == "serve"}  # CAR's
        for job_id, replica in sorted(holding.items()):
            spec = specs.get(job_id)
            if isinstance(spec, CarJob) and self.runs(spec):
                await self._ensure(job_id, replica, spec, found.get((job_id, replica)))

    async def _ensure(self, job_id: int, replica: int, spec: CarJob, status: ContainerStatus | None) -> None:
        key = (job_id, replica)
        request = container_request(job_id, replica, spec)
        if status is None:
            self.statuses.pop(key, None)  # gone (removed by an update that failed to start, or by hand)
        else:
            self.statuses[key] = status
            if status.running and status.spec_hash == request.spec_hash():
                return
            if status.running:  # the spec changed (a rolling update let it move): recreated now, in place
                log.info("replica moves to a new revision", extra={"job": job_id, "replica": replica,
                                                                    "revision": request.revision,
                                                                    "was": status.revision})
                self._retry_at.pop(key, None)
                await self._start(key, spec, request)
                return
            if status.likely_oom:
                self._report_oom(key, status, spec)
            policy = spec.restart.policy
            if policy == "never" or (policy == "on-failure" and status.exit_code == 0):
                return
        if trio.current_time() < self._retry_at.get(key, 0.0):
            return
        attempts = 0 if status is None else status.restarts + 1
        b = spec.restart.backoff
        self._retry_at[key] = trio.current_time() + backoff_s(attempts, b.initial_s, b.max_s, b.multiplier)
        await self._start(key, spec, request)

    async def _start(self, key: tuple[int, int], spec: CarJob, request: ContainerRequest) -> None:
        try:
            await self._engine(self._prepare_image, spec)
            await self._engine(self.runner.start, request)
            started = await self._engine(self.runner.status, *key)
            if started is not None:
                self.statuses[key] = started
        except ImageUnavailable as exc:
            # this revision cannot start here (a running replica is left as it was): said at once,
            # so a rolling update rolls back instead of waiting out its deadline
            self.failed_revisions[key] = request.revision or ""
            log.warning("replica did not start", extra={"job": key[0], "replica": key[1], "error": str(exc)})
        except CarRunnerError as exc:
            log.warning("replica did not start", extra={"job": key[0], "replica": key[1], "error": str(exc)})

    def _prepare_image(self, spec: CarJob) -> None:
        prepare_image(self.runner, spec)

    def _report_oom(self, key: tuple[int, int], status: ContainerStatus, spec: CarJob) -> None:
        """One warning per kill: a kill is one container's one exit, and rounds see it until a restart."""
        kill = (status.container_id, status.finished_at)
        if self._oom_reported.get(key) == kill:
            return
        self._oom_reported[key] = kill
        log.warning("replica OOM-killed", extra={
            "job": key[0], "replica": key[1], "container": status.container_id[:12],
            "memory_mb": spec.resources.memory_mb, "exit_code": status.exit_code, "restarts": status.restarts,
            # False with a 137 exit: podman on cgroup v1 never sets the flag (notes §1.5)
            "oom_flag": status.oom_killed})

    async def _engine(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
