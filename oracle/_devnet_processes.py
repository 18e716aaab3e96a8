"""``deedmesh devnet --processes``: every node and oracle as its own OS process, as a real
deployment runs them: ``deedmesh node run`` and ``deedmesh oracle run`` against a JSON-RPC chain
(anvil by default), each with a keystore in the work directory, read by the JSON lines they print
(``ready``; the oracles' ``settled``, ``no-quorum`` and ``passed-over``). The devnet drives them as it drives its
in-process ones (``_devnet.drive``); a killed node is sent SIGKILL, and every process is stopped
by the handle it was started with.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from contracts import ChainError, free_port
from mesh import ChainWorker, NodeIdentity, write_keystore

from ._devnet import DevnetShape, Setup, drive, engine_reachable
from ._watch import EpochClock

DEEDMESH = str(Path(sys.executable).parent / "deedmesh")
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


class Child:
    """One process and the JSON lines it prints."""

    def __init__(self, process: trio.Process, name: str) -> None:
        self.process, self.name = process, name
        self._buffer = b""

    async def line(self) -> dict[str, Any]:
        """The next JSON line on its stdout (``ChainError`` if it ended first: a devnet cannot go on)."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise ChainError(f"{self.name} exited ({await self.process.wait()}) before it was ready")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(raw)  # type: ignore[no-any-return]


@asynccontextmanager
async def children() -> AsyncIterator[list[Child]]:
    """Every process started into the list is stopped at the end: SIGTERM, then SIGKILL."""
    started: list[Child] = []
    try:
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for child in started:
                if child.process.returncode is None:
                    child.process.terminate()
            for child in started:
                with trio.move_on_after(STOP_GRACE_S):
                    await child.process.wait()
                if child.process.returncode is None:
                    child.process.kill()
                    await child.process.wait()


async def start(started: list[Child], name: str, args: list[str], log: Path) -> Child:
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process([DEEDMESH, "--log-level", "info", "--log-format", "json", *args],
                                                   stdout=-1, stderr=stderr)  # -1: a pipe
    child = Child(process, name)
    started.append(child)
    return child


def keystore(work: Path, name: str, key: bytes, password_file: Path) -> Path:
    path = work / f"{name}.json"
    write_keystore(path, NodeIdentity(key), password_file.read_text().strip(), scrypt_n=2**14)
    return path


async def run_processes(setup: Setup, shape: DevnetShape, work: Path,
                        progress: Callable[[str], object], show: Callable[[dict[str, Any]], object],
                        keep: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    chain, dep = setup.chain, setup.dep
    worker = ChainWorker()
    genesis, seconds, _ = await worker.run(dep.escrow(chain).epoch_clock)
    clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=seconds * 1000)
    no_engine = await trio.to_thread.run_sync(engine_reachable)
    password_file = work / "password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")  # the run's keystores' password; never printed
    common = ["--rpc", chain.url, "--deployment", str(setup.record), "--password-file", str(password_file)]
    round_s = max(2.0, shape.epoch_seconds / 2)
    async with children() as started, trio.open_nursery() as nursery:
        progress(f"starting {shape.nodes} node processes")
        ready: list[dict[str, Any]] = []
        nodes: dict[str, Child] = {}
        for identity, _, _ in setup.nodes:
            name = f"node-{identity.address}"
            config = work / f"{name}.toml"
            config.write_text("license_refresh_s = 5.0\n")
            bootstrap = ["--bootstrap", ready[0]["addrs"][0]] if ready else []
            child = await start(started, name, ["node", "run", "--config", str(config),
                                                "--key", str(keystore(work, name, identity.private_key,
                                                                      password_file)),
                                                *common, "--api-port", str(free_port()), *bootstrap],
                                work / f"{name}.log")
            with trio.fail_after(READY_TIMEOUT_S):
                ready.append(await child.line())
            nodes[identity.address] = child
        progress(f"starting {shape.oracles} oracle processes")
        oracles = []
        for key in setup.oracle_keys:
            name = f"oracle-{key.address}"
            oracles.append(await start(started, name, [
                "oracle", "run", "--key", str(keystore(work, name, key.key, password_file)), *common,
                "--bootstrap", ready[0]["addrs"][0], "--dir", str(work / name), "--settle-s", "1",
                "--round-s", str(round_s), "--license-refresh-s", "5"], work / f"{name}.log"))
        for child in oracles:
            with trio.fail_after(READY_TIMEOUT_S):
                await child.line()  # ready
            nursery.start_soon(follow, child, setup.events)

        async def stop_node(address: str) -> None:
            nodes[address].process.kill()  # as a machine is lost: no goodbye
            await nodes[address].process.wait()

        summary = await drive(setup, shape, work, worker, clock, ready,
                              [work / f"oracle-{k.address}" / "reports" for k in setup.oracle_keys], stop_node,
                              no_engine, nursery, progress, show, keep)
        nursery.cancel_scope.cancel()
    return summary


async def follow(child: Child, events: list[dict[str, Any]]) -> None:
    """An oracle's epoch outcomes, as it prints them."""
    while True:
        try:
            events.append(await child.line())
        except ChainError:
            return
