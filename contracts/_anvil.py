"""Launching anvil (npm ``@foundry-rs/anvil-linux-amd64``, pinned in contracts/package.json).

Started on 127.0.0.1 on a free port with the project's pinned hardfork, waited for until it answers
JSON-RPC, and stopped by the PID it was started with (never by name).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ._compile import EVM_VERSION
from ._errors import ChainUnreachable

ANVIL_BIN = Path(__file__).resolve().parent / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
START_TIMEOUT_S = 15.0


def anvil_binary() -> Path:
    """Path to the pinned anvil binary; raises ``ChainUnreachable`` if npm tools are missing."""
    override = os.environ.get("DEEDMESH_ANVIL")
    path = Path(override) if override else ANVIL_BIN
    if not path.exists():
        raise ChainUnreachable("anvil", f"{path} not found: run `npm ci` in contracts/ (or `make setup`)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """Stop a process we started, by its PID: thaw it (it may be frozen), ask it to terminate,
    kill it if it does not within ``timeout_s``, and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Anvil:
    """A running anvil process: ``with Anvil() as a: Chain.connect(a.url)``."""

    def __init__(self, *, port: int | None = None, block_time_s: int | None = None,
                 chain_id: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._block_time_s = block_time_s
        self._chain_id = chain_id
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Anvil:
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                "--hardfork", EVM_VERSION, "--silent"]
        if self._block_time_s:
            args += ["--block-time", str(self._block_time_s)]
        if self._chain_id:
            args += ["--chain-id", str(self._chain_id)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise ChainUnreachable(self.url, f"anvil exited with {self.process.returncode}: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)  # polling a child's port with a deadline; there is no event to wait on
        self.stop()
        raise ChainUnreachable(self.url, f"anvil did not listen within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Terminate the process we started (by its PID) and reap it."""
        if self.process is None:
            return
        stop_process(self.process)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
