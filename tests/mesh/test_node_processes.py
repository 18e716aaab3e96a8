"""Three ``deedmesh node run`` processes on 127.0.0.1 against anvil: they form a mesh visible in
``deedmesh status``, and a node killed with SIGKILL or frozen with SIGSTOP goes dead everywhere.
Every process is stopped by the PID this test started."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import Anvil, Chain, DeployConfig, deploy
from contracts._anvil import free_port
from mesh._identity import NodeIdentity, write_keystore

DEEDMESH = str(Path(sys.executable).parent / "deedmesh")
PASSWORD = "node-test-password"
START_DEADLINE_S = 60


def wait_for(predicate: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Poll ``predicate`` until it holds (returns the seconds it took) or fail at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)  # polling other processes' HTTP APIs with a deadline
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


def get(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


def peer_states(api: str) -> dict[str, str]:
    try:
        return {p["address"]: p["state"] for p in get(f"{api}/peers")}
    except OSError:
        return {}


class NodeProcess:
    def __init__(self, proc: subprocess.Popen[str], ready: dict[str, Any]) -> None:
        self.proc, self.ready = proc, ready
        self.api: str = ready["api"]
        self.address: str = ready["address"]


def start_node(tmp: Path, n: int, ident: NodeIdentity, rpc: str, record: Path, bootstrap: list[str]) -> NodeProcess:
    key = write_keystore(tmp / f"node{n}.json", ident, PASSWORD, scrypt_n=2**10)
    args = [DEEDMESH, "node", "run", "--key", str(key), "--rpc", rpc, "--deployment", str(record),
            "--api-port", str(free_port())]
    for b in bootstrap:
        args += ["--bootstrap", b]
    env = os.environ | {"DEEDMESH_KEY_PASSWORD": PASSWORD}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(tmp / f"node{n}.log", "w"),  # noqa: SIM115
                            text=True, env=env)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_DEADLINE_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"node {n} did not become ready: {(tmp / f'node{n}.log').read_text()[-2000:]}")
    return NodeProcess(proc, json.loads(line))


@pytest.fixture
def mesh3(tmp_path: Path) -> Iterator[tuple[list[NodeProcess], list[NodeIdentity]]]:
    idents = [NodeIdentity(bytes([0x70 + i]) * 32) for i in range(3)]
    with Anvil() as anvil:
        chain = Chain.connect(anvil.url)
        a = chain.accounts
        dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=a[4])
        licenses = dep.licenses(chain)
        for i, ident in enumerate(idents):
            license_id = licenses.mint(a[5 + i], sender=a[0])
            licenses.link_node(license_id, ident.address, sender=a[5 + i])
        record = tmp_path / "deployment.json"
        record.write_text(dep.to_json())
        nodes: list[NodeProcess] = []
        try:
            for n, ident in enumerate(idents):
                bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
                nodes.append(start_node(tmp_path, n, ident, anvil.url, record, bootstrap))
            yield nodes, idents
        finally:
            for node in nodes:  # by the PIDs we started; a frozen one is thawed so it can exit
                if node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGCONT)
                    node.proc.terminate()
                    try:
                        node.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        node.proc.kill()
                        node.proc.wait()
                if node.proc.stdout:
                    node.proc.stdout.close()


@pytest.mark.anvil
def test_three_processes_form_a_mesh_and_detect_kill_and_freeze(mesh3: tuple[list[NodeProcess], list[NodeIdentity]],
                                                               ) -> None:
    nodes, idents = mesh3
    everyone = {i.address for i in idents}

    def all_alive() -> bool:
        return all(peer_states(n.api) == {a: "alive" for a in everyone - {n.address}} for n in nodes)

    wait_for(all_alive, 30, "every node to see the two others alive")
    status = subprocess.run([DEEDMESH, "--json", "status", "--via", nodes[1].api], capture_output=True, text=True,
                            timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["node"]["address"] == nodes[1].address
    assert {p["address"] for p in shown["peers"]} == everyone - {nodes[1].address}
    assert all(p["capacity"]["total"]["cpu_millis"] > 0 for p in shown["peers"])
    table = subprocess.run([DEEDMESH, "status", "--via", nodes[1].api], capture_output=True, text=True, timeout=60,
                           check=False)
    assert "alive" in table.stdout

    nodes[2].proc.send_signal(signal.SIGSTOP)  # frozen: its TCP connections stay open
    took = wait_for(lambda: peer_states(nodes[0].api).get(nodes[2].address) == "dead"
                    and peer_states(nodes[1].api).get(nodes[2].address) == "dead", 30, "the frozen node to go dead")
    assert took < 3 * 1.0 + 3  # 3 heartbeat intervals, plus polling and a loaded machine's slack

    nodes[1].proc.kill()  # SIGKILL
    nodes[1].proc.wait()
    wait_for(lambda: peer_states(nodes[0].api).get(nodes[1].address) == "dead", 30, "the killed node to go dead")
    counters = get(f"{nodes[0].api}/counters")
    assert counters["deedmesh/heartbeat/1"]["ACCEPT"]["ok"] > 0
    metrics = subprocess.run(["python3", "-c", f"import urllib.request;print(urllib.request.urlopen("
                              f"'{nodes[0].api}/metrics').read().decode())"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    assert 'deedmesh_peers{state="dead"} 2' in metrics
