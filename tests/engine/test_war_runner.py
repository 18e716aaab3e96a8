"""The WAR runner on the real engine and real git: a web app built from a repository serves through
the node's front; a pushed commit rolls out while a probe loop sees no failed request; a broken
commit leaves the old version serving and is reported; a node restart adopts the running version;
a released replica leaves no container and no checkout behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import docker
import trio

from mesh._jobspec import WarJob, revision_of
from mesh._jobspec_load import parse_spec
from mesh._runner_car import CarRunner
from mesh._runner_war import WarReplica, WarSupervisor, serve_request, version_of
from mesh._scheduler import Plan
from mesh._wire_claim import Claims

from .conftest import BUSYBOX_IMAGE

BUILD = """#!/bin/sh
# writes the page the app serves; a line "fail" in VERSION breaks the build
set -e
mkdir -p out
if grep -q fail VERSION; then echo "refusing to build $(cat VERSION)"; exit 3; fi
echo "<p>version $(cat VERSION)</p>" > out/index.html
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


class Origin:
    """A bare repository (the remote a WAR job names) and a work tree that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "origin.git", root / "work"
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.git("clone", "-q", str(self.bare), str(self.work), cwd=root)
        (self.work / "build.sh").write_text(BUILD)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(["git", *args], cwd=cwd or self.work, env={**os.environ, **GIT_ENV}, check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    def push(self, version: str) -> str:
        (self.work / "VERSION").write_text(version + "\n")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"version {version}")
        self.git("push", "-q", "origin", "HEAD:main")
        return version_of(self.git("rev-parse", "HEAD"))


def spec_for(origin: Origin, poll_s: int = 1) -> WarJob:
    spec = parse_spec(f"""
kind: war
name: site
resources: {{cpu_millis: 200, memory_mb: 32}}
ports: [{{container: 8080}}]
health: {{type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1, retries: 3}}
restart: {{policy: always, backoff: {{initial_s: 1, max_s: 2}}}}
war:
  image: "{BUSYBOX_IMAGE}"
  pull: never
  repo: "{origin.url}"
  build: [sh, build.sh]
  run: [httpd, -f, -p, "8080", -h, /app/out]
  poll_s: {poll_s}
""")
    assert isinstance(spec, WarJob)
    return spec


async def get(port: int) -> str | None:
    """One HTTP/1.0 GET / through the node's front: the body, or None if the request failed."""
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):  # refused, timed out, reset: a failed request
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] + b" " else None


async def front_page(war: WarReplica) -> str | None:
    """GET / through the replica's front for container port 8080."""
    port = war.front_port(8080)
    assert port is not None
    return await get(port)


async def until(predicate: Callable[[], object], deadline_s: float, what: str) -> None:
    with trio.move_on_after(deadline_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.1)  # polling a real engine and git with a deadline
        return
    raise AssertionError(f"{what} within {deadline_s} s")


class Probe:
    """Requests through the front back to back; counts every answer and every failure."""

    def __init__(self, port: int) -> None:
        self.port, self.seen, self.failures = port, [], []  # type: ignore[var-annotated]

    async def run(self) -> None:
        while True:
            body = await get(self.port)
            if body is None:
                self.failures.append(trio.current_time())
            else:
                self.seen.append(body.strip())
            await trio.sleep(0.02)

    def serving(self, version: str) -> bool:
        return bool(self.seen) and self.seen[-1] == f"<p>version {version}</p>"


def checkout_of(version: str, spec: WarJob) -> str:
    """The name of a version's checkout under a revision of the spec (``WarReplica._checkout``)."""
    return f"{version}-{revision_of(spec)}"


def replica_containers(runner: CarRunner, job_id: int) -> list[tuple[str, str | None]]:
    return [(s.role, s.version) for s in runner.list_managed() if s.job_id == job_id]


async def test_a_pushed_commit_rolls_out_with_no_failed_request_and_a_broken_one_keeps_the_old(
        runner: CarRunner, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    first = origin.push("one")
    work = tmp_path / "node"
    changes: list[float] = []
    war = WarReplica(runner, 41, 0, spec_for(origin), work, limiter=trio.CapacityLimiter(4),
                     on_change=lambda: changes.append(trio.current_time()), check_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(war.run)
        port = war.front_port(8080)
        assert port is not None
        await until(lambda: war.report().serving == first, 60, "the first version serving")
        assert war.report().state == "healthy"
        assert await get(port) == "<p>version one</p>\n"
        probe = Probe(port)
        nursery.start_soon(probe.run)
        await until(lambda: probe.serving("one"), 10, "the probe seeing version one")

        second = origin.push("two")
        await until(lambda: probe.serving("two"), 60, "version two serving through the front")
        assert war.report().serving == second
        # the old version is gone once drained: one serving container, one checkout
        await until(lambda: replica_containers(runner, 41) == [("serve", second)], 30, "version one removed")
        assert sorted(p.name for p in (work / "41-0").iterdir()) == [checkout_of(second, war.spec)]

        broken = origin.push("fail")
        await until(lambda: war.report().failed == broken, 60, "the broken build reported")
        report = war.report()
        assert (report.serving, report.state) == (second, "healthy")
        assert f"build of {broken} exited 3: refusing to build fail" == report.reason
        assert report.failed_revision == ""  # a broken commit, not a spec revision the replica could not reach
        assert replica_containers(runner, 41) == [("serve", second)]  # the build container is gone too
        assert not (work / "41-0" / checkout_of(broken, war.spec)).exists()
        assert probe.serving("two")

        third = origin.push("three")  # the branch moves on: a good commit rolls out again
        await until(lambda: probe.serving("three"), 60, "version three serving")
        assert war.report().failed is None
        assert war.report().serving == third
        await until(lambda: len(probe.seen) > 10 + probe.seen.index("<p>version three</p>"), 10, "more probes")
        war.release()  # the node no longer holds the replica
        nursery.cancel_scope.cancel()

    assert probe.failures == [], f"{len(probe.failures)} failed requests of {len(probe.seen) + len(probe.failures)}"
    assert {"<p>version one</p>", "<p>version two</p>", "<p>version three</p>"} <= set(probe.seen)
    assert "<p>version fail</p>" not in probe.seen
    assert changes  # the claim set was told of each change
    # released (cancelled): no container, no checkout
    assert replica_containers(runner, 41) == []
    assert not (work / "41-0").exists()
    assert await get(port) is None  # the front is closed


async def test_a_restarted_node_adopts_the_running_version_instead_of_rebuilding(
        runner: CarRunner, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    version = origin.push("kept")
    spec = spec_for(origin, poll_s=3600)
    work = tmp_path / "node"
    # what a node that died left behind: the built checkout and its running container
    checkout = work / "42-1" / checkout_of(version, spec)
    checkout.parent.mkdir(parents=True)
    origin.git("clone", "-q", origin.url, str(checkout), cwd=tmp_path)
    await trio.run_process(["sh", "build.sh"], cwd=checkout, capture_stdout=True)
    left = await trio.to_thread.run_sync(runner.start, serve_request(42, 1, spec, version, checkout))
    status = await trio.to_thread.run_sync(runner.inspect, left)
    assert status is not None
    published = status.host_port(8080)
    assert published is not None
    with trio.fail_after(30):  # it was serving when its node died
        while await get(published) is None:  # noqa: ASYNC110
            await trio.sleep(0.1)  # polling a real container with a deadline
    (work / "42-1" / ".fetch-deadbeef").mkdir()  # a half-done fetch is cleared

    war = WarReplica(runner, 42, 1, spec, work, limiter=trio.CapacityLimiter(4), check_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(war.run)
        assert war.serving is not None  # adopted before the first poll
        assert war.serving.container_id == left
        assert await front_page(war) == "<p>version kept</p>\n"
        await until(lambda: war.report().state == "healthy", 20, "the adopted version checked healthy")
        assert [s.container_id for s in runner.list_managed() if s.job_id == 42] == [left]
        assert sorted(p.name for p in (work / "42-1").iterdir()) == [checkout_of(version, spec)]
        war.release()
        nursery.cancel_scope.cancel()
    assert replica_containers(runner, 42) == []


async def test_a_serving_container_that_dies_is_restarted_by_the_policy(
        runner: CarRunner, engine: docker.DockerClient, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    version = origin.push("sturdy")
    war = WarReplica(runner, 43, 0, spec_for(origin, poll_s=3600), tmp_path / "node",
                     limiter=trio.CapacityLimiter(4), check_s=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(war.run)
        await until(lambda: war.report().state == "healthy", 60, "serving")
        first = war.serving
        assert first is not None
        await trio.to_thread.run_sync(lambda: engine.containers.get(first.container_id).kill())
        await until(lambda: war.report().restarts == 1, 20, "a restart")
        await until(lambda: war.report().state == "healthy", 30, "healthy again")
        assert war.report().serving == version
        assert await front_page(war) == "<p>version sturdy</p>\n"
        war.release()
        nursery.cancel_scope.cancel()


async def test_a_node_that_stops_leaves_its_version_serving_and_adopts_it_when_back(
        runner: CarRunner, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    version = origin.push("durable")
    spec, work = spec_for(origin, poll_s=3600), tmp_path / "node"
    before = WarReplica(runner, 44, 0, spec, work, limiter=trio.CapacityLimiter(4), check_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(before.run)
        await until(lambda: before.report().state == "healthy", 60, "serving")
        nursery.cancel_scope.cancel()  # the node process stops: it does not release the replica
    assert before.serving is not None
    running = await trio.to_thread.run_sync(runner.inspect, before.serving.container_id)
    assert running is not None
    assert running.running  # the app kept running while its node was down
    after = WarReplica(runner, 44, 0, spec, work, limiter=trio.CapacityLimiter(4), check_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(after.run)
        assert after.serving is not None
        assert after.serving.container_id == running.container_id  # adopted, not built again
        assert after.report().serving == version
        assert await front_page(after) == "<p>version durable</p>\n"
        after.release()
        nursery.cancel_scope.cancel()
    assert replica_containers(runner, 44) == []


async def test_the_supervisor_runs_held_replicas_and_sweeps_checkouts_of_others(
        runner: CarRunner, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    version = origin.push("swept")
    spec, work = spec_for(origin, poll_s=3600), tmp_path / "war"
    for stale in ("9-0", "9-1"):  # left by a node that stopped, of replicas that moved meanwhile
        (work / stale / "0123456789ab").mkdir(parents=True)
    supervisor = WarSupervisor(runner, work, check_s=0.5, sweep_after_s=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.offer(Plan(Claims.of(()), {45: 0}, {45: spec}))
        await until(lambda: (r := supervisor.report(45, 0)) is not None and r.state == "healthy", 60, "serving")
        assert supervisor.sweep() == ["9-0", "9-1"]
        assert sorted(p.name for p in work.iterdir()) == ["45-0"]
        assert (work / "45-0" / checkout_of(version, spec)).is_dir()
        supervisor.offer(Plan(Claims.of(()), {}, {}))  # released: its containers and checkout go
        await until(lambda: not (work / "45-0").exists(), 30, "the released replica's checkout removed")
        assert replica_containers(runner, 45) == []
        nursery.cancel_scope.cancel()


async def test_a_new_spec_rolls_out_beside_the_serving_version_with_no_failed_request(
        runner: CarRunner, tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    (origin.work / "build.sh").write_text(BUILD.replace("version $(cat VERSION)", "$GREETING $(cat VERSION)"))
    version = origin.push("same")
    old = spec_for(origin, poll_s=3600).model_copy(update={"env": {"GREETING": "hello"}})
    new = old.model_copy(update={"env": {"GREETING": "bonjour"}})
    scaled = new.model_copy(update={"replicas": 3})  # a scale alone changes nothing here
    work = tmp_path / "war"
    supervisor = WarSupervisor(runner, work, check_s=0.3, sweep_after_s=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.offer(Plan(Claims.of(()), {46: 0}, {46: old}))
        await until(lambda: (r := supervisor.report(46, 0)) is not None and r.state == "healthy", 60, "serving")
        war = supervisor.replicas.get((46, 0))
        assert war is not None
        port = war.front_port(8080)
        assert port is not None
        probe = Probe(port)
        nursery.start_soon(probe.run)
        await until(lambda: probe.seen and probe.seen[-1] == "<p>hello same</p>", 10, "the probe on the old spec")
        assert supervisor.revision_of(46, 0) == (revision_of(old), "healthy", "")

        supervisor.offer(Plan(Claims.of(()), {46: 0}, {46: new}))  # the rolling update lets this replica move
        await until(lambda: probe.seen[-1] == "<p>bonjour same</p>", 60, "the new spec serving through the front")
        assert supervisor.replicas.get((46, 0)) is war  # taken in place: the same replica task and front
        assert supervisor.revision_of(46, 0) == (revision_of(new), "healthy", "")
        assert war.report().serving == version  # the same commit, under the new revision
        await until(lambda: len(replica_containers(runner, 46)) == 1, 30, "the old revision removed")
        assert sorted(p.name for p in (work / "46-0").iterdir()) == [checkout_of(version, new)]
        served = war.serving
        supervisor.offer(Plan(Claims.of(()), {46: 0}, {46: scaled}))
        await until(lambda: len(probe.seen) > 20 + probe.seen.index("<p>bonjour same</p>"), 10, "more probes")
        assert war.serving is not None
        assert served is not None
        assert war.serving.container_id == served.container_id  # nothing rolled for a scale
        failures, answered = list(probe.failures), len(probe.seen)  # before the release closes the front
        supervisor.offer(Plan(Claims.of(()), {}, {}))
        await until(lambda: not (work / "46-0").exists(), 30, "released")
        nursery.cancel_scope.cancel()
    assert failures == [], f"{len(failures)} failed requests of {answered + len(failures)}"
    assert replica_containers(runner, 46) == []
