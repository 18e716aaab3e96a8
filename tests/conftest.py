"""Session-wide fixtures: chain backends (embedded eth-tester, anvil started here and stopped by PID)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import Anvil, Chain


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
