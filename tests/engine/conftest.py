"""A CAR runner per test on the session's real container engine (the ``engine`` fixture is in
tests/conftest.py), and local registries for the pull tests: started by scripts/engine.sh
(Debian ``docker-registry`` on 127.0.0.1), stopped by PID at the end if this session started them;
like the engine, a registry that cannot start fails the tests that need it, never skips them."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.errors import NotFound
from docker.utils import parse_repository_tag

from mesh._runner_car import CarRunner, RegistryCredentials

from ..conftest import ENGINE_SH, ENGINE_SH_TIMEOUT_S, _live_pid

BUSYBOX_IMAGE = "localhost/deedmesh-busybox:1"
REGISTRY_USER = "deedmesh"


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


@dataclass(frozen=True)
class LocalRegistry:
    """A registry on 127.0.0.1 holding the busybox test image as ``busybox`` (not kept in the engine)."""

    address: str  # 127.0.0.1:<port>
    busybox: str
    credentials: RegistryCredentials | None = None


def push(engine: docker.DockerClient, ref: str, credentials: RegistryCredentials | None = None) -> None:
    """Push through the Engine API; the engine reports failures inside the 200 stream, so read it."""
    repository, tag = parse_repository_tag(ref)
    auth = None if credentials is None else credentials.to_docker()
    progress = engine.api.push(repository, tag, stream=True, decode=True, auth_config=auth)
    errors = [str(entry["error"]) for entry in progress if isinstance(entry, dict) and entry.get("error")]
    if errors:
        pytest.fail(f"pushing {ref} failed: {errors[-1]}", pytrace=False)


def forget_image(engine: docker.DockerClient, ref: str, *, force: bool = False) -> None:
    """Untag ``ref`` here (the image goes with it if nothing else names it)."""
    with contextlib.suppress(NotFound):
        engine.images.remove(ref, force=force)


def push_marked_image(engine: docker.DockerClient, ref: str) -> tuple[str, str]:
    """Push busybox plus a layer holding /marker (a fresh random text) as ``ref``, then drop it from
    the engine, so only the registry has that layer. Returns (marker, image id); the id, a digest
    of the image config, is the same after a pull."""
    marker = f"marker-{uuid.uuid4().hex}"
    container = engine.containers.create(BUSYBOX_IMAGE, ["sh", "-c", f"echo {marker} > /marker"])
    try:
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        repository, tag = parse_repository_tag(ref)
        image = container.commit(repository, tag)
    finally:
        container.remove(force=True)
    push(engine, ref)
    forget_image(engine, ref)
    assert image.id is not None
    return marker, image.id


def _start_registry(engine_dir: Path, name: str, *auth: str) -> tuple[str, bool]:
    """(address, whether this call started it); fails the test session's users if it cannot."""
    pid_file = engine_dir / f"registry-{name}" / "registry.pid"
    before = _live_pid(pid_file)
    result = subprocess.run([str(ENGINE_SH), "registry", name, *auth], capture_output=True, text=True,
                            timeout=ENGINE_SH_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/engine.sh registry {name} exited {result.returncode}; the pull tests need it:\n"
                    f"{result.stderr}{result.stdout}", pytrace=False)
    after = _live_pid(pid_file)
    return result.stdout.strip().splitlines()[-1].removeprefix("REGISTRY="), after is not None and after != before


def _stop_registry(name: str) -> None:
    subprocess.run([str(ENGINE_SH), "registry-stop", name], capture_output=True, timeout=60, check=False)


def _serve_busybox(engine: docker.DockerClient, address: str, credentials: RegistryCredentials | None) -> str:
    ref = f"{address}/deedmesh/busybox:1"
    repository, tag = parse_repository_tag(ref)
    engine.images.get(BUSYBOX_IMAGE).tag(repository, tag)
    push(engine, ref, credentials)
    forget_image(engine, ref)  # only the tag: the layers stay under BUSYBOX_IMAGE
    return ref


@pytest.fixture(scope="session")
def registry(engine: docker.DockerClient, engine_dir: Path) -> Iterator[LocalRegistry]:
    """An open registry (no auth) with the busybox test image."""
    address, started_here = _start_registry(engine_dir, "local")
    try:
        yield LocalRegistry(address, _serve_busybox(engine, address, None))
    finally:
        if started_here:
            _stop_registry("local")


@pytest.fixture(scope="session")
def auth_registry(engine: docker.DockerClient, engine_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry that wants HTTP basic auth (a fresh password each session), with the busybox image.

    Plain HTTP: distribution 2.8 takes htpasswd auth without TLS, and dockerd sends the login to
    127.0.0.0/8 (insecure by default) as it would to a TLS registry.
    """
    credentials = RegistryCredentials(REGISTRY_USER, secrets.token_urlsafe(18))
    password_file = tmp_path_factory.mktemp("registry-auth") / "password"
    password_file.touch(mode=0o600)
    password_file.write_text(credentials.password)
    address, started_here = _start_registry(engine_dir, "auth", REGISTRY_USER, str(password_file))
    try:
        yield LocalRegistry(address, _serve_busybox(engine, address, credentials), credentials)
    finally:
        if started_here:
            _stop_registry("auth")


@pytest.fixture
def scratch_images(engine: docker.DockerClient) -> Iterator[list[str]]:
    """Image refs a test pulls or builds: removed from the engine afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        forget_image(engine, ref, force=True)  # even if a failed test left a container on it
