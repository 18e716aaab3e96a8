"""The native runtime: a ``ContainerRequest`` run as a plain process group, for nodes with no engine.

``NativeRunner`` offers what ``WarReplica`` asks of ``CarRunner`` (``_runtime.Runtime``), so a WAR
replica is fetched, built and served the same way, minus the container. A request maps as follows:

* **directory and command**: the mount whose ``target`` is ``request.workdir`` gives the host
  directory (WAR: the checkout, mounted at ``/app``); ``request.command`` runs there.
  ``request.image`` is ignored, as are the other mounts and ``read_only`` (the process runs as the
  node's user and can write its checkout); a command naming ``/app`` must use ``$APP_DIR`` instead;
* **environment**: a clean one, never the node's own (it may hold keys and passwords):
  ``PATH`` (``DEFAULT_PATH``), ``HOME`` and ``APP_DIR`` (the directory), ``LANG=C.UTF-8``,
  ``HOST`` (``request.bind_address``), then ``request.env`` (which may override those four), then
  the ports, which it may not;
* **ports**: each ``PortMapping`` gets a free 127.0.0.1 port (or its fixed ``host_port``), passed as
  ``PORT_<container port>`` (``PORT_<port>_UDP`` for udp) and the first as ``PORT``; **a native app
  must listen on $PORT** at 127.0.0.1. The status reports them as ``PortBinding``s, so
  ``host_port(container_port)`` reads as on the engine. A port is picked by binding port 0 and
  closing it: another program may take it before the app binds (the app then fails to start and
  the replica's restart policy starts it again on a new port);
* **process**: ``/bin/sh`` runs a gate (``_GATE``) in a new session (``start_new_session``, no
  ``preexec_fn``: it is unsafe in the threads calling us), which waits for one line on its stdin.
  Meanwhile the runner puts the gate into its cgroups (or sets its rlimits), writes the state file,
  and only then lets it ``exec`` the command, which so starts limited and recorded; if the node
  dies in between, the gate reads EOF and exits 125. stdout and stderr go to ``<work>/<id>.log``;
* **limits** (``_native_limits``: ``Limits``, picked by ``detect_limits``, reported as ``runner.backend``):
  ``cgroup2`` (a delegated parent), ``cgroup1`` (a child of the node's own cgroup in each of the
  memory, cpu and pids hierarchies) or ``rlimit`` (memory only, per process: weak; see
  ``RlimitLimits``). An OOM kill shows as ``oom_killed`` (the cgroup's ``oom_kill`` count) and
  ``exit_code`` 137, so ``likely_oom`` reads as on the engine;
* **stop**: SIGTERM to the process group, every process still in its session and its cgroups;
  SIGKILL after ``timeout_s``; then its cgroups, state and log go. A main process that exits takes
  the rest of its group with it, as a container's init does.

Adoption: processes outlive the node (own session). Each one has a state file
``<work>/<id>.json`` (written atomically, no environment in it: ``exec_ok`` reads the live
process's ``/proc/<pid>/environ``), holding its pid and that pid's start time (``/proc/<pid>/stat``
field 22), so a new runner over the same ``work_dir`` lists, inspects and removes them; a pid now
held by another process counts as exited and is never signalled. Only the runner that started a
process is its parent and learns its exit code: to any other, one that exited while nobody watched
shows ``exited`` with ``exit_code`` None, and ``finished_at`` is when a runner first saw it exited.
One node process per ``work_dir``; keep it apart from the WAR checkouts directory (the
supervisor's sweep removes what it does not know there).

Not done: log rotation (a log grows until its process is removed), read-only mounts, network
isolation, a user of its own per process, health checks run by the runner itself (``health`` is
always None: ``WarReplica`` probes from the node). ``HealthCheck.http`` and ``.tcp`` name
container ports, so natively only command checks mean something to ``exec_ok`` (``WarReplica``
checks HTTP and TCP from the node on the mapped port, and calls ``exec_ok`` for command checks
only). A node killed between making a process's cgroups and writing its state file leaves those
cgroups behind, empty (the gated process never ran).

Every method blocks and is safe to call from several worker threads at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._native_limits import (
    POLL_S,
    LimitBackend,
    Limits,
    NativeRunnerError,
    _is_live,
    _read_environ,
    _session_members,
    _signal_in_session,
    _stat,
    detect_limits,
)
from ._runner_car import (
    ContainerRequest,
    ContainerStatus,
    PortBinding,
    PullPolicy,
    RegistryCredentials,
    container_name,
)

log = logging.getLogger("deedmesh.runner")

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # the node's PATH may name its own virtualenv or tools
SHELL = "/bin/sh"
# Waits for the runner's go-ahead on stdin, then becomes the command (same pid, so the state file's
# pid and start time stay right); EOF (the runner died before the go-ahead) means: do not run.
_GATE = 'read -r _ || exit 125; exec "$@" </dev/null'
GATE_EXIT = 125
KILL_WAIT_S = 5.0  # after SIGKILL, how long processes may take to leave before we call it a failure
BUILD_TAIL_LINES = 50  # as CarRunner.run_to_end
_ID = re.compile(r"[0-9a-f]{32}")


# --- state --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """One process's state file: all a later runner needs to find, report and stop it."""

    id: str
    name: str
    node: str
    job_id: int
    replica: int
    role: str
    version: str | None
    spec_hash: str
    labels: dict[str, str]
    restarts: int
    pid: int
    start_ticks: int
    cwd: str
    ports: tuple[PortBinding, ...]
    cgroups: tuple[str, ...]
    memory_mb: int | None
    memory_limited: bool
    started_at: str
    exited: bool = False  # seen exited (and recorded), so later looks need no /proc
    exit_code: int | None = None
    oom_killed: bool = False
    finished_at: str = ""
    backend: str = ""  # the limits backend it was started under
    revision: str | None = None  # the job spec's revision (``_rollout``)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw: dict[str, Any] = json.loads(text)
        raw["ports"] = tuple(PortBinding(int(c), str(p), str(ip), int(h)) for c, p, ip, h in raw["ports"])
        raw["cgroups"] = tuple(str(c) for c in raw["cgroups"])
        return cls(**raw)

    def status(self) -> ContainerStatus:
        return ContainerStatus(
            container_id=self.id, name=self.name, job_id=self.job_id, replica=self.replica,
            state="exited" if self.exited else "running", running=not self.exited, health=None,
            exit_code=self.exit_code, oom_killed=self.oom_killed, memory_limited=self.memory_limited,
            restarts=self.restarts, spec_hash=self.spec_hash, started_at=self.started_at,
            finished_at=self.finished_at, ports=self.ports, version=self.version, role=self.role,
            revision=self.revision)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _exit_code(returncode: int) -> int:
    """A shell's (and the engine's) view: killed by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def _free_port(protocol: str) -> int:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file, reading only as much of its end as that takes."""
    if lines <= 0:
        return ""
    data = b""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(64 * 1024, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return "".join(data.decode("utf-8", errors="replace").splitlines(keepends=True)[-lines:])


class NativeRunner:
    """Runs ``ContainerRequest``s as process groups on this host for one node (module docstring)."""

    def __init__(self, work_dir: Path, node_address: str, *, limits: Limits | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._node = node_address
        self.limits = detect_limits() if limits is None else limits
        self._lock = threading.Lock()  # state files and _children
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # the processes we are the parent of
        self._name_locks: dict[str, threading.Lock] = {}  # one start per name at a time

    @property
    def node_address(self) -> str:
        return self._node

    @property
    def backend(self) -> LimitBackend:
        """Which limits backend this runner uses: "cgroup2", "cgroup1" or "rlimit"."""
        return self.limits.name

    def ensure_image(
        self,
        image: str,
        image_file: Path | str | None = None,
        *,
        pull: PullPolicy = "if-missing",
        credentials: RegistryCredentials | None = None,
    ) -> None:
        """Nothing to do: a native process runs the host's own tools, not an image."""

    def start(self, request: ContainerRequest) -> str:
        """Run the request and return its id; adopts a running process of the same name and spec.

        One that exited, or runs another spec, is removed and started anew; an exited one of the
        same spec counts as a restart (``restarts`` + 1), as with ``CarRunner``."""
        name = container_name(self._node, request.job_id, request.replica, request.name_suffix)
        with self._name_lock(name):
            restarts = 0
            for existing in self._by_name(name):
                current = self._observe(existing)
                if not current.exited and current.spec_hash == request.spec_hash():
                    return current.id
                restarts = current.restarts + 1 if current.spec_hash == request.spec_hash() else 0
                self.remove(current.id, request.stop_timeout_s)
            return self._spawn(request, name, restarts)[0]

    def inspect(self, container_id: str) -> ContainerStatus | None:
        """One process by id or name as it is now, or None."""
        state = self._find(container_id)
        return None if state is None else self._observe(state).status()

    def remove(self, container_id: str, timeout_s: int = 10) -> bool:
        """Stop (SIGTERM, then SIGKILL after ``timeout_s``) the process and everything it started,
        then delete its cgroups, state and log; False if there was no such process."""
        state = self._find(container_id)
        if state is None:
            return False
        self._stop(state, timeout_s)
        self.limits.release(state.cgroups)
        with self._lock:
            child = self._children.pop(state.id, None)
            for suffix in (".json", ".log"):
                (self.work_dir / f"{state.id}{suffix}").unlink(missing_ok=True)
        if child is not None:
            child.poll()  # reaped by _stop already; this only settles the Popen
        log.info("native process removed", extra={"id": state.id, "name": state.name})
        return True

    def run_to_end(self, request: ContainerRequest, timeout_s: float) -> tuple[int | None, str]:
        """Run a one-off (a WAR build) to its end: (exit code, its last 50 log lines); the exit code
        is None if it ran over ``timeout_s``, and then its whole group is killed. Removed afterwards."""
        name = container_name(self._node, request.job_id, request.replica, request.name_suffix)
        with self._name_lock(name):
            for leftover in self._by_name(name):  # a build left from before a restart: start over
                self.remove(leftover.id, 1)
            process_id, child = self._spawn(request, name, 0)
        try:
            code: int | None = _exit_code(child.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            code = None
        tail = _tail(self.work_dir / f"{process_id}.log", BUILD_TAIL_LINES)
        self.remove(process_id, 1)
        return code, tail

    def exec_ok(self, container_id: str, test: tuple[str, ...], timeout_s: float) -> bool:
        """A health check's test (``("CMD", *argv)``, ``("CMD-SHELL", line)``, or a bare argv) exits 0
        within ``timeout_s``; it runs in the process's directory, environment and cgroups."""
        state = self._find(container_id)
        if state is None or not test or self._observe(state).exited:
            return False
        kind, *rest = test
        if kind == "CMD-SHELL":
            argv = [SHELL, "-c", rest[0]] if rest else []
        else:
            argv = rest if kind == "CMD" else list(test)
        env = _read_environ(state.pid)
        if not argv or env is None or not _is_live(state.pid, state.start_ticks):
            return False
        try:
            child = self._spawn_gated(argv, cwd=state.cwd, env=env, stdout=subprocess.DEVNULL,
                                      cgroups=state.cgroups, memory_mb=state.memory_mb)
        except (OSError, NativeRunnerError):  # its directory or cgroup is gone: as good as a failed check
            return False
        try:
            self._open_gate(child)
            return child.wait(timeout=timeout_s) == 0
        except (subprocess.TimeoutExpired, NativeRunnerError):
            return False
        finally:
            _kill_child(child)

    def list_managed(self) -> list[ContainerStatus]:
        """Every process of this node in ``work_dir``, running or not: adopted ones included."""
        self._reap_forgotten()
        return sorted((self._observe(s).status() for s in self._states()), key=lambda s: (s.job_id, s.replica))

    def logs(self, job_id: int, replica: int, tail: int = 100, container_id: str | None = None) -> str:
        """The last ``tail`` lines of stdout and stderr ("" if there is no process): of the process
        ``container_id``, else of the replica's newest serving process (else its newest one)."""
        if container_id is not None:
            state = self._find(container_id)
        else:
            mine = sorted((s for s in self._states() if (s.job_id, s.replica) == (job_id, replica)),
                          key=lambda s: (s.role == "serve", s.started_at))
            state = mine[-1] if mine else None
        return "" if state is None else _tail(self.work_dir / f"{state.id}.log", tail)

    # --- internals ------------------------------------------------------------------------------------

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _spawn(self, request: ContainerRequest, name: str, restarts: int) -> tuple[str, subprocess.Popen[bytes]]:
        if not request.command:
            raise NativeRunnerError(f"{name}: a native process needs a command (there is no image to default to)")
        cwd = _host_dir(request)
        process_id = uuid.uuid4().hex
        try:
            ports = tuple(PortBinding(p.container_port, p.protocol, "127.0.0.1",
                                      p.host_port if p.host_port is not None else _free_port(p.protocol))
                          for p in request.ports)
        except OSError as exc:
            raise NativeRunnerError(f"{name}: no free port: {exc}") from exc
        cgroups = self.limits.prepare(f"deedmesh-{process_id}", request)
        log_path = self.work_dir / f"{process_id}.log"
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                child = self._spawn_gated(list(request.command), cwd=cwd, env=_environment(request, cwd, ports),
                                          stdout=fd, cgroups=cgroups, memory_mb=request.memory_mb)
            finally:
                os.close(fd)
        except (OSError, NativeRunnerError) as exc:
            self.limits.release(cgroups)
            log_path.unlink(missing_ok=True)
            raise NativeRunnerError(f"{name}: cannot start: {exc}") from exc
        try:
            stat = _stat(child.pid)
            if stat is None:
                raise NativeRunnerError(f"{name}: its process vanished as it started")
            state = _State(
                id=process_id, name=name, node=self._node, job_id=request.job_id, replica=request.replica,
                role=request.role, version=request.version, spec_hash=request.spec_hash(),
                labels=dict(request.labels), restarts=restarts, pid=child.pid, start_ticks=stat.start_ticks,
                cwd=cwd, ports=ports, cgroups=cgroups, memory_mb=request.memory_mb,
                memory_limited=request.memory_mb is not None and self.limits.memory_kills
                and "memory" in self.limits.controllers,
                started_at=_now(), backend=self.limits.name, revision=request.revision)
            with self._lock:
                self._save(state)
                self._children[process_id] = child
            self._open_gate(child)
        except BaseException:
            _kill_child(child)
            self.limits.release(cgroups)
            with self._lock:
                self._children.pop(process_id, None)
                for suffix in (".json", ".log"):
                    (self.work_dir / f"{process_id}{suffix}").unlink(missing_ok=True)
            raise
        log.info("native process started", extra={"id": process_id, "name": name, "pid": child.pid,
                                                  "limits": self.limits.name})
        return process_id, child

    def _spawn_gated(self, argv: list[str], *, cwd: str, env: Mapping[str, str], stdout: int,
                     cgroups: tuple[str, ...], memory_mb: int | None) -> subprocess.Popen[bytes]:
        """The gate in a new session, already under its limits, waiting for ``_open_gate``."""
        child = subprocess.Popen([SHELL, "-c", _GATE, "deedmesh-gate", *argv], stdin=subprocess.PIPE,
                                 stdout=stdout, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env),
                                 start_new_session=True)
        try:
            self.limits.join(child.pid, cgroups, memory_mb)
        except OSError as exc:
            _kill_child(child)
            raise NativeRunnerError(f"cannot limit process {child.pid}: {exc}") from exc
        return child

    @staticmethod
    def _open_gate(child: subprocess.Popen[bytes]) -> None:
        assert child.stdin is not None
        try:
            child.stdin.write(b"go\n")
            child.stdin.close()
        except BrokenPipeError as exc:
            raise NativeRunnerError(f"process {child.pid} died before it could run") from exc

    def _observe(self, state: _State) -> _State:
        """``state`` with its exit recorded if it has exited since (once: the record persists)."""
        if state.exited:
            return state
        with self._lock:
            child = self._children.get(state.id)
        code = None
        if child is not None:
            returncode = child.poll()
            if returncode is None:
                return state
            code = _exit_code(returncode)
        elif _is_live(state.pid, state.start_ticks):
            return state
        self._signal_all(state, signal.SIGKILL)  # the main process is gone: the rest of it goes too
        ended = replace(state, exited=True, exit_code=code, finished_at=_now(),
                        oom_killed=self.limits.oom_kills(state.cgroups) > 0)
        with self._lock:
            if (self.work_dir / f"{state.id}.json").exists():  # not removed meanwhile
                self._save(ended)
        return ended

    def _stop(self, state: _State, timeout_s: float) -> None:
        if not self._remaining(state):
            return
        self._signal_all(state, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._remaining(state):
                return
            time.sleep(POLL_S)  # waiting on other processes' exit: there is nothing to wait on instead
        deadline = time.monotonic() + KILL_WAIT_S
        while self._remaining(state):
            if time.monotonic() > deadline:
                raise NativeRunnerError(f"{state.name}: processes survived SIGKILL for {KILL_WAIT_S} s")
            self._signal_all(state, signal.SIGKILL)
            time.sleep(POLL_S)

    def _signal_all(self, state: _State, sig: int) -> None:
        """The process group, the rest of the session and the cgroups; by group and session only if
        the pid is not now another process's (then its group and session are not ours either)."""
        stat = _stat(state.pid)
        if stat is None or stat.start_ticks == state.start_ticks:
            with contextlib.suppress(OSError):
                os.killpg(state.pid, sig)
            for pid in _session_members(state.pid):
                _signal_in_session(pid, state.pid, sig)
        self.limits.signal(state.cgroups, sig)

    def _remaining(self, state: _State) -> bool:
        """Does anything of this process still run?"""
        with self._lock:
            child = self._children.get(state.id)
        if child is not None:
            child.poll()  # reap our own child, or it stays a zombie
        stat = _stat(state.pid)
        ours = stat is None or stat.start_ticks == state.start_ticks
        return (ours and bool(_session_members(state.pid))) or bool(self.limits.members(state.cgroups))

    def _reap_forgotten(self) -> None:
        """Children another runner removed (their state file is gone) are reaped here."""
        with self._lock:
            for process_id, child in list(self._children.items()):
                if not (self.work_dir / f"{process_id}.json").exists() and child.poll() is not None:
                    del self._children[process_id]

    def _save(self, state: _State) -> None:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path = self.work_dir / f"{state.id}.json"
        staging = self.work_dir / f".{state.id}.json.tmp"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, state.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, path)

    def _states(self) -> Iterator[_State]:
        for path in sorted(self.work_dir.glob("*.json")):
            state = self._load(path)
            if state is not None and state.node == self._node:
                yield state

    def _load(self, path: Path) -> _State | None:
        try:
            return _State.from_json(path.read_text())
        except FileNotFoundError:
            return None  # removed meanwhile
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable native state file", extra={"path": str(path), "error": str(exc)})
            return None

    def _find(self, ref: str) -> _State | None:
        """By id, else by name (the newest of that name)."""
        if _ID.fullmatch(ref):
            state = self._load(self.work_dir / f"{ref}.json")
            if state is not None and state.node == self._node:
                return state
        named = self._by_name(ref)
        return named[-1] if named else None

    def _by_name(self, name: str) -> list[_State]:
        return sorted((s for s in self._states() if s.name == name), key=lambda s: s.started_at)


def _host_dir(request: ContainerRequest) -> str:
    """The host directory mounted at the request's workdir: where the process runs."""
    if request.workdir is not None:
        for mount in request.mounts:
            if mount.target.rstrip("/") == request.workdir.rstrip("/") and os.path.isabs(mount.source):
                return mount.source
    raise NativeRunnerError(f"job {request.job_id}: a native process needs a host directory mounted at its workdir")


def _environment(request: ContainerRequest, cwd: str, ports: tuple[PortBinding, ...]) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": cwd, "LANG": "C.UTF-8", "HOST": request.bind_address}
    env.update(request.env)
    env["APP_DIR"] = cwd
    for binding in ports:
        suffix = "" if binding.protocol == "tcp" else f"_{binding.protocol.upper()}"
        env[f"PORT_{binding.container_port}{suffix}"] = str(binding.host_port)
    if ports:
        env["PORT"] = str(ports[0].host_port)
    return env


def _kill_child(child: subprocess.Popen[bytes]) -> None:
    """Our own child, at once, with whatever it left in its session."""
    if child.returncode is None:  # not reaped yet, so its pid (and group) cannot be anyone else's
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    if _stat(child.pid) is None:  # leftovers keep the session id allocated: whoever has it is ours
        for pid in _session_members(child.pid):
            _signal_in_session(pid, child.pid, signal.SIGKILL)
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
