"""The README cannot rot: its walkthrough runs as written, and every other ``deedmesh`` command in it
is run by a named test.

How the walkthrough runs: every ```bash block of the README without a ``readme-test`` marker is
joined, in order, into one bash script (``set -euo pipefail``) run in a temporary directory laid
out like a clone (``examples`` and ``scripts`` linked in, ``.venv/bin/deedmesh`` present). Two
things differ from a reader's shell, and only these:

- the fixed ports (anvil's 8545, the nodes' and the oracle's) are replaced by free ones;
- ``.venv/bin/deedmesh`` there is a shim that hands each command to this test process, which runs
  it with click's runner in process (the installed script costs 4-5 s of imports a call: the
  walkthrough's 40 calls would not fit the suite's budget), or, for the commands that keep
  running (``chain anvil``, ``node run``, ``oracle run``), starts the real installed script, waits
  for its first line (what the README tells the reader to wait for) and stops it at the end by the
  PID it started. Those lines end in ``&`` in the README; here they run until ready instead.

Keys are written at a cheap scrypt cost, as in every test (``tests/mesh/test_identity.py``).
The other ```bash blocks carry a marker: ``not run (why)`` (they may hold no ``deedmesh``
command), or ``mirrored by tests/...``: that test must still invoke each ``deedmesh`` command of
the block (checked below)."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import docker
import pytest
from click.testing import CliRunner

from contracts import Chain, Deployment, LicenseStatus, free_port
from contracts._anvil import stop_process
from mesh._cli import cli
from mesh._config import NodeFileConfig
from mesh._identity import keystore_address, write_keystore
from mesh._runner_car import CarRunner

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEEDMESH = str(Path(sys.executable).parent / "deedmesh")
GROUPS = {"chain", "job", "keys", "node", "oracle"}  # commands whose first word names a group
LONG_RUNNING = {("chain", "anvil"), ("node", "run"), ("oracle", "run")}
PORTS = ("8545", "4001", "4002", "4010", "8701", "8702")  # the walkthrough's fixed ports
READY_DEADLINE_S = 60  # a process's first line: imports (4-5 s), unlock, libp2p, engine probe
SCRIPT_DEADLINE_S = 240  # the walkthrough waits for a job's epoch to settle (10-second epochs)
MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")


# ------------------------------------------------------------------ reading the README


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence
    marker: str | None  # the readme-test marker on the line before it, if any


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            found = MARKER.search(before)
            blocks.append(Block(lang, "\n".join(lines[start + 1:end]) + "\n", start + 1,
                                found.group(1) if found else None))
            i = end
        i += 1
    return blocks


def command_paths(script: str) -> list[tuple[str, ...]]:
    """Each ``deedmesh`` invocation in a bash text, as its command path (``("chain", "job")``),
    in the order they are written; comments left out, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", script)
    code = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in joined.splitlines())
    found = re.finditer(r"(?<![\w/.-])deedmesh((?:[ \t]+[^\s|()&;]+)+)", code)  # up to a pipe, ), & or ;
    return [command_path(m.group(1).split()) for m in found]


def command_path(argv: list[str]) -> tuple[str, ...]:
    words = list(argv)
    while words and words[0].startswith("-"):  # global options: --json, --log-level X, --log-format X
        option = words.pop(0)
        if option in ("--log-level", "--log-format") and words:
            words.pop(0)
    if not words:
        return ()
    return tuple(words[:2]) if words[0] in GROUPS and len(words) > 1 else (words[0],)


BLOCKS = readme_blocks(README.read_text())
RUN = [b for b in BLOCKS if b.lang == "bash" and b.marker is None]


def test_every_deedmesh_command_in_the_readme_is_run_or_mirrored() -> None:
    assert RUN, "the README has no walkthrough blocks"
    run_paths = {p for b in RUN for p in command_paths(b.text)}
    assert {("chain", "anvil"), ("node", "run"), ("oracle", "run"), ("claim",), ("refund",), ("audit",),
            ("chain", "admit-csp"), ("chain", "link-node")} <= run_paths
    for block in BLOCKS:
        if block.lang == "bash" and block.marker is not None:
            if block.marker.startswith("not run"):
                assert not command_paths(block.text), f"README line {block.line}: a block not run holds commands"
                continue
            mirrored = re.fullmatch(r"mirrored by (tests/\S+\.py(?:, tests/\S+\.py)*)", block.marker)
            assert mirrored, f"README line {block.line}: unknown marker {block.marker!r}"
            mirrors = "".join((REPO / name).read_text() for name in mirrored.group(1).split(", "))
            for path in command_paths(block.text):  # e.g. run_cli("job", "update", ...)
                assert '"' + '", "'.join(path) + '"' in mirrors, \
                    f"README line {block.line}: {' '.join(path)} is not run by {mirrored.group(1)}"
        elif block.lang not in ("bash", "text", "toml", ""):
            assert not command_paths(block.text), f"README line {block.line}: commands in a {block.lang} block"


def test_the_readme_configuration_file_is_accepted_by_node_run() -> None:
    tomls = [b for b in BLOCKS if b.lang == "toml"]
    assert tomls
    for block in tomls:
        NodeFileConfig.model_validate(tomllib.loads(block.text))  # unknown keys or wrong types raise


def test_the_command_line_summary_names_every_command() -> None:
    summary = next(b.text for b in BLOCKS if b.lang == "text" and b.text.startswith("deedmesh [--json]"))
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        subs = command.list_commands(ctx) if isinstance(command, click.Group) else [None]
        for sub in subs:
            words = f"{name} {sub}" if sub else name
            assert re.search(rf"^\s+{re.escape(words)}\b|\| {re.escape(words)}\b", summary, re.M), \
                f"the README's command line summary leaves out `deedmesh {words}`"


# ------------------------------------------------------------------ running the walkthrough

SHIM = """#!{python} -S
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["DEEDMESH_README_SOCKET"])
s.sendall(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode())
s.shutdown(socket.SHUT_WR)
answer = json.loads(b"".join(iter(lambda: s.recv(65536), b"")))
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["code"])
"""


@dataclass
class Ran:
    path: tuple[str, ...]
    argv: list[str]
    code: int
    stdout: str
    stderr: str


@dataclass
class Background:
    argv: list[str]
    proc: subprocess.Popen[str]
    log: Path
    lines: list[str] = field(default_factory=list)
    first_line: threading.Event = field(default_factory=threading.Event)

    def drain(self) -> None:
        """Reader thread: keep the pipe empty; the first line (or EOF) is the readiness signal."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.first_line.set()
        self.first_line.set()


class Harness:
    """The server end of the shim: runs each command it is handed, records what ran."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ran: list[Ran] = []
        self.background: list[Background] = []

    def handle(self, conn: socket.socket) -> None:
        with conn:
            request = json.loads(b"".join(iter(lambda: conn.recv(65536), b"")))
            argv, cwd, env = request["argv"], request["cwd"], request["env"]
            path = command_path(argv)
            if path in LONG_RUNNING:
                code, out, err = self.start(argv, cwd, env)
            else:
                code, out, err = self.run_in_process(argv, cwd, env)
            self.ran.append(Ran(path, argv, code, out, err))
            conn.sendall(json.dumps({"stdout": out, "stderr": err, "code": code}).encode())

    def run_in_process(self, argv: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str, str]:
        with contextlib.chdir(cwd):
            result = CliRunner().invoke(cli, argv, env=env, prog_name="deedmesh")
        err = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            err += "".join(traceback.format_exception(result.exception))
        return result.exit_code, result.stdout, err

    def start(self, argv: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str, str]:
        log = self.workdir / f"background-{len(self.background)}.log"
        proc = subprocess.Popen([DEEDMESH, *argv], cwd=cwd, env=env | {"PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)  # noqa: SIM115
        bg = Background(argv, proc, log)
        self.background.append(bg)
        threading.Thread(target=bg.drain, daemon=True).start()
        if not bg.first_line.wait(READY_DEADLINE_S) or not bg.lines:
            return 1, "", f"{' '.join(argv[:2])} printed nothing in {READY_DEADLINE_S} s:\n{log.read_text()[-3000:]}"
        return 0, bg.lines[0], ""

    def stop_all(self) -> None:
        """Stop what we started, by PID: SIGINT first (``chain anvil`` then stops its anvil), then
        terminate; an anvil left behind by a parent that did not get to stop it is stopped by its PID."""
        for bg in reversed(self.background):
            children = _children(bg.proc.pid)
            if bg.proc.poll() is None:
                bg.proc.send_signal(signal.SIGINT)
                try:
                    bg.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    stop_process(bg.proc)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if bg.proc.stdout:
                bg.proc.stdout.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def walkthrough_script() -> tuple[str, dict[str, int]]:
    """The README's run blocks as one script, its fixed ports replaced and its ``&`` lines run in
    the foreground (until ready: the shim returns then)."""
    script = "".join(b.text for b in RUN)
    ports = {}
    for port in PORTS:
        assert re.search(rf"\b{port}\b", script), f"the walkthrough no longer uses port {port}"
        ports[port] = free_port()
        script = re.sub(rf"\b{port}\b", str(ports[port]), script)
    script, backgrounded = re.subn(r"\s&(\s+#.*)?$", r"\1", script, flags=re.M)
    long_running = [p for p in command_paths(script) if p in LONG_RUNNING]
    assert backgrounded == len(long_running), "every long-running command of the README ends in &, and only they"
    return script, ports


def json_of(ran: list[Ran], path: tuple[str, ...], n: int = 0) -> Any:
    """The JSON printed by the ``n``-th run of ``path`` that printed JSON."""
    outputs = [r.stdout for r in ran if r.path == path and r.stdout.lstrip().startswith("{")]
    return json.loads(outputs[n])


@pytest.mark.anvil
def test_the_walkthrough_runs_as_written(tmp_path: Path, engine: docker.DockerClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(write_keystore.__kwdefaults__, "scrypt_n", 2**10)
    script, ports = walkthrough_script()
    for name in ("examples", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    shim = tmp_path / ".venv" / "bin" / "deedmesh"
    shim.parent.mkdir(parents=True)
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    listener = socket.socket(socket.AF_UNIX)
    socket_path = tmp_path / "shim.sock"
    listener.bind(str(socket_path))
    listener.listen(4)
    harness = Harness(tmp_path)
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level  # each in-process command sets its own
    out, err = open(tmp_path / "bash.out", "w"), open(tmp_path / "bash.err", "w")  # noqa: SIM115
    started = time.monotonic()
    try:
        bash = subprocess.Popen(["bash", "-xeuo", "pipefail", "-c", script], cwd=tmp_path, stdout=out, stderr=err,
                                env=os.environ | {"DEEDMESH_README_SOCKET": str(socket_path)})
        while bash.poll() is None:
            if time.monotonic() - started > SCRIPT_DEADLINE_S:
                stop_process(bash)
                break
            if select.select([listener], [], [], 0.5)[0]:
                harness.handle(listener.accept()[0])
        elapsed = time.monotonic() - started
        failed = [r for r in harness.ran if r.code != 0] + ([] if bash.returncode == 0 else [None])
        assert not failed, (
            f"the walkthrough stopped (bash exit {bash.returncode}) after {elapsed:.0f} s; failed: "
            + "".join(f"\n$ deedmesh {' '.join(r.argv)}\n-> {r.code}\n{r.stdout[-1500:]}{r.stderr[-3000:]}"
                      for r in failed if r is not None)
            + f"\nbash's trace:\n{(tmp_path / 'bash.err').read_text()[-3000:]}")

        # every deedmesh command of the walkthrough ran, as often as it is written
        assert collections.Counter(r.path for r in harness.ran) == collections.Counter(command_paths(script))

        # and did what the README says it does
        chain = Chain.connect(f"http://127.0.0.1:{ports['8545']}")
        dep = Deployment.load(tmp_path / "deployment.json")
        escrow, licenses = dep.escrow(chain), dep.licenses(chain)
        job_id = json_of(harness.ran, ("job", "fund"))["job_id"]
        job = escrow.get_job(job_id)
        assert (job.deposited, job.replicas, job.epochs) == (10 * 2 * 1, 2, 1)
        assert any(escrow.root_of(job.start_epoch))  # the oracle landed the job's epoch
        terms = job.conservation()
        assert terms["locked"] == 0
        assert terms["deposited"] == terms["released"] + terms["refunded"] + terms["burned"]
        assert job.release_spent == job.alloc_release  # the operator claimed all of the nodes' pay
        assert job.refunded == job.alloc_refund  # and the CSP took all of its refund
        operator = keystore_address(tmp_path / "operator.json")
        assert {licenses.owner_of(i).lower() for i in (1, 2)} == {operator.lower()}
        assert {licenses.node_of(i).lower() for i in (1, 2)} == {
            keystore_address(tmp_path / f"node{n}.json").lower() for n in (1, 2)}
        assert licenses.status_of(2) == LicenseStatus.ACTIVE  # frozen, then active again
        assert escrow.is_csp_admitted(keystore_address(tmp_path / "csp.json"))
        audited = json_of(harness.ran, ("audit",))
        assert audited["ok"], audited["discrepancies"]
        shown = [dict(line.split(maxsplit=1) for line in r.stdout.splitlines())
                 for r in harness.ran if r.path == ("chain", "job")]
        assert (shown[0]["pending"], shown[0]["settled"]) == ("[]", f"[{job.start_epoch}]")  # --wait-settled
        assert (shown[-1]["applied_through"], shown[-1]["locked"]) == (str(job.start_epoch), "0")  # after the claim
        ready = [json.loads(bg.lines[0]) for bg in harness.background if bg.argv[0] != "chain"]
        assert [r["event"] for r in ready] == ["ready"] * 3  # two nodes and the oracle
    finally:
        harness.stop_all()
        listener.close()
        out.close()
        err.close()
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        for n in (1, 2):  # a stopped node leaves its containers running (it adopts them on restart)
            key = tmp_path / f"node{n}.json"
            # (an engine that went away took its containers with it)
            with contextlib.suppress(docker.errors.DockerException, OSError):
                for leftover in CarRunner(engine, keystore_address(key)).list_managed() if key.exists() else []:
                    engine.containers.get(leftover.container_id).remove(force=True)
