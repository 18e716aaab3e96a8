"""A deployed world per chain backend, reverted to a snapshot around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import Chain

from .world import World, build_world


@pytest.fixture(scope="session")
def _deployed(chain: Chain) -> World:
    return build_world(chain)


@pytest.fixture
def world(_deployed: World) -> Iterator[World]:
    snap = _deployed.chain.snapshot()
    try:
        yield _deployed
    finally:
        _deployed.chain.revert_to(snap)
