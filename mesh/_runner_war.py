"""The WAR runner: one job replica = a git checkout, built and run in the job's toolchain image.

A ``WarReplica`` is a replica behind the node's fronts (``_fronted``: fronts, rollouts beside the
serving version, health, restarts, adoption, release). What WAR adds:

- the version wanted is the branch's commit (its first 12 hex digits), read every ``poll_s``;
- a version is made ready as a shallow checkout into ``<work>/<job>-<replica>/<commit>-<revision>``
  (one per spec revision: the build may depend on the spec's env, and a new revision is built
  beside the serving one) and the ``build`` command run as a one-off container with the checkout
  mounted read-write at ``/app``; then the ``run`` command serves it with the checkout read-only.
  A build that fails (non-zero exit or over ``build_timeout_s``) fails the rollout;
- a restarted node adopts a running version only if its checkout is still on disk.

Git calls run in worker threads (``_git``); a build holds an engine thread for as long as it runs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import trio

from ._fronted import (  # noqa: F401  (the names tests and scripts know this module by)
    DRAIN_S,
    READY_WITHOUT_HEALTH_S,
    RETRY_S,
    FrontedReplica,
    FrontedSupervisor,
    ReplicaReport,
    RolloutFailed,
    http_ok,
    tcp_ok,
)
from ._git import GitError, fetch_checkout, remote_commit
from ._jobspec import WarJob, revision_of
from ._runner_car import ContainerRequest, Mount, PortMapping

log = logging.getLogger("deedmesh.runner")
PIDS_LIMIT = 256
APP_DIR = "/app"  # where the checkout is mounted in the build and run containers
VERSION_LEN = 12  # a commit id's first 12 hex digits name a version (containers, checkouts, claim sets)


WarReport = ReplicaReport  # what a WAR replica reports (``_fronted.ReplicaReport``)


def version_of(commit: str) -> str:
    return commit[:VERSION_LEN]


def serve_request(job_id: int, replica: int, spec: WarJob, version: str, checkout: Path) -> ContainerRequest:
    """The container that runs one version of a WAR replica: every port on a loopback port the
    engine picks (the node's fronts hold the job's own ports)."""
    return ContainerRequest(
        job_id=job_id, replica=replica, image=spec.war.image, command=tuple(spec.war.run), env=dict(spec.env),
        ports=tuple(PortMapping(p.container, "tcp", None) for p in spec.ports),
        cpu_millis=spec.resources.cpu_millis, memory_mb=spec.resources.memory_mb, pids_limit=PIDS_LIMIT,
        labels={"deedmesh.name": spec.name}, version=version, mounts=(Mount(str(checkout), APP_DIR, True),),
        workdir=APP_DIR, revision=revision_of(spec))


def build_request(job_id: int, replica: int, spec: WarJob, version: str, checkout: Path) -> ContainerRequest:
    """The one-off container that builds one version in its checkout."""
    assert spec.war.build is not None
    return ContainerRequest(
        job_id=job_id, replica=replica, image=spec.war.image, command=tuple(spec.war.build), env=dict(spec.env),
        cpu_millis=spec.resources.cpu_millis, memory_mb=spec.resources.memory_mb, pids_limit=PIDS_LIMIT,
        labels={"deedmesh.name": spec.name}, version=version, mounts=(Mount(str(checkout), APP_DIR, False),),
        workdir=APP_DIR, role="build", revision=revision_of(spec))


class WarReplica(FrontedReplica[WarJob]):
    """One held WAR replica on this node (module docstring)."""

    kind = "war"

    def _poll_s(self) -> float:
        return float(self.spec.war.poll_s)

    async def _wanted(self) -> str | None:
        war = self.spec.war
        try:
            return version_of(await trio.to_thread.run_sync(remote_commit, war.repo, war.ref))
        except GitError as exc:
            log.warning("cannot read the replica's branch", extra=self._extra(error=str(exc)))
            return None

    async def _prepare(self, version: str, spec: WarJob, phases: dict[str, float]) -> tuple[str, Path | None]:
        """The checkout of ``version`` (fetched and built unless one is on disk already: a failed
        build removes its own)."""
        war, revision, clock = spec.war, revision_of(spec), trio.current_time()
        checkout = self.dir / f"{version}-{revision}"
        if not checkout.exists():  # a checkout on disk was built (a failed build removes its own)
            staging = self.dir / f".fetch-{version}"
            shutil.rmtree(staging, ignore_errors=True)
            # the branch may have moved since the poll: the version is what the fetch got
            version = version_of(await trio.to_thread.run_sync(fetch_checkout, war.repo, war.ref, staging))
            checkout = self.dir / f"{version}-{revision}"
            shutil.rmtree(checkout, ignore_errors=True)
            staging.rename(checkout)
            phases["fetch_s"] = trio.current_time() - clock
            if war.build is not None:
                await self._engine(self._prepare_image, spec)
                code, tail = await self._engine(self.runner.run_to_end, build_request(
                    self.job_id, self.replica, spec, version, checkout), war.build_timeout_s)
                if code != 0:
                    shutil.rmtree(checkout, ignore_errors=True)
                    last = tail.strip().splitlines()[-1:] or [""]
                    raise RolloutFailed(f"build of {version} exited {code}: {last[0][:300]}" if code is not None
                                        else f"build of {version} ran over build_timeout_s={war.build_timeout_s}")
                phases["build_s"] = trio.current_time() - clock - phases["fetch_s"]
        return version, checkout

    def _request(self, version: str, checkout: Path | None, spec: WarJob) -> ContainerRequest:
        assert checkout is not None
        return serve_request(self.job_id, self.replica, spec, version, checkout)

    def _checkout(self, version: str, revision: str | None) -> Path | None:
        return self.dir / (version if revision is None else f"{version}-{revision}")

    def _prepare_image(self, spec: WarJob) -> None:
        if spec.war.pull != "never":
            self.runner.ensure_image(spec.war.image, pull=spec.war.pull)


class WarSupervisor(FrontedSupervisor[WarJob, WarReplica]):
    """One ``WarReplica`` task per WAR replica the newest plan holds (``_fronted.FrontedSupervisor``)."""

    def mine(self, spec: object) -> WarJob | None:
        return spec if isinstance(spec, WarJob) else None

    def _make(self, key: tuple[int, int], spec: WarJob) -> WarReplica:
        return WarReplica(self.runner, *key, spec, self.work_dir, limiter=self._limiter, on_change=self.on_change,
                          check_s=self.check_s, counters=self.counters)
