"""The real container engine for this session: started by scripts/engine.sh, stopped by PID only if we started it.

CI requires the engine, so a failure to start it fails the tests (with the script's own error output);
it is never a skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from mesh._engine import DEFAULT_ENGINE_DIR, connect_engine
from mesh._runner_car import CarRunner

REPO = Path(__file__).resolve().parents[2]
ENGINE_SH = REPO / "scripts" / "engine.sh"
BUSYBOX_IMAGE = "localhost/deedmesh-busybox:1"
# A first run on a fresh machine installs docker.io and busybox-static with apt (about 30 s).
ENGINE_SH_TIMEOUT_S = 600


def _live_pid(pid_file: Path) -> int | None:
    """The PID in the engine's pid file if that process exists, else None."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.fixture(scope="session")
def engine_dir() -> Path:
    return Path(os.environ.get("DEEDMESH_ENGINE_DIR", str(DEFAULT_ENGINE_DIR)))


@pytest.fixture(scope="session")
def engine(engine_dir: Path) -> Iterator[docker.DockerClient]:
    """A client on the project's engine; whether we started it is read from the pid file before and after."""
    pid_file = engine_dir / "engine.pid"
    before = _live_pid(pid_file)
    result = subprocess.run([str(ENGINE_SH)], capture_output=True, text=True, timeout=ENGINE_SH_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/engine.sh exited {result.returncode}; the container engine is required:\n"
            f"{result.stderr}{result.stdout}",
            pytrace=False,
        )
    after = _live_pid(pid_file)
    started_here = after is not None and after != before
    url = result.stdout.strip().splitlines()[-1].removeprefix("DOCKER_HOST=")
    client = connect_engine(url)
    try:
        yield client
    finally:
        client.close()
        if started_here:
            subprocess.run([str(ENGINE_SH), "stop"], capture_output=True, timeout=60, check=False)


@pytest.fixture
def runner(engine: docker.DockerClient) -> Iterator[CarRunner]:
    """A runner for a node address unique to this test, so tests never see each other's containers.

    Teardown removes, by id, whatever containers this test's node still has (the tests stop their
    own; this only catches a test that failed half-way).
    """
    car = CarRunner(engine, f"0xtest{uuid.uuid4().hex[:12]}")
    yield car
    for leftover in car.list_managed():
        engine.containers.get(leftover.container_id).remove(force=True)
