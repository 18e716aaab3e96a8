"""The CAR runner: one job replica = one container, driven through the Docker Engine API.

It knows nothing of job specs (those models map onto ``ContainerRequest``) and nothing of trio:
every method is a blocking docker SDK call, so trio code calls it through
``trio.to_thread.run_sync`` (see ``mesh._engine``).

Containers are found again by name and labels, never by memory, so a node that restarts adopts
what it left running:

* name: ``deedmesh-<node>-<job>-<replica>``, deterministic, so a second ``start`` (or a restarted
  node) finds the existing container instead of creating a duplicate; the engine refuses a second
  container of the same name even under a race;
* labels: ``deedmesh.job``, ``deedmesh.replica``, ``deedmesh.node``, plus ``deedmesh.spec`` (a hash
  of the request, to notice a changed spec) and ``deedmesh.restarts`` (how often we recreated it).

Restarts are the node's decision, not the engine's (no Docker restart policy): the engine's policy
cannot back off beyond its fixed schedule, cannot see the mesh, and behaves differently on podman.
The reconcile loop that owns this runner does, for every replica it holds a claim on::

    status = runner.status(job_id, replica)          # None: not there at all
    if status is None or not status.running:
        attempt = 0 if status is None else status.restarts
        delay_s = next_backoff(attempt, initial_s=1.0, max_s=300.0, multiplier=2.0)
        ... wait delay_s on the trio clock since status.finished_at, then:
        runner.start(request)                        # recreates it, restarts + 1

and ``runner.list_managed()`` on start-up to adopt (or stop) containers whose claims it no longer holds.

Images come from the engine's store, a docker-archive file, or a registry (``ensure_image``); a
registry login is passed per pull (``RegistryCredentials``, the Engine API's ``X-Registry-Auth``)
and never written to the engine's or the user's credential store.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import docker
import requests
from docker.errors import APIError, NotFound
from docker.models.containers import Container
from docker.types import Healthcheck
from docker.utils import parse_repository_tag

from ._errors import MeshError

LABEL_JOB = "deedmesh.job"
LABEL_REPLICA = "deedmesh.replica"
LABEL_NODE = "deedmesh.node"
LABEL_SPEC = "deedmesh.spec"
LABEL_RESTARTS = "deedmesh.restarts"
LABEL_VERSION = "deedmesh.version"  # a WAR replica's commit: its old and new versions run side by side in a rollout
LABEL_ROLE = "deedmesh.role"  # "serve" (the replica itself), or a one-off: "build" (WAR), "shard" or "aggregate"
LABEL_REVISION = "deedmesh.revision"  # the job spec's revision the container runs (``_rollout``)
_RESERVED_LABELS = frozenset({LABEL_JOB, LABEL_REPLICA, LABEL_NODE, LABEL_SPEC, LABEL_RESTARTS, LABEL_VERSION,
                              LABEL_ROLE, LABEL_REVISION})
_NS_PER_S = 1_000_000_000
# Exit status of a SIGKILLed process: with a memory limit set it is most likely the OOM killer,
# which matters on podman + runc + cgroup v1, where State.OOMKilled stays false (notes §1.5).
_SIGKILL_EXIT = 137


class CarRunnerError(MeshError):
    """The engine refused or failed a CAR operation."""


class ImageUnavailable(CarRunnerError):
    """An image could be neither found locally, loaded from a file, nor pulled."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"image {image}: {reason}")
        self.image = image
        self.reason = reason


PullPolicy = Literal["always", "if-missing"]  # a job spec's ``pull: never`` means: do not call ensure_image


@dataclass(frozen=True)
class RegistryCredentials:
    """A registry login for one pull; the password stays out of ``repr`` (and so out of logs)."""

    username: str
    password: str = field(repr=False)

    def to_docker(self) -> dict[str, str]:
        """The SDK's ``auth_config``: sent base64-encoded in the ``X-Registry-Auth`` header of the pull."""
        return {"username": self.username, "password": self.password}


class PortMapping(NamedTuple):
    """A published port; ``host_port=None`` lets the engine pick a free one (read it from status)."""

    container_port: int
    protocol: str = "tcp"
    host_port: int | None = None


class PortBinding(NamedTuple):
    """Where a container port ended up on the host."""

    container_port: int
    protocol: str
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class HealthCheck:
    """A Docker health check; the test command runs inside the container, so the image needs the tool."""

    test: tuple[str, ...]
    interval_s: float = 5.0
    timeout_s: float = 3.0
    retries: int = 3
    start_period_s: float = 0.0

    @classmethod
    def http(cls, port: int, path: str = "/", **timing: Any) -> HealthCheck:
        """GET http://127.0.0.1:<port><path> with wget (busybox and most distro images have it)."""
        return cls(("CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}{path}"), **timing)

    @classmethod
    def tcp(cls, port: int, **timing: Any) -> HealthCheck:
        """A TCP connect with nc (busybox nc has no -z; with stdin at EOF it exits 0 once connected)."""
        return cls(("CMD-SHELL", f"nc -w 2 127.0.0.1 {int(port)} </dev/null >/dev/null"), **timing)

    @classmethod
    def command(cls, argv: tuple[str, ...], **timing: Any) -> HealthCheck:
        """Any command; exit 0 means healthy."""
        return cls(("CMD", *argv), **timing)

    def to_docker(self) -> Healthcheck:
        """The engine wants nanoseconds."""
        return Healthcheck(
            test=list(self.test),
            interval=int(self.interval_s * _NS_PER_S),
            timeout=int(self.timeout_s * _NS_PER_S),
            retries=self.retries,
            start_period=int(self.start_period_s * _NS_PER_S),
        )


class Mount(NamedTuple):
    """A host directory bound into the container (a WAR checkout at /app)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerRequest:
    """Everything needed to run one replica of a CAR job on this node."""

    job_id: int
    replica: int
    image: str
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[PortMapping, ...] = ()
    cpu_millis: int | None = None
    memory_mb: int | None = None
    pids_limit: int | None = None
    health: HealthCheck | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Loopback by default: a workload is exposed beyond the node only on purpose.
    bind_address: str = "127.0.0.1"
    stop_timeout_s: int = 10
    # WAR: the commit this container runs (part of its name, so two versions can run at once),
    # the checkout it mounts, where the command runs, and whether it serves or builds
    version: str | None = None
    mounts: tuple[Mount, ...] = ()
    workdir: str | None = None
    role: Literal["serve", "build", "shard", "aggregate"] = "serve"
    # the job spec's revision (``_jobspec.revision_of``): what a rolling update tells apart
    revision: str | None = None

    def __post_init__(self) -> None:
        clash = _RESERVED_LABELS & set(self.labels)
        if clash:
            raise ValueError(f"labels {sorted(clash)} are reserved for the runner")
        if self.job_id < 0 or self.replica < 0:
            raise ValueError("job_id and replica must be >= 0")
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "ports", tuple(PortMapping(*p) for p in self.ports))
        object.__setattr__(self, "mounts", tuple(Mount(*m) for m in self.mounts))
        if self.version is not None and not (self.version.isalnum() and len(self.version) <= 40):
            raise ValueError("a version is up to 40 letters and digits (a commit id)")
        if self.revision is not None and not (self.revision.isalnum() and len(self.revision) <= 16):
            raise ValueError("a revision is up to 16 letters and digits")

    @property
    def name_suffix(self) -> str:
        """What sets this container's name apart from the replica's plain one (a versioned one's
        revision too: one commit runs under two revisions of the spec during an update)."""
        revision = None if self.version is None or self.revision == self.version else self.revision
        return "".join(f"-{part}" for part in (None if self.role == "serve" else self.role, self.version, revision)
                       if part)

    def spec_hash(self) -> str:
        """A digest of the request, stored as a label so ``start`` can tell "same" from "changed"."""
        body = {
            "image": self.image,
            "command": self.command,
            "env": sorted(self.env.items()),
            "ports": [list(p) for p in self.ports],
            "cpu_millis": self.cpu_millis,
            "memory_mb": self.memory_mb,
            "pids_limit": self.pids_limit,
            "health": None if self.health is None else asdict(self.health),
            "labels": sorted(self.labels.items()),
            "bind_address": self.bind_address,
            "version": self.version,
            "mounts": [list(m) for m in self.mounts],
            "workdir": self.workdir,
            "role": self.role,
            "revision": self.revision,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ContainerStatus:
    """What the engine says about one managed container, flattened from ``docker inspect``."""

    container_id: str
    name: str
    job_id: int
    replica: int
    state: str  # created, running, restarting, exited, paused, dead, removing
    running: bool
    health: str | None  # None without a health check; else starting, healthy or unhealthy
    exit_code: int | None  # None while it has not exited
    oom_killed: bool  # the engine's State.OOMKilled
    memory_limited: bool
    restarts: int  # our recreations (deedmesh.restarts) plus the engine's own RestartCount
    spec_hash: str
    started_at: str
    finished_at: str
    ports: tuple[PortBinding, ...]
    version: str | None = None  # LABEL_VERSION, for WAR containers
    role: str = "serve"  # LABEL_ROLE
    revision: str | None = None  # LABEL_REVISION

    @property
    def likely_oom(self) -> bool:
        """OOMKilled, or SIGKILLed with a memory limit set (podman on cgroup v1 never sets the flag)."""
        return self.oom_killed or (self.memory_limited and self.exit_code == _SIGKILL_EXIT)

    def host_port(self, container_port: int, protocol: str = "tcp") -> int | None:
        """The host port a container port was published on, or None."""
        for binding in self.ports:
            if binding.container_port == container_port and binding.protocol == protocol:
                return binding.host_port
        return None


def next_backoff(attempt: int, initial_s: float, max_s: float, multiplier: float) -> float:
    """Delay before restart number ``attempt + 1``: ``initial_s * multiplier**attempt``, capped at ``max_s``.

    Pure and deterministic so every caller (and test) gets the same schedule; computed in log space
    so a huge attempt count cannot overflow.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if initial_s < 0 or max_s < initial_s:
        raise ValueError("need 0 <= initial_s <= max_s")
    if multiplier < 1:
        raise ValueError("multiplier must be >= 1")
    if initial_s == 0 or multiplier == 1:
        return float(initial_s)
    if attempt * math.log(multiplier) >= math.log(max_s / initial_s):
        return float(max_s)
    return min(float(max_s), initial_s * multiplier**attempt)


def container_name(node_address: str, job_id: int, replica: int, suffix: str = "") -> str:
    """Deterministic per (node, job, replica) and, for WAR, version and role (``suffix``): engines
    sharing storage see one namespace (notes §4)."""
    node = "".join(c for c in node_address.lower() if c.isalnum()) or "node"
    return f"deedmesh-{node}-{job_id}-{replica}{suffix}"


def parse_status(attrs: Mapping[str, Any]) -> ContainerStatus:
    """Flatten an inspect document; tolerant of the fields podman's compat API leaves out."""
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    host_config = attrs.get("HostConfig") or {}
    running = bool(state.get("Running"))
    status = str(state.get("Status", "unknown"))
    exited = not running and status in ("exited", "dead")
    health = (state.get("Health") or {}).get("Status") or None
    return ContainerStatus(
        container_id=str(attrs.get("Id", "")),
        name=str(attrs.get("Name", "")).lstrip("/"),
        job_id=int(labels.get(LABEL_JOB, -1)),
        replica=int(labels.get(LABEL_REPLICA, -1)),
        state=status,
        running=running,
        health=health,
        exit_code=int(state.get("ExitCode", 0)) if exited else None,
        oom_killed=bool(state.get("OOMKilled")),
        memory_limited=bool(host_config.get("Memory")),
        restarts=int(labels.get(LABEL_RESTARTS, 0)) + int(attrs.get("RestartCount") or 0),
        spec_hash=str(labels.get(LABEL_SPEC, "")),
        started_at=str(state.get("StartedAt", "")),
        finished_at=str(state.get("FinishedAt", "")),
        ports=_parse_ports((attrs.get("NetworkSettings") or {}).get("Ports") or {}),
        version=labels.get(LABEL_VERSION) or None,
        role=str(labels.get(LABEL_ROLE, "serve")),
        revision=labels.get(LABEL_REVISION) or None,
    )


def _parse_ports(ports: Mapping[str, Any]) -> tuple[PortBinding, ...]:
    found = []
    for key, bindings in sorted(ports.items()):
        port, _, protocol = key.partition("/")
        for binding in bindings or ():
            if binding.get("HostPort"):
                found.append(
                    PortBinding(int(port), protocol or "tcp", binding.get("HostIp", ""), int(binding["HostPort"]))
                )
    return tuple(found)


class CarRunner:
    """Runs ``ContainerRequest``s on one engine on behalf of one node (all calls block)."""

    def __init__(self, client: docker.DockerClient, node_address: str) -> None:
        self._client = client
        self._node = node_address

    @property
    def node_address(self) -> str:
        return self._node

    def ensure_image(
        self,
        image: str,
        image_file: Path | str | None = None,
        *,
        pull: PullPolicy = "if-missing",
        credentials: RegistryCredentials | None = None,
    ) -> None:
        """Make ``image`` present: loaded from ``image_file`` if one is given, else pulled.

        ``if-missing`` keeps a copy already in the engine; ``always`` loads or pulls anew (a tag
        moved in the registry is picked up), and a failed pull then fails even with a local copy,
        as it does in Kubernetes and Compose: "always" promises the registry's current image.
        ``credentials`` log in to the image's registry for this pull only.
        """
        if pull == "if-missing" and self._has_image(image):
            return
        if image_file is not None:
            with open(image_file, "rb") as archive:
                try:
                    self._client.images.load(archive)
                except APIError as exc:
                    raise ImageUnavailable(image, f"loading {image_file} failed: {exc.explanation or exc}") from exc
            if not self._has_image(image):
                raise ImageUnavailable(image, f"{image_file} does not contain it")
            return
        self._pull(image, credentials)

    def start(self, request: ContainerRequest) -> str:
        """Run the replica and return its container id; adopts a running container of the same spec.

        A stopped container, or one of another spec, is removed and created anew; a stopped one
        with the same spec counts as a restart (``deedmesh.restarts`` + 1). ``ImageUnavailable``
        before anything is removed if the engine lacks the image.
        """
        name = container_name(self._node, request.job_id, request.replica, request.name_suffix)
        restarts = 0
        existing = self._find(name)
        if existing is not None:
            current = parse_status(existing.attrs)
            if current.running and current.spec_hash == request.spec_hash():
                return current.container_id
            if not self._has_image(request.image):  # a running replica is not given up for nothing
                raise ImageUnavailable(request.image, "not present; call ensure_image first")
            restarts = current.restarts + 1 if current.spec_hash == request.spec_hash() else 0
            self._remove(existing, request.stop_timeout_s)
        return self._create_and_start(request, name, restarts)

    def stop(self, job_id: int, replica: int, timeout_s: int = 10) -> bool:
        """Stop (SIGTERM, then SIGKILL after ``timeout_s``) and remove; False if there was nothing."""
        existing = self._find(container_name(self._node, job_id, replica))
        if existing is None:
            return False
        self._remove(existing, timeout_s)
        return True

    def remove(self, container_id: str, timeout_s: int = 10) -> bool:
        """Stop and remove one container by id (any of this node's, of any version); False if gone."""
        found = self._find(container_id)
        if found is None:
            return False
        self._remove(found, timeout_s)
        return True

    def inspect(self, container_id: str) -> ContainerStatus | None:
        """One container by id or name as the engine sees it now, or None."""
        found = self._find(container_id)
        return None if found is None else parse_status(found.attrs)

    def exec_ok(self, container_id: str, test: tuple[str, ...], timeout_s: float) -> bool:
        """A health check's test (``CMD`` argv or ``CMD-SHELL`` line) run inside the container exits 0;
        the command runs under ``timeout`` so a stuck check ends."""
        found = self._find(container_id)
        if found is None:
            return False
        kind, *rest = test
        argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
        try:
            result = found.exec_run(["timeout", str(max(1, math.ceil(timeout_s))), *argv])
        except APIError:
            return False
        return result.exit_code == 0

    def run_to_end(self, request: ContainerRequest, timeout_s: float) -> tuple[int | None, str]:
        """Run a one-off container (a WAR build) to its end: (exit code, its last 50 log lines); the
        exit code is None if it ran out of ``timeout_s`` and was killed. The container is removed."""
        code, _, tail = self._one_off(request, timeout_s, stdout_bytes=0, tail_lines=50, stderr=True)
        return code, tail

    def run_capture(self, request: ContainerRequest, timeout_s: float, max_bytes: int) -> tuple[int | None, bytes, str]:
        """Run a one-off container (a ChainDist shard) to its end: (exit code, up to ``max_bytes`` of
        its stdout, the last 20 lines of its stderr). Removed afterwards."""
        return self._one_off(request, timeout_s, stdout_bytes=max_bytes, tail_lines=20, stderr=False)

    def _one_off(self, request: ContainerRequest, timeout_s: float, *, stdout_bytes: int, tail_lines: int,
                 stderr: bool) -> tuple[int | None, bytes, str]:
        name = container_name(self._node, request.job_id, request.replica, request.name_suffix)
        existing = self._find(name)
        if existing is not None:  # a build left from before a restart: start over
            self._remove(existing, 1)
        container = self._find(self._create_and_start(request, name, 0))
        if container is None:
            raise CarRunnerError(f"{name} vanished as it started")
        try:
            try:
                code: int | None = int(container.wait(timeout=timeout_s)["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):  # it took too long
                code = None
            out = container.logs(stdout=True, stderr=False)[:stdout_bytes] if stdout_bytes else b""
            raw = container.logs(stdout=stderr, stderr=True, tail=tail_lines)
            return code, out, raw.decode("utf-8", errors="replace")
        finally:
            self._remove(container, 1)

    def status(self, job_id: int, replica: int) -> ContainerStatus | None:
        """The replica's container as the engine sees it now, or None if there is none."""
        existing = self._find(container_name(self._node, job_id, replica))
        return None if existing is None else parse_status(existing.attrs)

    def list_managed(self) -> list[ContainerStatus]:
        """Every container this node manages, running or not: the reconcile loop's source of truth."""
        # ignore_removed: the SDK lists, then inspects each; one removed in between is simply gone
        containers = self._client.containers.list(all=True, filters={"label": [f"{LABEL_NODE}={self._node}"]},
                                                  ignore_removed=True)
        return sorted((parse_status(c.attrs) for c in containers), key=lambda s: (s.job_id, s.replica))

    def logs(self, job_id: int, replica: int, tail: int = 100, container_id: str | None = None) -> str:
        """The last ``tail`` lines of stdout and stderr ("" if there is no container); by default of
        the replica's CAR container, or of the container ``container_id`` (a WAR version)."""
        existing = self._find(container_id or container_name(self._node, job_id, replica))
        if existing is None:
            return ""
        raw = existing.logs(stdout=True, stderr=True, tail=tail)
        return (
            raw.decode("utf-8", errors="replace")
            if isinstance(raw, bytes)
            else "".join(chunk.decode("utf-8", errors="replace") for chunk in raw)
        )

    # --- internals --------------------------------------------------------------------------------

    def _has_image(self, image: str) -> bool:
        try:
            self._client.images.get(image)
        except NotFound:
            return False
        return True

    def _pull(self, image: str, credentials: RegistryCredentials | None) -> None:
        repository, tag = parse_repository_tag(image)
        auth = None if credentials is None else credentials.to_docker()
        try:
            # The engine answers 200 and then streams progress: a failure half-way (a missing
            # layer, a denied blob) arrives as an "error" entry in the stream, not as an HTTP error.
            progress = self._client.api.pull(repository, tag=tag or "latest", stream=True, decode=True,
                                             auth_config=auth)
            errors = [str(entry["error"]) for entry in progress if isinstance(entry, dict) and entry.get("error")]
        except APIError as exc:
            # podman answers 404 (ImageNotFound), dockerd 500: both are APIError (notes §3).
            raise ImageUnavailable(image, f"pull failed: {exc.explanation or exc}") from exc
        if errors:
            raise ImageUnavailable(image, f"pull failed: {errors[-1]}")
        if not self._has_image(image):
            raise ImageUnavailable(image, "pull finished but the engine does not have the image")

    def _find(self, name: str) -> Container | None:
        try:
            return self._client.containers.get(name)
        except NotFound:
            return None

    def _remove(self, container: Container, timeout_s: int) -> None:
        try:
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=timeout_s)
            container.remove(force=True)
        except NotFound:
            pass  # already gone: removal is what we wanted
        except APIError as exc:
            # another remover got there first (a released replica's front and the reconciler, at
            # shutdown): the engine finishes that removal
            if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
                raise

    def _create_and_start(self, request: ContainerRequest, name: str, restarts: int) -> str:
        try:
            container = self._client.containers.create(name=name, **self._create_kwargs(request, restarts))
        except APIError as exc:
            if exc.status_code == 409:  # a concurrent start won the name: adopt that one
                found = self._find(name)
                if found is not None and found.id is not None:
                    return found.id
            if exc.status_code == 404:
                raise ImageUnavailable(request.image, "not present; call ensure_image first") from exc
            raise CarRunnerError(f"create {name}: {exc.explanation or exc}") from exc
        try:
            container.start()
        except APIError as exc:
            container.remove(force=True)
            raise CarRunnerError(f"start {name}: {exc.explanation or exc}") from exc
        assert container.id is not None
        return container.id

    def _create_kwargs(self, request: ContainerRequest, restarts: int) -> dict[str, Any]:
        labels = {
            **request.labels,
            LABEL_JOB: str(request.job_id),
            LABEL_REPLICA: str(request.replica),
            LABEL_NODE: self._node,
            LABEL_SPEC: request.spec_hash(),
            LABEL_RESTARTS: str(restarts),
            LABEL_ROLE: request.role,
            **({} if request.version is None else {LABEL_VERSION: request.version}),
            **({} if request.revision is None else {LABEL_REVISION: request.revision}),
        }
        kwargs: dict[str, Any] = {
            "image": request.image,
            "command": list(request.command) if request.command is not None else None,
            "environment": dict(request.env),
            "labels": labels,
            # tini as PID 1 forwards SIGTERM: busybox httpd as PID 1 ignores it (notes §1.5).
            "init": True,
            "restart_policy": {"Name": "no"},
            "ports": {
                f"{p.container_port}/{p.protocol}": (request.bind_address, p.host_port)
                if p.host_port is not None
                else (request.bind_address,)
                for p in request.ports
            },
        }
        if request.mounts:
            kwargs["volumes"] = {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
                                 for m in request.mounts}
        if request.workdir is not None:
            kwargs["working_dir"] = request.workdir
        if request.cpu_millis is not None:
            kwargs["nano_cpus"] = request.cpu_millis * 1_000_000
        if request.memory_mb is not None:
            kwargs["mem_limit"] = f"{request.memory_mb}m"
            # memory+swap = memory: the limit must mean OOM, not swapping, on boxes that have swap.
            kwargs["memswap_limit"] = f"{request.memory_mb}m"
        if request.pids_limit is not None:
            kwargs["pids_limit"] = request.pids_limit
        if request.health is not None:
            kwargs["healthcheck"] = request.health.to_docker()
        return kwargs
