"""A CAR runner per test on the session's real container engine (the ``engine`` fixture is in
tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest

from mesh._runner_car import CarRunner

BUSYBOX_IMAGE = "localhost/deedmesh-busybox:1"


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
