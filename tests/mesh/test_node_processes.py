"""Five ``deedmesh node run`` processes on 127.0.0.1 against anvil: the licensed four form a mesh
visible in ``deedmesh status`` and cut the unlicensed fifth off; a license blacklisted on chain
mid-run drops out of every view; a node frozen with SIGSTOP and one killed with SIGKILL go dead
everywhere; the killed one restarts and rejoins. Every process is stopped by the PID this test
started."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from contracts import Anvil, Chain, DeployConfig, LicenseStatus, deploy
from contracts._anvil import free_port, stop_process
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


def start_node(tmp: Path, n: int, ident: NodeIdentity, rpc: str, record: Path, bootstrap: list[str],
               api_port: int | None = None, extra: tuple[str, ...] = ()) -> NodeProcess:
    """Node 0 takes every setting from a config file; the others mix a config file and flags (node
    2 names the license registry by its address instead of the deployment record). ``extra``: more
    flags."""
    key = tmp / f"node{n}.json"
    if not key.exists():
        write_keystore(key, ident, PASSWORD, scrypt_n=2**10)
    config = tmp / f"node{n}.toml"
    lines = ["license_refresh_s = 1.0"]  # a ban on chain bites within a second
    if n == 0:
        lines += [f'key = "{key.name}"', f'rpc = "{rpc}"', f'deployment = "{record.name}"',
                  f"api_port = {api_port or free_port()}", f"bootstrap = {json.dumps(bootstrap)}", 'tags = ["edge"]']
        args = [DEEDMESH, "--log-format", "json", "node", "run", "--config", str(config)]
    else:
        contracts = (["--license-registry", json.loads(record.read_text())["license_registry"]] if n == 2
                     else ["--deployment", str(record)])
        args = [DEEDMESH, "--log-format", "json", "node", "run", "--config", str(config), "--key", str(key),
                "--rpc", rpc, *contracts,
                "--api-port", str(api_port or free_port())]
        for b in bootstrap:
            args += ["--bootstrap", b]
    args += extra
    config.write_text("\n".join(lines) + "\n")
    env = os.environ | {"DEEDMESH_KEY_PASSWORD": PASSWORD}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(tmp / f"node{n}.log", "a"),  # noqa: SIM115
                            text=True, env=env)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_DEADLINE_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"node {n} did not become ready: {(tmp / f'node{n}.log').read_text()[-2000:]}")
    return NodeProcess(proc, json.loads(line))


def stop(node: NodeProcess) -> None:
    """Stop a node we started, by its PID; a frozen one is thawed so it can exit."""
    stop_process(node.proc)
    if node.proc.stdout:
        node.proc.stdout.close()


@pytest.mark.anvil
def test_five_processes_gate_ban_freeze_kill_and_rejoin(tmp_path: Path) -> None:
    idents = [NodeIdentity(bytes([0x70 + i]) * 32) for i in range(5)]  # idents[4] holds no license
    with Anvil() as anvil:
        chain = Chain.connect(anvil.url)
        a = chain.accounts
        dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=a[4])
        licenses = dep.licenses(chain)
        license_ids = []
        for i, ident in enumerate(idents[:4]):
            license_ids.append(licenses.mint(a[5 + i], sender=a[0]))
            licenses.link_node(license_ids[-1], ident.address, sender=a[5 + i])
        record = tmp_path / "deployment.json"
        record.write_text(dep.to_json())
        nodes: list[NodeProcess] = []
        try:
            for n, ident in enumerate(idents):
                bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
                nodes.append(start_node(tmp_path, n, ident, anvil.url, record, bootstrap))
            run_scenario(tmp_path, nodes, idents, anvil.url, record, licenses, license_ids, a[0])
        finally:
            for node in nodes:
                stop(node)
    # structured logs: every line a node wrote on stderr is one JSON object (the API server's and
    # py-libp2p's lines included, which used to come out in their own formats)
    for log_file in sorted(tmp_path.glob("node*.log")):
        for line in log_file.read_text().splitlines():
            assert isinstance(json.loads(line), dict), (log_file.name, line)


def run_scenario(tmp: Path, nodes: list[NodeProcess], idents: list[NodeIdentity], rpc: str, record: Path,
                 licenses: Any, license_ids: Sequence[int], admin: str) -> None:
    licensed = {i.address for i in idents[:4]}

    def sees(n: int, expected: set[str]) -> bool:
        return peer_states(nodes[n].api) == {a: "alive" for a in expected - {nodes[n].address}}

    wait_for(lambda: all(sees(n, licensed) for n in range(4)), 60, "the licensed nodes to see each other alive")
    counters = get(f"{nodes[0].api}/counters")
    assert counters["deedmesh/heartbeat/1"]["ACCEPT"]["ok"] > 0
    wait_for(lambda: any(get(f"{nodes[n].api}/counters").get("peer", {}).get("REJECT", {}).get("unlicensed", 0)
                         for n in range(4)), 30, "a licensed node to cut the unlicensed one off")

    status = subprocess.run([DEEDMESH, "--json", "status", "--via", nodes[1].api], capture_output=True, text=True,
                            timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["node"]["address"] == nodes[1].address
    assert {p["address"] for p in shown["peers"]} == licensed - {nodes[1].address}
    assert all(p["capacity"]["total"]["cpu_millis"] > 0 for p in shown["peers"])
    tags = next(p for p in shown["peers"] if p["address"] == nodes[0].address)["capacity"]["tags"]
    assert tags[0] == "edge"  # then runner:car if an engine answers
    table = subprocess.run([DEEDMESH, "status", "--via", nodes[1].api], capture_output=True, text=True, timeout=60,
                           check=False)
    assert "alive" in table.stdout
    # the same through the node's libp2p address: no HTTP port needed
    over_libp2p = subprocess.run([DEEDMESH, "--json", "status", "--via", nodes[1].ready["addrs"][0]],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert over_libp2p.returncode == 0, over_libp2p.stderr
    assert json.loads(over_libp2p.stdout)["node"]["address"] == nodes[1].address

    # node 3's license is blacklisted on chain: within a refresh it leaves every view
    licenses.set_status(license_ids[3], LicenseStatus.BLACKLISTED, sender=admin)
    licensed.discard(nodes[3].address)
    wait_for(lambda: all(sees(n, licensed) for n in range(3)), 30, "the blacklisted node to be dropped")

    nodes[2].proc.send_signal(signal.SIGSTOP)  # frozen: its TCP connections stay open
    took = wait_for(lambda: peer_states(nodes[0].api).get(nodes[2].address) == "dead"
                    and peer_states(nodes[1].api).get(nodes[2].address) == "dead", 30, "the frozen node to go dead")
    assert took < 3 * 1.0 + 3  # 3 heartbeat intervals, plus polling and a loaded machine's slack

    nodes[1].proc.kill()  # SIGKILL
    nodes[1].proc.wait()
    wait_for(lambda: peer_states(nodes[0].api).get(nodes[1].address) == "dead", 30, "the killed node to go dead")
    metrics = subprocess.run(["python3", "-c", f"import urllib.request;print(urllib.request.urlopen("
                              f"'{nodes[0].api}/metrics').read().decode())"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    assert 'deedmesh_peers{state="dead"} 2' in metrics

    # the killed node restarts with the same key (a new port, new sequence numbers) and rejoins
    nodes[1].proc.stdout and nodes[1].proc.stdout.close()
    nodes[1] = start_node(tmp, 1, idents[1], rpc, record, nodes[0].ready["addrs"][:1])
    wait_for(lambda: peer_states(nodes[0].api).get(nodes[1].address) == "alive"
             and peer_states(nodes[1].api).get(nodes[0].address) == "alive", 60, "the restarted node to rejoin")
