"""The native runtime on real processes, with the limits backend this machine offers (``detect_limits``):
a request runs as a process group in its checkout with a clean environment and its ports on
127.0.0.1; remove stops everything it started; one-offs end with their exit code or at their
timeout; a new runner over the same directory adopts what an old one left, and a reused pid is
never taken for the process; memory and pids limits hold. Every process is started through a
runner (or, once, by the test itself) and stopped by its id or PID."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from mesh._native_limits import CgroupV2Limits, Limits, NativeRunnerError, RlimitLimits, detect_limits
from mesh._runner_car import CarRunner, CarRunnerError, ContainerRequest, Mount, PortMapping, container_name
from mesh._runner_native import DEFAULT_PATH, NativeRunner
from mesh._runtime import Runtime

SERVE = ("sh", "-c", 'exec python3 -m http.server "$PORT" --bind 127.0.0.1')


@pytest.fixture(scope="module")
def limits() -> Limits:
    """Detected once: the backend every runner of these tests uses (unless a test picks one)."""
    return detect_limits()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The directory a process runs in (a WAR checkout, natively)."""
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "index.html").write_text("<p>native</p>\n")
    return directory


@pytest.fixture
def runner(tmp_path: Path, limits: Limits) -> Iterator[NativeRunner]:
    """A runner for a node of its own; teardown removes, by id, what a failed test left running."""
    native = NativeRunner(tmp_path / "native", f"0xtest{uuid.uuid4().hex[:12]}", limits=limits)
    yield native
    for leftover in native.list_managed():
        native.remove(leftover.container_id, timeout_s=1)


def request(app: Path, command: Sequence[str], **fields: Any) -> ContainerRequest:
    fields.setdefault("job_id", 7)
    fields.setdefault("replica", 0)
    return ContainerRequest(image="ignored/natively:1", command=tuple(command), workdir="/app",
                            mounts=(Mount(str(app), "/app", True),), **fields)


def wait_for(predicate: Callable[[], object], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {deadline_s} s")
        time.sleep(0.02)  # polling real processes, with a deadline


def http_get(port: int) -> bytes | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.read() if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (index 0 is the state), or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running (a zombie is not: it only waits for a parent that may never reap it)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in "ZX"


def pid_in(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip(), 10, f"{path.name} written")
    return int(path.read_text())


def state_file(runner: NativeRunner, process_id: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((runner.work_dir / f"{process_id}.json").read_text()))


def test_an_http_server_answers_on_its_mapped_port_and_reads_like_a_container(
        runner: NativeRunner, app: Path) -> None:
    req = request(app, SERVE, ports=(PortMapping(8080),), version="abc123", memory_mb=128, cpu_millis=1000,
                  labels={"deedmesh.name": "site"}, revision="r1")
    process_id = runner.start(req)
    status = runner.inspect(process_id)
    assert status is not None
    port = status.host_port(8080)
    assert port is not None
    wait_for(lambda: http_get(port) == b"<p>native</p>\n", 10, "the server answering")
    assert (status.container_id, status.job_id, status.replica) == (process_id, 7, 0)
    assert status.name == container_name(runner.node_address, 7, 0, req.name_suffix)
    assert (status.state, status.running, status.health, status.exit_code) == ("running", True, None, None)
    assert (status.version, status.role, status.revision, status.restarts) == ("abc123", "serve", "r1", 0)
    assert status.spec_hash == req.spec_hash()
    assert status.started_at.endswith("Z")
    assert status.host_port(8081) is None
    assert [s.container_id for s in runner.list_managed()] == [process_id]

    assert runner.remove(process_id)
    assert runner.inspect(process_id) is None
    assert http_get(port) is None
    assert runner.remove(process_id) is False
    assert runner.list_managed() == []
    assert sorted(p.name for p in runner.work_dir.iterdir()) == []  # state and log went with it


def test_the_process_sees_a_clean_environment_not_the_nodes(
        runner: NativeRunner, app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEDMESH_NODE_SECRET", "not-for-apps")
    code, out = runner.run_to_end(request(app, ["env"], env={"GREETING": "hello", "HOME": "/elsewhere"},
                                          ports=(PortMapping(8080), PortMapping(9090))), 10)
    assert code == 0
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert "DEEDMESH_NODE_SECRET" not in env
    assert set(env) <= {"PATH", "HOME", "LANG", "HOST", "APP_DIR", "GREETING", "PORT", "PORT_8080", "PORT_9090",
                        "PWD"}  # PWD: added by the shell that execs the command
    assert (env["PATH"], env["LANG"], env["HOST"]) == (DEFAULT_PATH, "C.UTF-8", "127.0.0.1")
    assert (env["APP_DIR"], env["HOME"], env["GREETING"]) == (str(app), "/elsewhere", "hello")
    assert env["PORT"] == env["PORT_8080"] != env["PORT_9090"]
    assert int(env["PORT_9090"]) > 0


def test_remove_stops_the_process_and_the_child_it_started(runner: NativeRunner, app: Path) -> None:
    process_id = runner.start(request(app, ["sh", "-c", 'sleep 300 & echo $! > grandchild.pid; echo $$ > child.pid; '
                                                        'wait']))
    child, grandchild = pid_in(app / "child.pid"), pid_in(app / "grandchild.pid")
    assert alive(child)
    assert alive(grandchild)
    began = time.monotonic()
    assert runner.remove(process_id, timeout_s=5)
    assert time.monotonic() - began < 3  # SIGTERM was enough
    assert not alive(child)
    assert not alive(grandchild)


def test_a_child_that_left_the_session_is_still_stopped_through_the_cgroup(
        runner: NativeRunner, app: Path) -> None:
    if runner.backend == "rlimit":
        pytest.skip("the rlimit backend has no cgroup: a process that calls setsid() escapes it")
    process_id = runner.start(request(app, ["sh", "-c", 'setsid sleep 300 & echo $! > escaped.pid; exec sleep 300']))
    escaped = pid_in(app / "escaped.pid")
    main_pid = state_file(runner, process_id)["pid"]
    wait_for(lambda: (s := proc_stat(escaped)) is not None and int(s[3]) != main_pid, 5, "the child in its own session")
    assert runner.remove(process_id, timeout_s=5)
    assert not alive(escaped)


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(runner: NativeRunner, app: Path) -> None:
    process_id = runner.start(request(app, ["sh", "-c", 'trap "" TERM; echo $$ > main.pid; echo ready; '
                                                        'while :; do sleep 1; done']))
    main = pid_in(app / "main.pid")
    wait_for(lambda: "ready" in runner.logs(7, 0), 10, "the trap set")
    began = time.monotonic()
    assert runner.remove(process_id, timeout_s=1)
    assert 1 <= time.monotonic() - began < 4
    assert not alive(main)


def test_run_to_end_returns_the_exit_code_and_the_last_lines(runner: NativeRunner, app: Path) -> None:
    code, tail = runner.run_to_end(request(app, ["sh", "-c", "for i in $(seq 1 80); do echo line $i; done; exit 3"],
                                           role="build", version="abc"), 10)
    assert code == 3
    assert tail.splitlines() == [f"line {i}" for i in range(31, 81)]
    assert runner.run_to_end(request(app, ["sh", "-c", "kill -KILL $$"]), 10)[0] == 137  # as a shell reports it
    code, tail = runner.run_to_end(request(app, ["no-such-program-here"]), 10)
    assert code == 127
    assert "not found" in tail
    assert runner.list_managed() == []
    assert list(runner.work_dir.iterdir()) == []


def test_run_to_end_kills_the_whole_group_at_its_timeout(runner: NativeRunner, app: Path) -> None:
    began = time.monotonic()
    code, tail = runner.run_to_end(request(app, ["sh", "-c", "sleep 300 & echo $! > bg.pid; echo started; wait"],
                                           role="build"), 1.0)
    assert (code, tail) == (None, "started\n")
    assert time.monotonic() - began < 4
    assert not alive(pid_in(app / "bg.pid"))
    assert runner.list_managed() == []


def test_exec_ok_runs_in_the_processes_directory_and_environment(runner: NativeRunner, app: Path) -> None:
    process_id = runner.start(request(app, ["sleep", "300"], env={"MARK": "x"}))
    assert runner.exec_ok(process_id, ("CMD-SHELL", 'test "$MARK" = x && test -f index.html'), 5)
    assert runner.exec_ok(process_id, ("CMD", "true"), 5)
    assert not runner.exec_ok(process_id, ("CMD", "false"), 5)
    assert not runner.exec_ok(process_id, ("CMD", "no-such-program-here"), 5)
    began = time.monotonic()
    assert not runner.exec_ok(process_id, ("CMD", "sleep", "30"), 0.3)
    assert time.monotonic() - began < 2
    assert not runner.exec_ok("0" * 32, ("CMD", "true"), 5)
    assert runner.remove(process_id, timeout_s=1)
    assert not runner.exec_ok(process_id, ("CMD", "true"), 5)


def test_logs_are_the_last_lines_of_the_replicas_process(runner: NativeRunner, app: Path) -> None:
    process_id = runner.start(request(app, ["sh", "-c", "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; "
                                                        "exec sleep 300"]))
    wait_for(lambda: "oops" in runner.logs(7, 0), 10, "the output logged")
    assert runner.logs(7, 0, tail=3) == "line 29\nline 30\noops\n"
    assert runner.logs(7, 0, tail=3, container_id=process_id) == "line 29\nline 30\noops\n"
    assert len(runner.logs(7, 0).splitlines()) == 31
    assert runner.logs(7, 1) == ""
    assert runner.logs(7, 0, container_id="0" * 32) == ""


def test_start_adopts_a_running_process_of_the_same_spec_and_restarts_an_exited_one(
        runner: NativeRunner, app: Path) -> None:
    serving = request(app, ["sleep", "300"])
    first = runner.start(serving)
    assert runner.start(serving) == first
    short = request(app, ["sh", "-c", "exit 1"], replica=1)
    gone = runner.start(short)
    wait_for(lambda: (s := runner.inspect(gone)) is not None and not s.running, 10, "the short process exiting")
    ended = runner.inspect(gone)
    assert ended is not None
    assert (ended.state, ended.exit_code, ended.finished_at != "") == ("exited", 1, True)
    again = runner.start(short)
    assert again != gone
    assert runner.inspect(gone) is None
    restarted = runner.inspect(again)
    assert restarted is not None
    assert restarted.restarts == 1
    changed = runner.start(request(app, ["sleep", "301"]))  # same name, another spec: replaced
    assert changed != first
    assert runner.inspect(first) is None
    replaced = runner.inspect(changed)
    assert replaced is not None
    assert replaced.restarts == 0


def test_a_second_runner_adopts_what_the_first_left(runner: NativeRunner, app: Path, limits: Limits) -> None:
    server = runner.start(request(app, SERVE, ports=(PortMapping(8080),)))
    short = runner.start(request(app, ["sh", "-c", "exit 3"], replica=1))
    before = runner.inspect(server)
    assert before is not None
    port = before.host_port(8080)
    assert port is not None
    wait_for(lambda: http_get(port) is not None, 10, "the server answering")
    server_pid = state_file(runner, server)["pid"]

    later = NativeRunner(runner.work_dir, runner.node_address, limits=limits)  # the node restarted
    assert NativeRunner(runner.work_dir, "0xsomeoneelse", limits=limits).list_managed() == []
    wait_for(lambda: (s := later.inspect(short)) is not None and not s.running, 10, "the short one seen exited")
    statuses = {s.container_id: s for s in later.list_managed()}
    assert set(statuses) == {server, short}
    assert statuses[server].running
    assert statuses[server].host_port(8080) == port
    # it exited while no runner that started it watched: its exit code is unknown
    assert (statuses[short].state, statuses[short].exit_code) == ("exited", None)
    assert later.exec_ok(server, ("CMD-SHELL", 'test -n "$PORT"'), 5)

    assert later.remove(server, timeout_s=5)
    assert not alive(server_pid)
    assert http_get(port) is None
    assert later.remove(short)
    assert later.list_managed() == []
    assert runner.list_managed() == []  # the first runner sees them gone too (and reaps its children)


def test_a_pid_held_by_another_process_counts_as_exited_and_is_never_signalled(
        runner: NativeRunner, app: Path, limits: Limits) -> None:
    process_id = runner.start(request(app, ["sleep", "300"]))
    state = state_file(runner, process_id)
    assert runner.remove(process_id, timeout_s=1)
    # a stranger now holds a pid the state file names (its own session and group, as our process had)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        fields = proc_stat(stranger.pid)
        assert fields is not None
        state.update(pid=stranger.pid, start_ticks=int(fields[19]) + 1)  # field 22: its start time differs
        (runner.work_dir / f"{process_id}.json").write_text(json.dumps(state))

        later = NativeRunner(runner.work_dir, runner.node_address, limits=limits)
        status = later.inspect(process_id)
        assert status is not None
        assert (status.running, status.state, status.exit_code) == (False, "exited", None)
        assert later.remove(process_id, timeout_s=1)
        assert stranger.poll() is None  # untouched
        assert alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_over_its_memory_is_oom_killed_and_reported(runner: NativeRunner, app: Path) -> None:
    if not runner.limits.memory_kills:
        pytest.skip(f"the {runner.backend} backend refuses memory instead of OOM-killing (see the rlimit test)")
    process_id = runner.start(request(app, ["python3", "-c", "x = b'1' * (256 * 1024 * 1024); print('survived')"],
                                      memory_mb=48))
    wait_for(lambda: (s := runner.inspect(process_id)) is not None and not s.running, 20, "the process ending")
    status = runner.inspect(process_id)
    assert status is not None
    assert (status.exit_code, status.oom_killed, status.memory_limited, status.likely_oom) == (137, True, True, True)
    assert "survived" not in runner.logs(7, 0)
    assert runner.remove(process_id)


def test_under_rlimits_an_allocation_over_the_limit_fails_instead(tmp_path: Path, app: Path) -> None:
    weak = NativeRunner(tmp_path / "rlimit", "0xrlimit", limits=RlimitLimits())
    assert weak.backend == "rlimit"
    hog = "x = b'1' * (256 * 1024 * 1024); print('survived')"
    code, tail = weak.run_to_end(request(app, ["python3", "-c", hog], memory_mb=64), 20)
    assert code == 1
    assert "MemoryError" in tail
    assert weak.run_to_end(request(app, ["python3", "-c", "x = b'1' * (16 * 1024 * 1024)"], memory_mb=64), 20)[0] == 0
    process_id = weak.start(request(app, ["sleep", "300"], memory_mb=64))
    status = weak.inspect(process_id)
    assert status is not None
    assert not status.memory_limited  # a SIGKILL here is never the OOM killer's
    assert weak.remove(process_id, timeout_s=1)


def test_the_pids_limit_caps_forks(runner: NativeRunner, app: Path) -> None:
    if "pids" not in runner.limits.controllers or runner.backend == "rlimit":
        pytest.skip(f"the {runner.backend} backend has no pids controller")
    forks = ("import os, time\n"
             "n = 0\n"
             "try:\n"
             "    for _ in range(40):\n"
             "        if os.fork() == 0:\n"
             "            time.sleep(60)\n"
             "            os._exit(0)\n"
             "        n += 1\n"
             "except OSError:\n"
             "    pass\n"
             "print('forked', n, flush=True)\n")
    code, tail = runner.run_to_end(request(app, ["python3", "-c", forks], pids_limit=8), 20)
    assert code == 0
    assert tail.strip() == "forked 7"  # eight tasks: python and seven children
    assert runner.list_managed() == []  # the sleeping children went with the one-off


def test_the_cgroups_hold_the_requested_limits_and_go_with_the_process(runner: NativeRunner, app: Path) -> None:
    if runner.backend == "rlimit":
        pytest.skip("the rlimit backend makes no cgroups")
    process_id = runner.start(request(app, ["sleep", "300"], memory_mb=48, cpu_millis=250, pids_limit=16))
    cgroups = [Path(c) for c in state_file(runner, process_id)["cgroups"]]
    files = {f.name: f.read_text().strip() for c in cgroups for f in c.iterdir()
             if f.name in {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cpu.cfs_quota_us",
                           "cpu.cfs_period_us", "pids.max", "memory.max", "cpu.max"}}
    if runner.backend == "cgroup1":
        assert files["memory.limit_in_bytes"] == str(48 * 1024 * 1024)
        assert files.get("memory.memsw.limit_in_bytes", str(48 * 1024 * 1024)) == str(48 * 1024 * 1024)
        if "cpu" in runner.limits.controllers:
            assert (files["cpu.cfs_quota_us"], files["cpu.cfs_period_us"]) == ("25000", "100000")
    else:
        assert files["memory.max"] == str(48 * 1024 * 1024)
        if "cpu" in runner.limits.controllers:
            assert files["cpu.max"] == "25000 100000"
    if "pids" in runner.limits.controllers:
        assert files["pids.max"] == "16"
    main_pid = state_file(runner, process_id)["pid"]
    assert all(str(main_pid) in (c / "cgroup.procs").read_text().split() for c in cgroups)
    assert runner.remove(process_id, timeout_s=1)
    assert not any(c.exists() for c in cgroups)


def test_cgroup_v2_limits_are_written_as_the_kernel_expects(tmp_path: Path, app: Path) -> None:
    """On a plain directory standing in for a delegated cgroup (this machine may have no v2 memory)."""
    parent = tmp_path / "delegated"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text("cpu memory pids\n")
    v2 = CgroupV2Limits(parent)
    assert (v2.name, v2.controllers, v2.memory_kills) == ("cgroup2", {"cpu", "memory", "pids"}, True)
    (made,) = v2.prepare("deedmesh-test", request(app, ["true"], memory_mb=48, cpu_millis=250, pids_limit=16))
    written = {f.name: f.read_text() for f in Path(made).iterdir()}
    assert written == {"memory.max": str(48 * 1024 * 1024), "cpu.max": "25000 100000", "pids.max": "16"}
    (parent / "cgroup.subtree_control").write_text("pids\n")  # memory and cpu not delegated: not applied
    (made,) = CgroupV2Limits(parent).prepare("deedmesh-other", request(app, ["true"], memory_mb=48, pids_limit=4))
    assert {f.name for f in Path(made).iterdir()} == {"pids.max"}
    with pytest.raises(NativeRunnerError):
        detect_limits(tmp_path / "no-such-cgroup")


def test_a_request_with_no_directory_or_command_is_refused(runner: NativeRunner, app: Path) -> None:
    with pytest.raises(NativeRunnerError, match="mounted at its workdir"):
        runner.start(ContainerRequest(job_id=7, replica=0, image="x", command=("true",)))
    with pytest.raises(NativeRunnerError, match="needs a command"):
        runner.start(ContainerRequest(job_id=7, replica=0, image="x", workdir="/app",
                                      mounts=(Mount(str(app), "/app"),)))
    assert issubclass(NativeRunnerError, CarRunnerError)  # WarReplica treats it as the runtime failing
    assert runner.list_managed() == []


def test_both_runtimes_fit_the_runtime_protocol(runner: NativeRunner) -> None:
    assert isinstance(runner, Runtime)
    assert isinstance(CarRunner(cast(Any, None), "0xcar"), Runtime)
    runner.ensure_image("anything:1", pull="always")  # nothing to do natively
