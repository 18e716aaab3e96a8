"""Replicas behind the node's fronts: each version runs in its own container, and the node holds
the replica's TCP ports and hands new connections to the version that serves. WAR replicas
(``_runner_war``: a git checkout, built) and CAR replicas with TCP ports only
(``_runner_car_fronted``: an image) share everything here:

- **fronts**: the replica's TCP ports are held by the node (``PortFront``), not by a container;
  the serving container publishes on loopback ports the engine picks;
- **rollout** of a version (the first one; each one the kind wants next: a new commit, a new
  spec revision from a rolling update): made ready (the kind's ``_prepare``), started as a new
  container beside the serving one, checked by the job's health check from the node (HTTP or TCP
  to the container's published port, a command by ``exec``; with none, the first port accepting
  a connection). Only once it is healthy do the fronts switch to it; the old version then gets
  up to ``DRAIN_S`` for its open connections and is removed. A version that fails to get ready
  or healthy is removed, the old one keeps serving, and it is not tried again until the wanted
  version or the spec changes (reported: ``failed``, and the spec revision in ``failed_revision``);
- **restarts**: a serving container that exits is started again by the job's restart policy and
  backoff;
- **adoption**: after a node restart, a running serving container of this replica (with its
  files, if its kind has any) serves again at once, and the replica carries on from it;
- **release**: when the node stops holding the replica (``release``, then cancel), its containers
  and files are removed; a node that merely stops leaves them running, to adopt them again.

Every engine call blocks (docker SDK) and runs in a worker thread, a few at a time.
"""

from __future__ import annotations

import collections
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio
from docker.errors import DockerException

from ._git import GitError
from ._jobspec import CarJob, CommandHealth, HttpHealth, TcpHealth, WarJob, revision_of
from ._keyed_tasks import KeyedTasks, stopped_on
from ._port_front import PortFront
from ._reconciler import ADOPT_GRACE_S
from ._runner_car import CarRunnerError, ContainerRequest, ContainerStatus, HealthCheck, ImageUnavailable
from ._runner_car import next_backoff as backoff_s
from ._runtime import Runtime
from ._scheduler import Plan
from ._trio_types import TaskStatus
from ._wire_claim import ReplicaState

log = logging.getLogger("deedmesh.runner")
T = TypeVar("T")
SpecT = TypeVar("SpecT", WarJob, CarJob)
R = TypeVar("R", bound="FrontedReplica[Any]")
DRAIN_S = 10.0  # the longest an old version keeps its open connections after the switch
READY_WITHOUT_HEALTH_S = 30.0  # with no health check: how long the first port may take to accept
RETRY_S = 5.0  # a replica that stopped on an engine or disk error starts over after this
ENGINE_THREADS = 4  # engine calls at once per supervisor (a WAR build holds one for its whole run)


class RolloutFailed(Exception):
    """A version could not be brought to serve (it could not be made ready, or never got healthy)."""


@dataclass(frozen=True)
class ReplicaReport:
    """How one replica behind the fronts is doing here, for the claim set and ``job status``."""

    state: ReplicaState
    restarts: int
    serving: str | None  # the version the fronts point at
    failed: str | None  # the last version whose rollout failed ...
    reason: str = ""  # ... and why
    revision: str | None = None  # the spec revision the serving version runs under
    failed_revision: str = ""  # the spec revision of the failed rollout ("": none)


async def http_ok(port: int, path: str, timeout_s: float) -> bool:
    """``GET path`` on 127.0.0.1:port answers 2xx or 3xx within ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
            parts = head.split(b" ", 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3")
        except (OSError, trio.BrokenResourceError):  # refused, or reset by the engine's proxy before the app listens
            return False
    return False


async def tcp_ok(port: int, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


class FrontedReplica(Generic[SpecT]):
    """Everything of one held replica behind the node's fronts (module docstring); ``run`` lives
    while it is held. A kind says what version it wants (``_wanted``), how one is made ready
    (``_prepare``) and run (``_request``), and where its files live (``_checkout``)."""

    kind = ""  # for logs

    def __init__(self, runner: Runtime, job_id: int, replica: int, spec: SpecT, work_dir: Path, *,
                 limiter: trio.CapacityLimiter, on_change: Callable[[], None] = lambda: None,
                 check_s: float = 2.0, counters: collections.Counter[str] | None = None) -> None:
        self.runner, self.job_id, self.replica = runner, job_id, replica
        self.spec: SpecT = spec
        # rollouts served, failed and interrupted, and restarts (shared by a supervisor's replicas)
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters
        self.dir = work_dir / f"{job_id}-{replica}"
        self.limiter, self.on_change, self.check_s = limiter, on_change, check_s
        self.fronts: dict[int, PortFront] = {}  # container port -> the node's front for it
        self.serving: ContainerStatus | None = None
        self.failed: tuple[str, str] | None = None  # (version, reason) of the last failed rollout
        self._failed_key: tuple[str, str] | None = None  # ... and the (version, revision) it was
        self._wake = trio.Event()  # the spec changed: poll now
        self.healthy: bool | None = None  # the serving version's last health verdict
        self._misses = 0  # health checks failed in a row
        self._retry_at = 0.0  # trio time the serving container may be restarted
        self._restarts = 0
        self._next_probe = 0.0  # trio time of the next health check of the serving version
        self.released = False  # the node no longer holds the replica: cancelling removes everything
        self.last_rollout: dict[str, Any] = {}  # the newest successful rollout: version, seconds per phase

    def release(self) -> None:
        """The node no longer holds this replica: once cancelled, its containers and checkouts go."""
        self.released = True

    def update_spec(self, spec: SpecT) -> bool:
        """Take a new spec without stopping (a rolling update, a scale): the next poll rolls out the
        wanted version under it if its revision changed. False if it cannot be taken in place (its
        ports changed: the fronts are the replica's), and the replica must start over."""
        if spec.ports != self.spec.ports:
            return False
        self.spec = spec
        self._wake.set()
        return True

    # ---------------------------------------------------------------- what a kind says
    def _poll_s(self) -> float:
        """How often to ask what version is wanted (a spec change wakes the replica at once)."""
        raise NotImplementedError

    async def _wanted(self) -> str | None:
        """The version wanted now, or None if that cannot be told now (tried again next poll)."""
        raise NotImplementedError

    async def _prepare(self, version: str, spec: SpecT, phases: dict[str, float]) -> tuple[str, Path | None]:
        """Make ``version`` ready to run under ``spec`` (the version it really got, and its files);
        ``RolloutFailed`` if it cannot be."""
        raise NotImplementedError

    def _request(self, version: str, checkout: Path | None, spec: SpecT) -> ContainerRequest:
        raise NotImplementedError

    def _checkout(self, version: str, revision: str | None) -> Path | None:
        """Where one version's files live for one revision of the spec (None: it has none)."""
        raise NotImplementedError

    def _prepare_image(self, spec: SpecT) -> None:
        """Pull the image the version runs by the spec's policy (blocking: an engine thread)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the replica
    def report(self) -> ReplicaReport:
        failed, reason = self.failed or (None, "")
        serving = self.serving
        if serving is None:
            state: ReplicaState = "starting"
        elif not serving.running:
            state = "oom-killed" if serving.likely_oom else "exited"
        elif self.healthy is None:
            state = "running"
        else:
            state = "healthy" if self.healthy else "unhealthy"
        # a revision counts as failed only if the replica could not move to it: a WAR commit whose
        # build broke under the revision already serving is the commit's failure, not the spec's
        revision = None if serving is None else serving.revision
        key = self._failed_key
        failed_revision = key[1] if key is not None and key[1] != revision else ""
        return ReplicaReport(state, self._restarts, None if serving is None else serving.version, failed, reason,
                             revision, failed_revision)

    def front_port(self, container_port: int) -> int | None:
        """The node port serving ``container_port`` (the spec's host port, or one the OS picked)."""
        front = self.fronts.get(container_port)
        return None if front is None else front.port

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                for port in self.spec.ports:
                    front = PortFront("0.0.0.0" if port.expose else "127.0.0.1", port.host or 0)
                    await nursery.start(front.run)
                    self.fronts[port.container] = front
                await self._adopt()
                task_status.started()
                await self._follow()
        finally:
            for front in self.fronts.values():
                front.switch(None)
            if self.released:
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    await self._remove_all()

    async def _follow(self) -> None:
        """Ask what is wanted every ``_poll_s``; check the serving container every ``check_s``."""
        next_poll = trio.current_time()
        while True:
            if trio.current_time() >= next_poll:
                next_poll = trio.current_time() + self._poll_s()
                await self._poll()
            await self._check()
            with trio.move_on_after(min(self.check_s, max(0.0, next_poll - trio.current_time()))):
                await self._wake.wait()
                self._wake = trio.Event()
                next_poll = trio.current_time()

    async def _poll(self) -> None:
        spec, version = self.spec, await self._wanted()
        if version is None:
            return
        wanted = (version, revision_of(spec))
        current = None if self.serving is None else self.serving.version
        if (self.serving is not None and (self.serving.version, self.serving.revision) == wanted) \
                or self._failed_key == wanted:
            return
        try:
            await self._roll_out(version, spec)
        except (RolloutFailed, ImageUnavailable) as exc:  # not tried again until the version wanted or the spec changes
            self.failed, self._failed_key = (version, str(exc)), wanted
            self.counters["rollouts_failed"] += 1
            log.warning("rollout failed; the previous version keeps serving",
                        extra=self._extra(version=version, serving=current, error=str(exc)))
            self.on_change()
        except (GitError, CarRunnerError, DockerException) as exc:  # the remote, registry or engine: next poll
            self.counters["rollouts_interrupted"] += 1
            log.warning("rollout interrupted; tried again at the next poll",
                        extra=self._extra(version=version, serving=current, error=str(exc)[:500]))

    async def _roll_out(self, version: str, spec: SpecT) -> None:
        revision, clock, phases = revision_of(spec), trio.current_time(), dict[str, float]()
        version, checkout = await self._prepare(version, spec, phases)
        await self._engine(self._prepare_image, spec)
        began = trio.current_time()
        started = await self._start(version, checkout, spec)
        phases["start_s"] = trio.current_time() - began
        if not await self._becomes_healthy(started):
            await self._engine(self.runner.remove, started.container_id)
            if checkout is not None:
                shutil.rmtree(checkout, ignore_errors=True)
            raise RolloutFailed(f"{version} did not become healthy")
        old = self.serving
        self._serve(started)
        phases["healthy_s"] = trio.current_time() - began - phases["start_s"]
        phases["total_s"] = trio.current_time() - clock
        self.last_rollout = {"version": version, "revision": revision,
                             **{k: round(v, 3) for k, v in phases.items()}}
        self.counters["rollouts_served"] += 1
        log.info("version serving", extra=self._extra(previous=None if old is None else old.version,
                                                      **self.last_rollout))
        if old is not None and old.container_id != started.container_id:
            await self._retire(old)

    async def _start(self, version: str, checkout: Path | None, spec: SpecT) -> ContainerStatus:
        request = self._request(version, checkout, spec)
        container_id = await self._engine(self.runner.start, request)
        status = await self._engine(self.runner.inspect, container_id)
        if status is None:
            raise CarRunnerError(f"{version}'s container vanished as it started")
        return status

    def _serve(self, status: ContainerStatus) -> None:
        """Point every front at ``status``'s published ports."""
        self.serving, self._misses, self.failed, self._failed_key = status, 0, None, None
        self.healthy = True if self.spec.health is not None else None  # it passed its check to get here
        for port, front in self.fronts.items():
            published = status.host_port(port)
            front.switch(None if published is None else ("127.0.0.1", published))
        self.on_change()

    async def _retire(self, old: ContainerStatus) -> None:
        """The old version gets ``DRAIN_S`` for the connections it still has, then goes."""
        with trio.move_on_after(DRAIN_S):
            for port, front in self.fronts.items():
                published = old.host_port(port)
                if published is not None:
                    await front.drained(("127.0.0.1", published))
        await self._engine(self.runner.remove, old.container_id)
        serving = self.serving
        if old.version is not None and (serving is None or (old.version, old.revision)
                                        != (serving.version, serving.revision)) \
                and (files := self._checkout(old.version, old.revision)) is not None:
            shutil.rmtree(files, ignore_errors=True)

    async def _becomes_healthy(self, status: ContainerStatus) -> bool:
        health = self.spec.health
        if health is None:
            deadline, interval = trio.current_time() + READY_WITHOUT_HEALTH_S, 0.2
        else:  # its start period, then as many checks as the spec allows to fail, and one more
            deadline = trio.current_time() + health.start_period_s + (health.retries + 1) * health.interval_s
            interval = min(1.0, float(health.interval_s))
        while trio.current_time() < deadline:
            current = await self._engine(self.runner.inspect, status.container_id)
            if current is None or not current.running:
                return False
            if await self._probe(current):
                return True
            await trio.sleep(interval)
        return False

    async def _probe(self, status: ContainerStatus) -> bool:
        """The job's health check against one container, from the node where a port is published."""
        health = self.spec.health
        if health is None:
            first = next(iter(status.ports), None)
            return first is None or await tcp_ok(first.host_port, 2.0)
        if isinstance(health, HttpHealth) and (port := status.host_port(health.port)) is not None:
            return await http_ok(port, health.path, health.timeout_s)
        if isinstance(health, TcpHealth) and (port := status.host_port(health.port)) is not None:
            return await tcp_ok(port, health.timeout_s)
        if isinstance(health, HttpHealth):
            check = HealthCheck.http(health.port, health.path)
        elif isinstance(health, TcpHealth):
            check = HealthCheck.tcp(health.port)
        else:
            assert isinstance(health, CommandHealth)
            check = HealthCheck.command(tuple(health.argv))
        return await self._engine(self.runner.exec_ok, status.container_id, check.test, health.timeout_s)

    async def _check(self) -> None:
        """The serving container: still running and healthy? Restart it by the policy if it exited."""
        if self.serving is None:
            return
        before = self.report()
        current = await self._engine(self.runner.inspect, self.serving.container_id)
        if current is not None and current.running:
            self.serving = current
            health = self.spec.health
            if health is not None and trio.current_time() >= self._next_probe:  # every interval_s
                self._next_probe = trio.current_time() + health.interval_s
                if await self._probe(current):
                    self.healthy, self._misses = True, 0
                else:
                    self._misses += 1
                    self.healthy = self._misses < health.retries
        else:
            self.serving = current or self.serving  # exited (a vanished one counts as a failure)
            exit_code = None if current is None else current.exit_code
            policy = self.spec.restart.policy
            wants = policy == "always" or (policy == "on-failure" and exit_code != 0)
            if self.serving.revision != revision_of(self.spec):
                self._wake.set()  # under an older spec: the poll rolls out the current one instead
            elif wants and trio.current_time() >= self._retry_at:
                b = self.spec.restart.backoff
                self._retry_at = trio.current_time() + backoff_s(self._restarts, b.initial_s, b.max_s, b.multiplier)
                self._restarts += 1
                self.counters["restarts"] += 1
                version = self.serving.version
                assert version is not None
                try:
                    self._serve(await self._start(version, self._checkout(version, self.serving.revision),
                                                  self.spec))
                except (CarRunnerError, DockerException) as exc:
                    log.warning("serving version did not restart", extra=self._extra(error=str(exc)[:500]))
        if self.report() != before:
            self.on_change()

    async def _adopt(self) -> None:
        """A running serving container of this replica, left by a node restart, serves again; the rest goes."""
        mine = [s for s in await self._engine(self.runner.list_managed)
                if (s.job_id, s.replica) == (self.job_id, self.replica)]
        keep = next((s for s in mine if s.role == "serve" and s.running and s.version is not None
                     and ((files := self._checkout(s.version, s.revision)) is None or files.is_dir())), None)
        for status in mine:
            if status is not keep:
                await self._engine(self.runner.remove, status.container_id)
        for path in self.dir.iterdir():
            if keep is None or keep.version is None or path != self._checkout(keep.version, keep.revision):
                shutil.rmtree(path, ignore_errors=True)
        if keep is not None:
            log.info("adopted a running version", extra=self._extra(version=keep.version))
            self._serve(keep)

    async def _remove_all(self) -> None:
        try:
            for status in await self._engine(self.runner.list_managed):
                if (status.job_id, status.replica) == (self.job_id, self.replica):
                    await self._engine(self.runner.remove, status.container_id)
        except (DockerException, OSError, CarRunnerError) as exc:
            log.warning("could not remove a released replica's containers", extra=self._extra(error=str(exc)))
        shutil.rmtree(self.dir, ignore_errors=True)
        self.serving = None

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {"job": self.job_id, "replica": self.replica, "kind": self.kind, **fields}

    async def _engine(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)


class FrontedSupervisor(Generic[SpecT, R]):
    """One replica task per replica of its kind the newest plan holds; a released one is cancelled
    (which removes its containers). A replica takes a new spec in place (``update_spec``) unless its
    ports changed (then it starts over); one that stopped on an engine or disk error starts over
    after ``RETRY_S``."""

    def __init__(self, runner: Runtime, work_dir: Path, on_change: Callable[[], None] = lambda: None, *,
                 check_s: float = 2.0, sweep_after_s: float = ADOPT_GRACE_S) -> None:
        self.runner, self.work_dir, self.on_change, self.check_s = runner, work_dir, on_change, check_s
        self.sweep_after_s = sweep_after_s
        self.counters: collections.Counter[str] = collections.Counter()  # every replica's, since the node started
        self._limiter = trio.CapacityLimiter(ENGINE_THREADS)
        self.replicas: KeyedTasks[tuple[int, int], SpecT, R] = KeyedTasks(
            self._make, self._run_one, on_drop=lambda r: r.release(), on_update=lambda r, spec: r.update_spec(spec))

    def mine(self, spec: object) -> SpecT | None:
        """``spec`` if this supervisor runs replicas of it, else None."""
        raise NotImplementedError

    def _make(self, key: tuple[int, int], spec: SpecT) -> R:
        raise NotImplementedError

    def offer(self, plan: Plan) -> None:
        """The newest plan (called by the scheduler on every plan; never blocks)."""
        self.replicas.want({(job_id, replica): spec for job_id, replica in plan.holding.items()
                            if (spec := self.mine(plan.specs.get(job_id))) is not None})

    def logs(self, job_id: int, replica: int, tail: int = 100) -> str | None:
        """A replica's log for ``job logs`` (blocking): the serving version's output, after a line
        on a failed rollout if there was one; None if this supervisor does not run the replica."""
        war = self.replicas.get((job_id, replica))
        if war is None:
            return None
        note = "" if war.failed is None else f"[deedmesh] rollout of {war.failed[0]} failed: {war.failed[1]}\n"
        serving = war.serving
        return note + ("" if serving is None else self.runner.logs(job_id, replica, tail, serving.container_id))

    def revision_of(self, job_id: int, replica: int) -> tuple[str, ReplicaState, str] | None:
        """The spec revision a held replica's serving version runs under, its state and a revision
        it failed to roll out; None if it serves nothing yet (or is not this supervisor's)."""
        report = self.report(job_id, replica)
        if report is None or (report.revision is None and not report.failed_revision):
            return None
        return report.revision or "", report.state, report.failed_revision

    def endpoints(self, job_id: int, replica: int) -> dict[int, int]:
        """Container port -> the node port its front holds, for a replica this supervisor runs."""
        held = self.replicas.get((job_id, replica))
        return {} if held is None else {c: front.port for c, front in held.fronts.items()}

    def versions(self, job_id: int, replica: int) -> tuple[str, str] | None:
        """(version serving, version whose rollout failed) of a replica it runs, for the claim set."""
        report = self.report(job_id, replica)
        return None if report is None else (report.serving or "", report.failed or "")

    def report(self, job_id: int, replica: int) -> ReplicaReport | None:
        war = self.replicas.get((job_id, replica))
        return None if war is None else war.report()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.replicas.run)
            task_status.started()
            await trio.sleep(self.sweep_after_s)
            self.sweep()

    def sweep(self) -> list[str]:
        """Remove the checkouts of replicas this node does not run (left by a node that stopped,
        of a replica that moved meanwhile: its containers are the reconciler's to remove). Once,
        when a restarted node has had the time to learn what it holds; what it removed."""
        if not self.work_dir.is_dir():
            return []
        held = {f"{job_id}-{replica}" for job_id, replica in self.replicas.items}
        gone = sorted(d.name for d in self.work_dir.iterdir() if d.name not in held)
        for name in gone:
            shutil.rmtree(self.work_dir / name, ignore_errors=True)
        if gone:
            log.info("removed checkouts of replicas this node does not run", extra={"replicas": gone})
        return gone

    async def _run_one(self, war: R) -> None:
        def say(error: BaseException) -> None:  # the engine or the disk failed: a node outlives it
            log.warning("a replica stopped on an error; it starts over",
                        extra=war._extra(error=str(error)[:500], retry_s=RETRY_S))

        await stopped_on((DockerException, OSError, CarRunnerError), war.run, say, RETRY_S)
