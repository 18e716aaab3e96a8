"""Session-wide fixtures: chain backends (embedded eth-tester, anvil started here and stopped by
PID) and the container engine (started by scripts/engine.sh, stopped by PID only if we started it;
CI requires it, so a failure to start it fails the tests that need it, never skips them)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from contracts import Anvil, Chain
from mesh._engine import DEFAULT_ENGINE_DIR, connect_engine

REPO = Path(__file__).resolve().parents[1]
ENGINE_SH = REPO / "scripts" / "engine.sh"
# A first run on a fresh machine installs docker.io and busybox-static with apt (about 30 s).
ENGINE_SH_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """One anvil process for the session, on 127.0.0.1, stopped by its PID at the end."""
    with Anvil() as node:
        yield node.url


@pytest.fixture(scope="session", params=["eth-tester", pytest.param("anvil", marks=pytest.mark.anvil)])
def chain(request: pytest.FixtureRequest) -> Chain:
    """The same tests run on the embedded chain and, marked ``anvil``, on a real JSON-RPC node."""
    if request.param == "anvil":
        return Chain.connect(request.getfixturevalue("anvil_url"))
    return Chain.embedded()


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
