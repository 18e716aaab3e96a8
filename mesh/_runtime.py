"""The runtime seam: what a replica runner asks of whatever runs its processes.

``WarReplica`` builds and serves a checkout through these calls only, so it runs unchanged on a
container engine (``CarRunner``, ``_runner_car``) or as plain processes on a node with no engine
(``NativeRunner``, ``_runner_native``). Both satisfy ``Runtime`` structurally; neither inherits it.

Every call blocks (an engine API call, a process spawn, a wait) and is made from a worker thread
(``trio.to_thread.run_sync``). Requests and statuses are the container types of ``_runner_car``:
a native runtime maps them onto processes (``ContainerStatus.container_id`` is then its process id,
``image`` is ignored, the mount at ``workdir`` is the working directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._runner_car import ContainerRequest, ContainerStatus, PullPolicy, RegistryCredentials


@runtime_checkable
class Runtime(Protocol):
    """Runs ``ContainerRequest``s for one node: a serving replica, a one-off build, a health check."""

    @property
    def node_address(self) -> str:
        """The node these workloads belong to (it names them and scopes ``list_managed``)."""
        ...

    def ensure_image(
        self,
        image: str,
        image_file: Path | str | None = None,
        *,
        pull: PullPolicy = "if-missing",
        credentials: RegistryCredentials | None = None,
    ) -> None:
        """Make ``image`` runnable here (a no-op where there are no images)."""
        ...

    def start(self, request: ContainerRequest) -> str:
        """Run the request and return its id; a running one of the same name and spec is adopted."""
        ...

    def inspect(self, container_id: str) -> ContainerStatus | None:
        """One workload by id (or name) as it is now, or None if there is none."""
        ...

    def remove(self, container_id: str, timeout_s: int = 10) -> bool:
        """SIGTERM, SIGKILL after ``timeout_s``, then forget it; False if there was nothing."""
        ...

    def run_to_end(self, request: ContainerRequest, timeout_s: float) -> tuple[int | None, str]:
        """Run a one-off to its end: (exit code or None on timeout, its last log lines); removed after."""
        ...

    def exec_ok(self, container_id: str, test: tuple[str, ...], timeout_s: float) -> bool:
        """A health check's test (``CMD`` argv or ``CMD-SHELL`` line) run beside the workload exits 0."""
        ...

    def list_managed(self) -> list[ContainerStatus]:
        """Every workload of this node, running or not, sorted by (job, replica)."""
        ...

    def logs(self, job_id: int, replica: int, tail: int = 100, container_id: str | None = None) -> str:
        """The last ``tail`` lines of a workload's output ("" if there is none)."""
        ...


if TYPE_CHECKING:  # mypy proves both runtimes fit the protocol; nothing runs here
    from ._runner_car import CarRunner
    from ._runner_native import NativeRunner

    def _both_fit(car: CarRunner, native: NativeRunner) -> tuple[Runtime, Runtime]:
        return car, native
