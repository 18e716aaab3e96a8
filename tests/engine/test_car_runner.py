"""The CAR runner against a real engine (dockerd or podman), plus its pure helpers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import docker
import pytest
import requests

from mesh._engine import EngineUnavailable, connect_engine, list_engine_candidates, read_url_file
from mesh._runner_car import (
    CarRunner,
    ContainerRequest,
    ContainerStatus,
    HealthCheck,
    ImageUnavailable,
    PortMapping,
    container_name,
    next_backoff,
)

from .conftest import BUSYBOX_IMAGE

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy, or fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def http_get(port: int, path: str) -> str | None:
    """The body, or None while nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def web_request(job_id: int) -> ContainerRequest:
    return ContainerRequest(
        job_id=job_id,
        replica=0,
        image=BUSYBOX_IMAGE,
        command=("sh", "-c", 'echo "<p>$GREETING</p>" > /www/env.html; echo serving; exec httpd -f -p 8080 -h /www'),
        env={"GREETING": "hello-env"},
        ports=(PortMapping(8080, "tcp", None),),
        cpu_millis=500,
        memory_mb=64,
        pids_limit=64,
        health=HealthCheck.http(8080, "/env.html", interval_s=0.5, timeout_s=2.0, retries=3),
        labels={"test": "car-runner"},
    )


# --- against the engine -------------------------------------------------------------------------


def test_web_container_lifecycle(engine: docker.DockerClient, runner: CarRunner) -> None:
    request = web_request(job_id=7)
    runner.ensure_image(BUSYBOX_IMAGE)

    container_id = runner.start(request)
    status = runner.status(7, 0)
    assert status is not None
    assert status.container_id == container_id
    assert status.name == container_name(runner.node_address, 7, 0)
    port = status.host_port(8080)
    assert port is not None
    assert [b.host_ip for b in status.ports] == ["127.0.0.1"]

    assert wait_for(lambda: http_get(port, "/env.html"), 10, "HTTP on the published port") == "<p>hello-env</p>\n"
    assert status.health in ("starting", "healthy")
    if is_podman(engine):
        # podman schedules health checks with systemd timers; without systemd they never run on their own
        # ("unable to get systemd connection to add healthchecks" in its log), so the state stays "starting".
        current = runner.status(7, 0)
        assert current is not None
        assert current.health == "starting"
    else:
        healthy = wait_for(lambda: _healthy(runner), 15, "the health check to pass")
        assert (healthy.running, healthy.state, healthy.exit_code, healthy.likely_oom) == (True, "running", None, False)

    host_config = engine.containers.get(container_id).attrs["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config["PidsLimit"] == 64
    assert host_config["Init"] is True
    assert host_config["RestartPolicy"]["Name"] in ("no", "")

    managed = runner.list_managed()
    assert [(s.container_id, s.job_id, s.replica) for s in managed] == [(container_id, 7, 0)]
    assert "serving" in runner.logs(7, 0, tail=10)

    # Idempotent: the same request again (a node restart re-running its reconcile) adopts it.
    assert runner.start(request) == container_id
    assert len(runner.list_managed()) == 1

    assert runner.stop(7, 0, timeout_s=5) is True
    assert runner.status(7, 0) is None
    assert runner.list_managed() == []
    assert runner.stop(7, 0) is False
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(container_id)


def _healthy(runner: CarRunner) -> ContainerStatus | None:
    status = runner.status(7, 0)
    return status if status is not None and status.health == "healthy" else None


def test_exited_container_is_recreated_as_a_restart(runner: CarRunner) -> None:
    request = ContainerRequest(job_id=8, replica=1, image=BUSYBOX_IMAGE, command=("sh", "-c", "exit 3"))
    first = runner.start(request)
    exited = wait_for(lambda: _exited(runner, 8, 1), 10, "the container to exit")
    assert (exited.exit_code, exited.restarts, exited.running) == (3, 0, False)

    second = runner.start(request)
    assert second != first
    again = wait_for(lambda: _exited(runner, 8, 1), 10, "the recreated container to exit")
    assert again.restarts == 1
    assert len(runner.list_managed()) == 1
    assert runner.stop(8, 1) is True


def _exited(runner: CarRunner, job_id: int, replica: int) -> ContainerStatus | None:
    status = runner.status(job_id, replica)
    return status if status is not None and status.exit_code is not None else None


def is_podman(engine: docker.DockerClient) -> bool:
    return any("podman" in str(c.get("Name", "")).lower() for c in engine.version().get("Components", []))


def test_memory_hog_is_reported_oom_killed(engine: docker.DockerClient, runner: CarRunner) -> None:
    # dd holds its 64 MiB block buffer in memory: well over a 16 MiB limit (swap limited to the same).
    request = ContainerRequest(
        job_id=9, replica=0, image=BUSYBOX_IMAGE, memory_mb=16, command=("dd", "if=/dev/zero", "of=/dev/null", "bs=64M")
    )
    runner.start(request)
    status = wait_for(lambda: _exited(runner, 9, 0), 20, "the memory hog to be killed")
    assert status.exit_code == 137
    assert status.likely_oom
    # dockerd sets State.OOMKilled; podman 4.3 + runc on cgroup v1 does not (notes §1.5), hence likely_oom.
    if not is_podman(engine):
        assert status.oom_killed
    assert runner.stop(9, 0) is True


def test_ensure_image_loads_a_docker_archive_and_reports_pull_failures(
    engine: docker.DockerClient, runner: CarRunner, tmp_path: Path
) -> None:
    repository, version = "localhost/deedmesh-test-load", uuid.uuid4().hex[:8]
    tag = f"{repository}:{version}"
    engine.images.get(BUSYBOX_IMAGE).tag(repository, version)
    archive = tmp_path / "image.tar"
    try:
        with archive.open("wb") as out:
            for chunk in engine.images.get(tag).save(named=tag):
                out.write(chunk)
        engine.images.remove(tag)  # only the tag: the busybox image keeps its own
        runner.ensure_image(tag, image_file=archive)
        assert tag in engine.images.get(tag).tags
    finally:
        engine.images.remove(tag)

    with pytest.raises(ImageUnavailable, match="pull failed"):
        runner.ensure_image("127.0.0.1:1/deedmesh/nope:1")


def test_connect_engine_finds_the_url_file(engine: docker.DockerClient, engine_dir: Path) -> None:
    client = connect_engine(environ={"DEEDMESH_ENGINE_DIR": str(engine_dir)})
    try:
        assert client.ping()
    finally:
        client.close()


# --- without an engine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [("unix:///nonexistent/deedmesh.sock", "no such socket"), ("tcp://127.0.0.1:1", "onnection refused")],
)
def test_connect_engine_names_what_it_tried(url: str, reason: str) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        connect_engine(url, timeout_s=5)
    message = str(caught.value)
    assert f"explicit url {url}: " in message
    assert reason in message
    assert caught.value.tried[0][:2] == ("explicit url", url)


def test_candidates_follow_the_documented_order(tmp_path: Path) -> None:
    (tmp_path / "engine.env").write_text("DOCKER_HOST=unix:///tmp/x/docker.sock\n")
    environ = {"DOCKER_HOST": "tcp://10.0.0.1:2375", "DEEDMESH_ENGINE_DIR": str(tmp_path)}
    assert [c.url for c in list_engine_candidates(environ=environ)] == [
        "tcp://10.0.0.1:2375",
        "unix:///tmp/x/docker.sock",
        "unix:///var/run/docker.sock",
        "unix:///run/podman/podman.sock",
    ]
    assert [c.url for c in list_engine_candidates("unix:///only.sock", environ)] == ["unix:///only.sock"]
    nothing_here = {"DEEDMESH_ENGINE_DIR": str(tmp_path / "absent")}
    assert [c.source for c in list_engine_candidates(environ=nothing_here)] == ["docker default", "podman rootful"]


def test_read_url_file_accepts_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "engine.env"
    assert read_url_file(path) is None
    path.write_text("DOCKER_HOST=unix:///a.sock\n")
    assert read_url_file(path) == "unix:///a.sock"
    path.write_text("unix:///b.sock")
    assert read_url_file(path) == "unix:///b.sock"


def test_next_backoff_doubles_up_to_the_cap() -> None:
    delays = [next_backoff(n, initial_s=1.0, max_s=10.0, multiplier=2.0) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert next_backoff(10**9, initial_s=0.5, max_s=300.0, multiplier=2.0) == 300.0
    assert next_backoff(5, initial_s=3.0, max_s=60.0, multiplier=1.0) == 3.0
    assert next_backoff(5, initial_s=0.0, max_s=60.0, multiplier=2.0) == 0.0


@pytest.mark.parametrize(
    ("attempt", "initial_s", "max_s", "multiplier"),
    [(-1, 1.0, 10.0, 2.0), (0, -1.0, 10.0, 2.0), (0, 5.0, 1.0, 2.0), (0, 1.0, 10.0, 0.5)],
)
def test_next_backoff_rejects_nonsense(attempt: int, initial_s: float, max_s: float, multiplier: float) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        next_backoff(attempt, initial_s, max_s, multiplier)


def test_request_rejects_reserved_labels_and_hashes_its_spec() -> None:
    with pytest.raises(ValueError, match="reserved"):
        ContainerRequest(job_id=1, replica=0, image="x", labels={"deedmesh.job": "2"})
    a = ContainerRequest(job_id=1, replica=0, image="x", env={"A": "1"}, ports=((80, "tcp", None),))
    assert a.ports == (PortMapping(80, "tcp", None),)
    assert a.spec_hash() == ContainerRequest(job_id=1, replica=0, image="x", env={"A": "1"}, ports=a.ports).spec_hash()
    assert a.spec_hash() != ContainerRequest(job_id=1, replica=0, image="x", env={"A": "2"}).spec_hash()


class _Removing:
    """A container the engine answers 409 about on removal (the engine's own words)."""

    status = "exited"

    def __init__(self, explanation: str) -> None:
        self.explanation = explanation

    def remove(self, force: bool) -> None:
        answer = requests.Response()
        answer.status_code = 409
        raise docker.errors.APIError("409 Client Error: Conflict", response=answer, explanation=self.explanation)


def test_a_removal_already_in_progress_counts_as_removed_and_other_conflicts_raise(runner: CarRunner) -> None:
    # two removers of one container at shutdown (a released replica's front and the reconciler):
    # the second is told the first's removal is under way, which is what it wanted
    runner._remove(_Removing("removal of container 07c4 is already in progress"), 1)  # type: ignore[arg-type]
    with pytest.raises(docker.errors.APIError, match="unpause it first"):
        runner._remove(_Removing("container 07c4 is paused, unpause it first"), 1)  # type: ignore[arg-type]
