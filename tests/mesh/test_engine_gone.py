"""A node outlives its container engine going away: a CAR replica whose engine does not answer
stops on the error, says so, and starts over after ``RETRY_S``; nothing escapes the supervisor's
nursery. (Its engine calls run in the replica's own nursery, so the error leaves it inside an
exception group: caught by type it slipped past, and took the whole node down with it.)"""

from __future__ import annotations

import logging
from pathlib import Path

import docker
import pytest
import trio

import mesh._fronted
from mesh._jobspec import CarJob
from mesh._jobspec_load import load_spec
from mesh._runner_car import CarRunner
from mesh._runner_car_fronted import CarSupervisor
from mesh._scheduler import Plan
from mesh._wire_claim import Claims

SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml")
assert isinstance(SPEC, CarJob)
STOPPED = "a replica stopped on an error; it starts over"


async def test_a_replica_whose_engine_is_gone_starts_over_and_the_supervisor_lives(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh._fronted, "RETRY_S", 0.2)  # read at each stop; 5 s in a node
    # no engine listens on this socket (the API version is given, so the client is made without asking)
    gone = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    supervisor = CarSupervisor(CarRunner(gone, "0x" + "ab" * 20), tmp_path / "car", check_s=0.3)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            supervisor.offer(Plan(claims=Claims(), holding={7: 0}, specs={7: SPEC}))
            # polled, under fail_after: started over at least once
            while len([r for r in caplog.records if r.getMessage() == STOPPED]) < 2:  # noqa: ASYNC110
                await trio.sleep(0.1)
            assert supervisor.replicas.get((7, 0)) is not None  # still wanted, tried again
            nursery.cancel_scope.cancel()
    stopped = [r for r in caplog.records if r.getMessage() == STOPPED]
    assert all(r.levelno == logging.WARNING and "No such file or directory" in r.__dict__["error"] for r in stopped)
    assert stopped[0].__dict__["job"] == 7
