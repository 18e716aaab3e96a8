"""CAR replicas behind the node's fronts: a CAR job whose ports are all TCP runs each replica as a
``CarReplica`` (``_fronted``): the node holds the replica's ports, and a new spec revision (a
rolling update) starts in a new container beside the serving one and takes the connections once
it is healthy, so an update fails no request. A CAR job with a UDP port is run in place by the
``Reconciler`` (recreated on a change).

What CAR adds to ``_fronted``: the version wanted is the spec's revision (nothing to poll: a new
spec wakes the replica), a version is made ready by pulling its image by the job's policy (with
the registry login its reference names on this node), and it has no files of its own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ._fronted import FrontedReplica, FrontedSupervisor
from ._jobspec import CarJob, revision_of
from ._reconciler import container_request, prepare_image, runs_in_place
from ._runner_car import CarRunner, ContainerRequest, PortMapping

# a CAR replica has nothing to poll (a spec change wakes it); this only retries a rollout the
# engine interrupted
RETRY_POLL_S = 30.0


def fronted_request(job_id: int, replica: int, spec: CarJob, revision: str) -> ContainerRequest:
    """The container of one revision of a CAR replica: every port on a loopback port the engine
    picks (the node's fronts hold the job's own), named and labelled by its revision."""
    base = container_request(job_id, replica, spec)
    return replace(base, ports=tuple(PortMapping(p.container_port, p.protocol, None) for p in base.ports),
                   bind_address="127.0.0.1", version=revision, revision=revision)


class CarReplica(FrontedReplica[CarJob]):
    """One held CAR replica behind the node's fronts (module docstring)."""

    kind = "car"

    def _poll_s(self) -> float:
        return RETRY_POLL_S

    async def _wanted(self) -> str | None:
        return revision_of(self.spec)

    async def _prepare(self, version: str, spec: CarJob, phases: dict[str, float]) -> tuple[str, Path | None]:
        return revision_of(spec), None

    def _request(self, version: str, checkout: Path | None, spec: CarJob) -> ContainerRequest:
        return fronted_request(self.job_id, self.replica, spec, version)

    def _checkout(self, version: str, revision: str | None) -> Path | None:
        return None

    def _prepare_image(self, spec: CarJob) -> None:
        assert isinstance(self.runner, CarRunner)  # a CAR replica needs the engine
        prepare_image(self.runner, spec)


class CarSupervisor(FrontedSupervisor[CarJob, CarReplica]):
    """One ``CarReplica`` task per replica of a TCP-only CAR job the newest plan holds."""

    def mine(self, spec: object) -> CarJob | None:
        return spec if isinstance(spec, CarJob) and not runs_in_place(spec) else None

    def _make(self, key: tuple[int, int], spec: CarJob) -> CarReplica:
        return CarReplica(self.runner, *key, spec, self.work_dir, limiter=self._limiter, on_change=self.on_change,
                          check_s=self.check_s, counters=self.counters)
