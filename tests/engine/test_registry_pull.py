"""Images pulled from a local registry (Debian ``docker-registry`` on 127.0.0.1, the ``registry``
and ``auth_registry`` fixtures): by the runner, with and without a login, and by the reconciler
running a CAR job spec whose image only the registry has."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import docker
import pytest
import trio
from docker.errors import ImageNotFound

from mesh._jobspec import CarJob, RegistryAuth
from mesh._jobspec_load import parse_spec
from mesh._reconciler import Reconciler, registry_credentials
from mesh._runner_car import CarRunner, ContainerRequest, ImageUnavailable, RegistryCredentials
from mesh._scheduler import Plan
from mesh._wire_claim import Claims

from .conftest import LocalRegistry, forget_image, push_marked_image
from .test_car_runner import _exited, wait_for
from .test_mesh_car import until


def fresh_ref(registry: LocalRegistry, scratch_images: list[str]) -> str:
    ref = f"{registry.address}/deedmesh/t{uuid.uuid4().hex[:10]}:1"
    scratch_images.append(ref)
    return ref


def test_ensure_image_pulls_what_only_the_registry_has_and_it_runs(
    engine: docker.DockerClient, runner: CarRunner, registry: LocalRegistry, scratch_images: list[str]
) -> None:
    ref = fresh_ref(registry, scratch_images)
    marker, image_id = push_marked_image(engine, ref)
    with pytest.raises(ImageNotFound):
        engine.images.get(ref)

    runner.ensure_image(ref)
    assert engine.images.get(ref).id == image_id
    runner.start(ContainerRequest(job_id=11, replica=0, image=ref, command=("cat", "/marker")))
    exited = wait_for(lambda: _exited(runner, 11, 0), 15, "the pulled image's container to exit")
    assert exited.exit_code == 0
    assert runner.logs(11, 0).strip() == marker  # the layer that exists only in the registry
    assert runner.stop(11, 0) is True


def test_a_missing_tag_is_image_unavailable_naming_the_image(runner: CarRunner, registry: LocalRegistry) -> None:
    ref = registry.busybox.rpartition(":")[0] + ":no-such-tag"  # the repository exists, the tag does not
    with pytest.raises(ImageUnavailable) as caught:
        runner.ensure_image(ref)
    assert caught.value.image == ref
    assert str(caught.value).startswith(f"image {ref}: pull failed: ")
    assert "manifest unknown" in caught.value.reason


def test_pull_always_fetches_a_moved_tag_if_missing_keeps_the_local_copy(
    engine: docker.DockerClient, runner: CarRunner, registry: LocalRegistry, scratch_images: list[str]
) -> None:
    ref = fresh_ref(registry, scratch_images)
    _, first = push_marked_image(engine, ref)
    runner.ensure_image(ref)
    assert engine.images.get(ref).id == first
    _, second = push_marked_image(engine, ref)  # the tag moves in the registry; our copy is untagged
    repository, _, tag = ref.rpartition(":")
    engine.images.get(first).tag(repository, tag)

    runner.ensure_image(ref)  # if-missing: there is a copy, no pull
    assert engine.images.get(ref).id == first
    runner.ensure_image(ref, pull="always")
    assert engine.images.get(ref).id == second
    engine.images.remove(first)


def test_a_login_is_sent_with_the_pull_and_a_wrong_one_refused(
    engine: docker.DockerClient, runner: CarRunner, auth_registry: LocalRegistry, scratch_images: list[str]
) -> None:
    ref = auth_registry.busybox
    scratch_images.append(ref)
    assert auth_registry.credentials is not None
    forget_image(engine, ref)
    # dockerd: "no basic auth credentials"; podman: "unauthorized: authentication required"
    with pytest.raises(ImageUnavailable, match=r"no basic auth credentials|unauthorized"):
        runner.ensure_image(ref)
    wrong = RegistryCredentials(auth_registry.credentials.username, "not-the-password")
    with pytest.raises(ImageUnavailable, match="unauthorized") as caught:
        runner.ensure_image(ref, credentials=wrong)
    assert "not-the-password" not in str(caught.value)
    assert "not-the-password" not in repr(wrong)
    with pytest.raises(ImageNotFound):
        engine.images.get(ref)

    runner.ensure_image(ref, credentials=auth_registry.credentials)
    assert engine.images.get(ref).id == engine.images.get("localhost/deedmesh-busybox:1").id


# --- through the reconciler -----------------------------------------------------------------------


def car_spec(image: str, extra: str = "") -> CarJob:
    spec = parse_spec(f"""
kind: car
name: pulled
resources: {{cpu_millis: 100, memory_mb: 32}}
restart: {{policy: always, backoff: {{initial_s: 1, max_s: 1}}}}
car: {{image: "{image}", command: [sh, -c, "cat /marker 2>/dev/null; echo up; exec sleep 600"], {extra}}}
""")
    assert isinstance(spec, CarJob)
    return spec


def holding(job_id: int, spec: CarJob) -> Plan:
    return Plan(Claims.of(()), {job_id: 0}, {job_id: spec})


async def test_the_reconciler_runs_a_job_whose_image_only_the_registry_has(
    engine: docker.DockerClient, runner: CarRunner, registry: LocalRegistry, scratch_images: list[str]
) -> None:
    ref = fresh_ref(registry, scratch_images)
    marker, image_id = await trio.to_thread.run_sync(push_marked_image, engine, ref)
    reconciler = Reconciler(runner, check_s=0.2)
    reconciler.offer(holding(21, car_spec(ref, "pull: always")))
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)
        await until(lambda: reconciler.state_of(21, 0) == ("running", 0), 30, "the pulled job running")
        await until(lambda: "up" in runner.logs(21, 0), 10, "the job's output", blocking=True)
        nursery.cancel_scope.cancel()
    assert engine.images.get(ref).id == image_id
    assert runner.logs(21, 0).split() == [marker, "up"]
    assert reconciler.failures == 0
    assert runner.stop(21, 0, timeout_s=1) is True


async def test_the_reconciler_logs_in_with_the_password_the_spec_names(
    engine: docker.DockerClient, runner: CarRunner, auth_registry: LocalRegistry, scratch_images: list[str],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert auth_registry.credentials is not None
    scratch_images.append(auth_registry.busybox)
    await trio.to_thread.run_sync(forget_image, engine, auth_registry.busybox)
    variable = f"DEEDMESH_TEST_PW_{uuid.uuid4().hex[:8].upper()}"
    spec = car_spec(auth_registry.busybox,
                    f"pull: if-missing, registry_auth: {{username: {auth_registry.credentials.username}, "
                    f"password_env: {variable}}}")
    reconciler = Reconciler(runner, check_s=0.2)
    reconciler.offer(holding(22, spec))
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)

        def refused() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "replica did not start"]

        # the variable is not set on this node yet: the replica waits, the warning names the variable
        await until(lambda: bool(refused()), 15, "the missing password reported")
        assert f"${variable} is not set on this node" in refused()[0].error  # type: ignore[attr-defined]
        assert reconciler.state_of(22, 0) == ("starting", 0)
        monkeypatch.setenv(variable, auth_registry.credentials.password)
        await until(lambda: reconciler.state_of(22, 0) == ("running", 0), 30, "the job running once the secret is set")
        nursery.cancel_scope.cancel()
    assert auth_registry.credentials.password not in caplog.text
    assert engine.images.get(auth_registry.busybox)
    assert runner.stop(22, 0, timeout_s=1) is True


# --- without an engine ----------------------------------------------------------------------------


def test_registry_credentials_read_the_reference_never_inline(tmp_path: Path) -> None:
    assert registry_credentials("img", RegistryAuth(username="u", password_env="PW"), {"PW": "s3"}) == \
        RegistryCredentials("u", "s3")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")  # one trailing newline, as `echo` writes it, is not part of it
    by_file = RegistryAuth(username="u", password_file=str(secret))
    assert registry_credentials("img", by_file, {}).password == "from-file"
    with pytest.raises(ImageUnavailable, match=r"\$PW is not set on this node"):
        registry_credentials("img", RegistryAuth(username="u", password_env="PW"), {})
    secret.write_text("")
    with pytest.raises(ImageUnavailable, match="is empty"):
        registry_credentials("img", by_file, {})
    missing = RegistryAuth(username="u", password_file=str(tmp_path / "absent"))
    with pytest.raises(ImageUnavailable, match="No such file"):
        registry_credentials("img", missing, {})
