"""Chain backends: anvil is started and stopped by PID; an unreachable chain is a named error."""

from __future__ import annotations

import os
import warnings

import pytest

from contracts import Anvil, Chain, ChainUnreachable
from contracts._anvil import free_port


@pytest.mark.anvil
def test_anvil_starts_answers_and_stops_by_pid() -> None:
    node = Anvil().start()
    try:
        assert node.process is not None
        pid = node.process.pid
        chain = Chain.connect(node.url)
        assert chain.chain_id == 31337
        assert len(chain.accounts) == 10
        before = chain.now()
        assert chain.advance_time(1000) >= before + 1000
    finally:
        node.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: the PID we started is gone


def test_unreachable_rpc_is_a_named_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ChainUnreachable, match=r"unreachable") as info:
        Chain.connect(url, timeout_s=2)
    assert info.value.url == url


def test_non_http_urls_are_refused() -> None:
    with pytest.raises(ChainUnreachable, match="only http"):
        Chain.connect("ws://127.0.0.1:1")


def test_missing_anvil_binary_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEDMESH_ANVIL", "/nonexistent/anvil")
    with pytest.raises(ChainUnreachable, match="npm ci"):
        Anvil().start()


def test_embedded_time_travel_and_snapshots() -> None:
    chain = Chain.embedded()
    snap = chain.snapshot()
    start, before = chain.block_number(), chain.now()
    assert chain.advance_time(500) == before + 500
    assert chain.now() == before + 500
    assert chain.block_number() > start
    chain.revert_to(snap)
    assert chain.block_number() == start
    assert chain.now() == before


def test_the_embedded_chain_leaves_the_warning_filters_alone() -> None:
    # eth-tester's default backend lookup resets them to "default": a CLI then printed every
    # unclosed socket as a ResourceWarning at exit
    before = list(warnings.filters)
    chain = Chain.embedded()
    assert chain.chain_id > 0
    assert list(warnings.filters) == before
