"""A WAR replica with no container engine: ``WarReplica`` over ``NativeRunner``, real git, real
processes. A site built from a bare repository serves through the node's front; a pushed commit
rolls out while a probe loop sees no failed request; a node that stops leaves its version running
and a new node process (a new runner over the same directory) adopts it; a released replica leaves
no process and no checkout behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mesh._jobspec import WarJob
from mesh._jobspec_load import parse_spec
from mesh._native_limits import Limits, detect_limits
from mesh._runner_native import NativeRunner
from mesh._runner_war import WarReplica

from ..engine.test_war_runner import Origin, Probe, get, until

# The app writes its pid where the test can see it, then becomes the server ($PORT: the native contract).
RUN = 'echo $$ > "$PIDS_DIR/$(cat VERSION)"; exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory out'
def spec_for(origin: Origin, pids: Path, poll_s: int = 1) -> WarJob:
    spec = parse_spec(f"""
kind: war
name: site
resources: {{cpu_millis: 1000, memory_mb: 128}}
ports: [{{container: 8080}}]
env: {{PIDS_DIR: "{pids}"}}
health: {{type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1, retries: 3}}
restart: {{policy: always, backoff: {{initial_s: 1, max_s: 2}}}}
war:
  image: "ignored/natively:1"
  pull: never
  repo: "{origin.url}"
  build: [sh, build.sh]
  run: [sh, -c, '{RUN}']
  poll_s: {poll_s}
""")
    assert isinstance(spec, WarJob)
    return spec


@pytest.fixture(scope="module")
def limits() -> Limits:
    return detect_limits()


@pytest.fixture
def node() -> str:
    return f"0xnative{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pids(tmp_path: Path) -> Path:
    directory = tmp_path / "pids"
    directory.mkdir()
    return directory


@pytest.fixture
def cleanup(tmp_path: Path, node: str, limits: Limits) -> Iterator[None]:
    """Teardown removes, by id, whatever a failed test left running in this node's directory."""
    yield
    leftover = NativeRunner(tmp_path / "native", node, limits=limits)
    for status in leftover.list_managed():
        leftover.remove(status.container_id, timeout_s=1)


def processes(runner: NativeRunner, job_id: int) -> list[tuple[str, str | None, bool]]:
    return [(s.role, s.version, s.running) for s in runner.list_managed() if s.job_id == job_id]


def alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2 :].split()[0] not in "ZX"


def app_pid(pids: Path, version: str) -> int:
    return int((pids / version).read_text())


@pytest.mark.usefixtures("cleanup")
async def test_a_native_replica_serves_and_rolls_out_a_pushed_commit_with_no_failed_request(
        tmp_path: Path, node: str, pids: Path, limits: Limits) -> None:
    origin = Origin(tmp_path / "origin")
    first = await trio.to_thread.run_sync(origin.push, "one")
    runner = NativeRunner(tmp_path / "native", node, limits=limits)
    work = tmp_path / "war"
    war = WarReplica(runner, 61, 0, spec_for(origin, pids), work, limiter=trio.CapacityLimiter(4), check_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(war.run)
        port = war.front_port(8080)
        assert port is not None
        await until(lambda: war.report().serving == first, 15, "the first version serving")
        assert war.report().state == "healthy"
        assert await get(port) == "<p>version one</p>\n"
        probe = Probe(port)
        nursery.start_soon(probe.run)
        await until(lambda: probe.serving("one"), 5, "the probe seeing version one")

        second = await trio.to_thread.run_sync(origin.push, "two")
        await until(lambda: probe.serving("two"), 15, "version two serving through the front")
        assert war.report().serving == second
        # the old version is stopped once drained: one serving process, one checkout
        await until(lambda: processes(runner, 61) == [("serve", second, True)], 15, "version one removed")
        assert not alive(app_pid(pids, "one"))
        # its checkout goes right after its process (polled: the sweep follows the stop)
        await until(lambda: [p.name.split("-")[0] for p in (work / "61-0").iterdir()] == [second], 10,
                    "version one's checkout removed")
        await until(lambda: len(probe.seen) > 5 + probe.seen.index("<p>version two</p>"), 5, "more probes")
        serving_pid = app_pid(pids, "two")
        assert alive(serving_pid)
        war.release()  # the node no longer holds the replica
        nursery.cancel_scope.cancel()

    assert probe.failures == [], f"{len(probe.failures)} failed requests of {len(probe.seen) + len(probe.failures)}"
    assert {"<p>version one</p>", "<p>version two</p>"} <= set(probe.seen)
    # released: no process, no checkout, no state file, the front closed
    assert runner.list_managed() == []
    assert not alive(serving_pid)
    assert not (work / "61-0").exists()
    assert list(runner.work_dir.iterdir()) == []
    assert await get(port) is None


@pytest.mark.usefixtures("cleanup")
async def test_a_new_node_process_adopts_the_native_version_left_running(
        tmp_path: Path, node: str, pids: Path, limits: Limits) -> None:
    origin = Origin(tmp_path / "origin")
    version = await trio.to_thread.run_sync(origin.push, "durable")
    spec, work = spec_for(origin, pids, poll_s=3600), tmp_path / "war"
    before = WarReplica(NativeRunner(tmp_path / "native", node, limits=limits), 62, 0, spec, work,
                        limiter=trio.CapacityLimiter(4), check_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(before.run)
        await until(lambda: before.report().state == "healthy", 15, "serving")
        nursery.cancel_scope.cancel()  # the node process stops: it does not release the replica
    assert before.serving is not None
    left_pid = app_pid(pids, "durable")
    assert alive(left_pid)  # the app kept running while its node was down

    runner = NativeRunner(tmp_path / "native", node, limits=limits)  # the node's next process
    after = WarReplica(runner, 62, 0, spec, work, limiter=trio.CapacityLimiter(4), check_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(after.run)
        assert after.serving is not None
        assert after.serving.container_id == before.serving.container_id  # adopted, not built again
        assert after.report().serving == version
        port = after.front_port(8080)
        assert port is not None
        assert await get(port) == "<p>version durable</p>\n"
        await until(lambda: after.report().state == "healthy", 10, "the adopted version checked healthy")
        assert app_pid(pids, "durable") == left_pid
        after.release()
        nursery.cancel_scope.cancel()
    assert runner.list_managed() == []
    assert not alive(left_pid)
    assert not (work / "62-0").exists()
