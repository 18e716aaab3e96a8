"""The devnet's last step, removing the jobs' containers, when the engine went away during the run:
a warning naming why, and the devnet goes on to print its summary (the settlement and the audit
are done by then) instead of ending on a traceback."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

import oracle._devnet
from mesh import connect_engine


async def test_removing_the_containers_with_the_engine_gone_warns_and_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the real lookup, of an engine whose socket is gone
    monkeypatch.setattr(oracle._devnet, "connect_engine", partial(connect_engine, f"unix://{tmp_path}/gone.sock"))
    steps: list[str] = []
    await oracle._devnet.remove_containers(["0x" + "ab" * 20], steps.append)
    assert steps == ["removing the job's containers"]
    (warning,) = [r for r in caplog.records if r.name == "deedmesh.devnet"]
    assert warning.getMessage() == "could not remove the jobs' containers: the engine does not answer"
    assert "no such socket" in warning.__dict__["error"]
