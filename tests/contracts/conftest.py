"""A deployed world per chain backend, reverted to a snapshot around every test.

The contract tests run on anvil only: the contracts are the same bytecode on either backend, and
anvil (a real JSON-RPC node) runs them about twice as fast here as eth-tester's Python EVM, which
matters for the suite's 15 minutes. The embedded chain keeps tests of its own
(``test_backends``, ``test_smoke`` on both, ``test_vectors``), and every oracle, audit and devnet
test runs on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import Chain

from .world import World, build_world


@pytest.fixture(scope="session", params=[pytest.param("anvil", marks=pytest.mark.anvil)])
def chain(request: pytest.FixtureRequest) -> Chain:
    """Overrides ``tests/conftest.py``'s (both backends) for the contract tests: anvil only."""
    return Chain.connect(request.getfixturevalue("anvil_url"))


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
