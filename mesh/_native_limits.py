"""How native processes are held to their limits (``_runner_native``), and what it reads of ``/proc``.

A backend is picked at run time (``detect_limits``): cgroup v2 under a delegated directory (or the
node's own cgroup, if memory is delegated there), cgroup v1 where its memory hierarchy is writable,
else ``setrlimit`` alone (memory only: ``RLIMIT_DATA``; there is no rate limit for CPU and
``RLIMIT_NPROC`` counts every process of the user). A cgroup backend makes one cgroup per process
and removes it with the process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._runner_car import CarRunnerError, ContainerRequest

log = logging.getLogger("deedmesh.runner")

LimitBackend = Literal["cgroup2", "cgroup1", "rlimit"]
CPU_PERIOD_US = 100_000  # the kernel's default CFS period; cpu_millis=1000 is one CPU's worth of it
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses less
POLL_S = 0.02  # how often a stop or a cgroup removal looks again
RMDIR_WAIT_S = 2.0  # a cgroup empties a moment after its last process is reaped
_MIB = 1024 * 1024


class NativeRunnerError(CarRunnerError):
    """A native process could not be started, limited or stopped.

    A ``CarRunnerError`` so that callers written for the engine (``WarReplica``, ``WarSupervisor``)
    treat it as the runtime failing, not as a bug."""


# --- /proc ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    state: str  # R, S, D, Z (zombie), X (dead), ...
    session: int
    start_ticks: int  # field 22: clock ticks after boot; with the pid, names one process for good


def _stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    return _Stat(rest[0].decode(), int(rest[3]), int(rest[19]))


def _is_live(pid: int, start_ticks: int) -> bool:
    """That very process (not a later one with its pid) exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat.start_ticks == start_ticks and stat.state not in "ZX"


def _session_members(session: int) -> list[int]:
    """Live processes of a session. While any exists, the kernel keeps its id (our leader's pid)
    allocated, so they are ours even after the leader exited."""
    found = []
    for entry in os.listdir("/proc"):
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat.session == session and stat.state not in "ZX":
            found.append(int(entry))
    return found


def _signal_in_session(pid: int, session: int, sig: int) -> None:
    """Signal ``pid`` only if it is still in ``session``: through a pidfd, so a pid that got reused
    between our look at /proc and the signal is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        stat = _stat(pid)
        if stat is not None and stat.session == session:
            signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


# --- limits -----------------------------------------------------------------------------------------


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Limits:
    """How native processes are held to a request's ``memory_mb``, ``cpu_millis`` and ``pids_limit``.

    A cgroup backend makes one cgroup per process (a directory per hierarchy); ``controllers``
    says which limits it enforces at all (a limit on a missing controller is not applied).
    ``memory_kills``: a process over its memory is SIGKILLed (so exit 137 with a memory limit means
    OOM, as on the engine), rather than refused memory."""

    name: LimitBackend
    controllers: frozenset[str] = frozenset()
    memory_kills = True

    def prepare(self, key: str, request: ContainerRequest) -> tuple[str, ...]:
        """Create the cgroups for one process, with its limits written; their directories."""
        return ()

    def join(self, pid: int, cgroups: tuple[str, ...], memory_mb: int | None) -> None:
        """Put ``pid`` (the gate, before it runs anything) under the limits."""
        for directory in cgroups:
            _write(Path(directory) / "cgroup.procs", str(pid))

    def members(self, cgroups: tuple[str, ...]) -> set[int]:
        found: set[int] = set()
        for directory in cgroups:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (Path(directory) / "cgroup.procs").read_text().split())
        return {pid for pid in found if (stat := _stat(pid)) is not None and stat.state not in "ZX"}

    def signal(self, cgroups: tuple[str, ...], sig: int) -> None:
        for pid in self.members(cgroups):  # in our cgroup, so ours
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def oom_kills(self, cgroups: tuple[str, ...]) -> int:
        """How many processes the kernel's OOM killer took in these cgroups."""
        kills = 0
        for directory in cgroups:
            for name in ("memory.events", "memory.oom_control"):  # v2, v1: both have "oom_kill N"
                with contextlib.suppress(OSError, ValueError):
                    for line in (Path(directory) / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            kills += int(value)
        return kills

    def release(self, cgroups: tuple[str, ...]) -> None:
        """Remove the cgroups (empty by now, or emptying as the last processes are reaped)."""
        for directory in cgroups:
            deadline = time.monotonic() + RMDIR_WAIT_S
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("cannot remove a cgroup", extra={"cgroup": directory, "error": str(exc)})
                        break
                    time.sleep(POLL_S)


class CgroupV2Limits(Limits):
    """cgroup v2 under a delegated ``parent``: ``memory.max`` (and ``memory.swap.max`` 0, so the limit
    means OOM, not swapping; ``memory.oom.group`` 1, so an OOM takes the whole app, as it would a
    container), ``cpu.max`` = ``cpu_millis * 100`` per 100 ms, ``pids.max``.

    ``parent`` must be writable by the node, hold no process itself and enable the controllers in
    its ``cgroup.subtree_control`` (``echo +memory +cpu +pids > .../cgroup.subtree_control``), e.g.
    a ``Delegate=yes`` systemd unit's cgroup, with the node moved into a leaf of its own."""

    name: LimitBackend = "cgroup2"

    def __init__(self, parent: Path) -> None:
        self.parent = Path(parent)
        try:
            enabled = set((self.parent / "cgroup.subtree_control").read_text().split())
        except OSError as exc:
            raise NativeRunnerError(f"{self.parent} is not a cgroup v2 directory: {exc}") from exc
        self.controllers = frozenset(enabled & {"memory", "cpu", "pids"})
        self.memory_kills = "memory" in self.controllers

    def prepare(self, key: str, request: ContainerRequest) -> tuple[str, ...]:
        directory = self.parent / key
        try:
            directory.mkdir()
            if request.memory_mb is not None and "memory" in self.controllers:
                _write(directory / "memory.max", str(request.memory_mb * _MIB))
                for name in ("memory.swap.max", "memory.oom.group"):  # absent without swap accounting / old kernels
                    if (directory / name).exists():
                        _write(directory / name, "0" if name == "memory.swap.max" else "1")
            if request.cpu_millis is not None and "cpu" in self.controllers:
                quota = max(MIN_CPU_QUOTA_US, request.cpu_millis * CPU_PERIOD_US // 1000)
                _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if request.pids_limit is not None and "pids" in self.controllers:
                _write(directory / "pids.max", str(request.pids_limit))
        except OSError as exc:
            self.release((str(directory),))
            raise NativeRunnerError(f"cgroup {directory}: {exc}") from exc
        return (str(directory),)

    def signal(self, cgroups: tuple[str, ...], sig: int) -> None:
        for directory in cgroups:  # cgroup.kill (Linux 5.14): every member at once, forks included
            if sig == signal.SIGKILL and (Path(directory) / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(Path(directory) / "cgroup.kill", "1")
        super().signal(cgroups, sig)


class CgroupV1Limits(Limits):
    """cgroup v1, one child of the node's own cgroup per hierarchy (so whatever bounds the node
    bounds its apps too): memory ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (if
    swap is accounted) both ``memory_mb``; cpu ``cpu.cfs_quota_us`` = ``cpu_millis * 100`` per
    ``cpu.cfs_period_us`` 100000; pids ``pids.max``. Needs write access to those cgroups (root)."""

    name: LimitBackend = "cgroup1"

    def __init__(self, bases: Mapping[str, Path]) -> None:
        if "memory" not in bases:
            raise NativeRunnerError("cgroup v1 needs the memory hierarchy")
        self.bases = dict(bases)
        self.controllers = frozenset(bases)

    def prepare(self, key: str, request: ContainerRequest) -> tuple[str, ...]:
        made: list[str] = []
        try:
            for controller, base in self.bases.items():
                directory = base / key
                directory.mkdir()
                made.append(str(directory))
                if controller == "memory" and request.memory_mb is not None:
                    _write(directory / "memory.limit_in_bytes", str(request.memory_mb * _MIB))
                    if (directory / "memory.memsw.limit_in_bytes").exists():  # after the plain limit: memsw >= it
                        _write(directory / "memory.memsw.limit_in_bytes", str(request.memory_mb * _MIB))
                elif controller == "cpu" and request.cpu_millis is not None:
                    _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    quota = max(MIN_CPU_QUOTA_US, request.cpu_millis * CPU_PERIOD_US // 1000)
                    _write(directory / "cpu.cfs_quota_us", str(quota))
                elif controller == "pids" and request.pids_limit is not None:
                    _write(directory / "pids.max", str(request.pids_limit))
        except OSError as exc:
            self.release(tuple(made))
            raise NativeRunnerError(f"cgroup {key}: {exc}") from exc
        return tuple(made)


class RlimitLimits(Limits):
    """No cgroups: ``RLIMIT_DATA`` = ``memory_mb`` on the process, and nothing else.

    Weak, and per process (each child gets the same budget again). ``RLIMIT_DATA`` rather than
    ``RLIMIT_AS``: Go, the JVM and V8 reserve far more address space than they use, and those
    reservations (``PROT_NONE``) do not count against it. Going over it makes an allocation fail
    (Python: ``MemoryError``, exit 1), so there is no OOM kill to report. No cpu limit
    (``RLIMIT_CPU`` kills after total CPU seconds: not a rate) and no pids limit (``RLIMIT_NPROC``
    counts every process of the user, the node's and every app's alike)."""

    name: LimitBackend = "rlimit"
    controllers = frozenset({"memory"})
    memory_kills = False

    def join(self, pid: int, cgroups: tuple[str, ...], memory_mb: int | None) -> None:
        if memory_mb is not None:
            _, hard = resource.prlimit(pid, resource.RLIMIT_DATA)
            limit = memory_mb * _MIB if hard == resource.RLIM_INFINITY else min(memory_mb * _MIB, hard)
            resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))

    def members(self, cgroups: tuple[str, ...]) -> set[int]:
        return set()


def _unescape(text: str) -> str:
    """mountinfo writes spaces and the like as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def _cgroup_mounts() -> list[tuple[str, str, Path, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup and cgroup2 mount."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                mounts.append((tail[0], _unescape(fields[3]), Path(_unescape(fields[4])), set(tail[2].split(","))))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    own = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _under_mount(mount_root: str, mount_point: Path, path: str) -> Path | None:
    if mount_root != "/" and path != mount_root and not path.startswith(mount_root + "/"):
        return None  # our cgroup is outside what this mount shows
    relative = path[len(mount_root) :] if mount_root != "/" else path
    return mount_point / relative.lstrip("/")


def _can_make_children(directory: Path) -> bool:
    probe = directory / f"deedmesh-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.mkdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.rmdir()
    return True


def detect_limits(cgroup_parent: Path | None = None) -> Limits:
    """The strongest backend this node can use: cgroup v2 under ``cgroup_parent`` if given (it must
    work), else v2 under our own cgroup if it is delegated with the memory controller, else v1
    children of our own v1 cgroups if the memory hierarchy is writable, else rlimits."""
    if cgroup_parent is not None:
        return CgroupV2Limits(cgroup_parent)
    mounts, own = _cgroup_mounts(), _own_cgroups()
    for fstype, root, point, _ in mounts:
        if fstype == "cgroup2" and "" in own and (directory := _under_mount(root, point, own[""])) is not None:
            with contextlib.suppress(OSError):
                enabled = set((directory / "cgroup.subtree_control").read_text().split())
                if "memory" in enabled and _can_make_children(directory):
                    return CgroupV2Limits(directory)
    bases: dict[str, Path] = {}
    for controller in ("memory", "cpu", "pids"):
        for fstype, root, point, options in mounts:
            if fstype == "cgroup" and controller in options and controller in own:
                directory = _under_mount(root, point, own[controller])
                if directory is not None and _can_make_children(directory):
                    bases[controller] = directory
                    break
    if "memory" in bases:
        return CgroupV1Limits(bases)
    return RlimitLimits()
