"""A replica whose container the kernel OOM-kills shows ``oom-killed`` (not ``exited``) in the
state the node publishes, with one structured warning per kill, through the reconciler on the
real engine; the memory hog is busybox ``dd`` holding a 64 MiB block in a 16 MiB container."""

from __future__ import annotations

import logging

import docker
import pytest
import trio

from mesh._jobspec import CarJob
from mesh._jobspec_load import parse_spec
from mesh._reconciler import Reconciler
from mesh._runner_car import CarRunner
from mesh._scheduler import Plan
from mesh._wire_claim import ClaimEntry, Claims

from .test_car_runner import is_podman
from .test_mesh_car import until


def hog(policy: str) -> CarJob:
    spec = parse_spec(f"""
kind: car
name: hog
resources: {{cpu_millis: 100, memory_mb: 16}}
restart: {{policy: {policy}, backoff: {{initial_s: 1, max_s: 1}}}}
car: {{image: "localhost/deedmesh-busybox:1", command: [dd, if=/dev/zero, of=/dev/null, bs=64M], pull: never}}
""")
    assert isinstance(spec, CarJob)
    return spec


def oom_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "deedmesh.runner" and r.getMessage() == "replica OOM-killed"]


async def test_an_oom_killed_replica_is_reported_once(
    engine: docker.DockerClient, runner: CarRunner, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[str, int]] = []
    reconciler = Reconciler(runner, check_s=0.2, on_change=lambda: changes.append(reconciler.state_of(31, 0)))
    reconciler.offer(Plan(Claims.of(()), {31: 0}, {31: hog("never")}))
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)
        await until(lambda: reconciler.state_of(31, 0) == ("oom-killed", 0), 30, "the hog OOM-killed")
        killed_at = reconciler.rounds
        await until(lambda: reconciler.rounds >= killed_at + 3, 10, "three more rounds")
        nursery.cancel_scope.cancel()
    status = reconciler.statuses[(31, 0)]
    assert (status.running, status.exit_code, status.likely_oom) == (False, 137, True)
    [warning] = oom_warnings(caplog)  # once, however many rounds saw the dead container
    assert warning.levelno == logging.WARNING
    assert {k: getattr(warning, k) for k in ("job", "replica", "container", "memory_mb", "exit_code", "restarts")} == \
        {"job": 31, "replica": 0, "container": status.container_id[:12], "memory_mb": 16, "exit_code": 137,
         "restarts": 0}
    assert warning.oom_flag is (not is_podman(engine))  # type: ignore[attr-defined]
    assert changes[-1] == ("oom-killed", 0)  # the scheduler was told, to re-sign the claim set
    # the state travels in the signed claim set: the wire model takes it
    entry = ClaimEntry(job_id=31, replica=0, generation=1, lease_until_ms=1, state=reconciler.state_of(31, 0)[0])
    assert ClaimEntry.model_validate_json(entry.model_dump_json()).state == "oom-killed"
    assert runner.stop(31, 0) is True


async def test_each_kill_of_a_restarted_replica_is_reported(
    runner: CarRunner, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler = Reconciler(runner, check_s=0.2)
    reconciler.offer(Plan(Claims.of(()), {32: 0}, {32: hog("always")}))
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)
        await until(lambda: len(oom_warnings(caplog)) >= 2, 30, "two kills")
        assert reconciler.state_of(32, 0) in (("oom-killed", 1), ("running", 2), ("oom-killed", 2))
        nursery.cancel_scope.cancel()
    first, second = oom_warnings(caplog)[:2]
    assert first.container != second.container  # type: ignore[attr-defined]
    assert (first.restarts, second.restarts) == (0, 1)  # type: ignore[attr-defined]
    assert runner.stop(32, 0) is True
