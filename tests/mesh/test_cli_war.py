"""The WAR example through the README's commands: ``job fund`` and ``deploy`` of
``examples/war-site.yaml`` (its repository: ``examples/war-site/`` pushed to a bare repo) to a
``deedmesh node run`` process; ``job status`` shows the commit that serves; a pushed commit is
built and served on the same port; a broken one is shown as failed while the old one serves;
``job stop`` removes the containers. A node with no engine started with ``--native-war`` runs a WAR
app as processes."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import docker
import pytest

from mesh._runner_car import CarRunner
from mesh._runner_native import NativeRunner

from ..engine.test_war_runner import Origin
from .test_cli_job import ADMITTED, fund_job, licensed_nodes, run_cli, setup_chain
from .test_node_processes import NodeProcess, free_port, start_node, stop, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def page(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def first_replica(api: str, job_id: int) -> dict:
    """Replica 0's claim as ``job status --json`` through ``api`` shows it ({} if not placed yet)."""
    status = run_cli("job", "status", str(job_id), "--via", api)
    claims = json.loads(status.output)[0]["claims"] if status.exit_code == 0 else []
    return claims[0] if claims else {}


@pytest.mark.anvil
def test_the_war_example_deploys_rolls_out_pushed_commits_and_stops(
        anvil_url: str, tmp_path: Path, engine: docker.DockerClient) -> None:
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    (ident,) = licensed_nodes(chain, dep, 0x68, 1)
    origin = Origin(tmp_path / "repo")
    for name in ("build.sh", "index.html.in", "VERSION"):
        shutil.copy(EXAMPLES / "war-site" / name, origin.work / name)
    first = origin.push("1")
    port = free_port()
    spec_file = tmp_path / "site.yaml"
    spec_file.write_text((EXAMPLES / "war-site.yaml").read_text()
                         .replace("file:///tmp/deedmesh-war-site.git", origin.url)
                         .replace("host: 18080", f"host: {port}").replace("poll_s: 5", "poll_s: 1"))
    assert origin.url in spec_file.read_text()
    assert f"host: {port}" in spec_file.read_text()
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    signer = ["--key", csp_key, "--deployment", str(record)]
    job_id = fund_job(spec_file, csp_key, anvil_url, record)
    node: NodeProcess | None = None
    try:
        node = start_node(tmp_path, 1, ident, anvil_url, record, [])
        result = run_cli("deploy", str(spec_file), "--job", str(job_id), "--via", node.api, *signer)
        assert result.exit_code == 0, result.output

        def replica(n: NodeProcess = node) -> dict:
            return first_replica(n.api, job_id)

        wait_for(lambda: replica().get("version") == first and replica()["state"] == "healthy", 60,
                 "the first commit serving and healthy in job status")
        assert page(port) == "<h1>deedmesh WAR example</h1>\n<p>version 1</p>\n"

        second = origin.push("2")
        wait_for(lambda: replica().get("version") == second, 60, "the pushed commit serving")
        assert page(port) == "<h1>deedmesh WAR example</h1>\n<p>version 2</p>\n"

        (origin.work / "index.html.in").unlink()  # the build's sed has no input: it fails
        broken = origin.push("3")
        wait_for(lambda: replica().get("failed_version") == broken, 60, "the broken commit shown as failed")
        assert replica()["version"] == second
        assert page(port) == "<h1>deedmesh WAR example</h1>\n<p>version 2</p>\n"
        table = run_cli("job", "status", str(job_id), "--via", node.api, as_json=False)
        text = " ".join(table.output.split())  # rich wraps to the terminal's width
        assert f"rollout-failed replica 0 on {ident.address}: {broken} failed; {second} keeps serving" in text
        assert f"version replica 0 on {ident.address}: serving {second}" in text
        logs = run_cli("job", "logs", str(job_id), "--via", node.api, "--key", csp_key)
        assert logs.exit_code == 0, logs.output
        assert f"[deedmesh] rollout of {broken} failed: build of {broken} exited" in logs.output

        with urllib.request.urlopen(f"{node.api}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'deedmesh_war_rollouts_total{outcome="served"} 2' in metrics
        assert 'deedmesh_war_rollouts_total{outcome="failed"} 1' in metrics

        stopped = run_cli("job", "stop", str(job_id), "--via", node.api, *signer)
        assert stopped.exit_code == 0, stopped.output
        runner = CarRunner(engine, ident.address)
        wait_for(lambda: not runner.list_managed(), 30, "every container removed")
        assert page(port) is None
    finally:
        if node is not None:
            stop(node)
        for leftover in CarRunner(engine, ident.address).list_managed():
            engine.containers.get(leftover.container_id).remove(force=True)


NATIVE_SPEC = """
kind: war
name: native-site
resources: {{cpu_millis: 500, memory_mb: 128}}
ports: [{{container: 8080, host: {port}}}]
health: {{type: http, port: 8080, path: /, interval_s: 1, timeout_s: 1}}
war:
  image: none/natively:1   # a node with no engine runs no image: the host's tools, on $PORT
  pull: never
  repo: "{repo}"
  build: [sh, build.sh]
  run: [sh, -c, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory out']
  poll_s: 1
"""


@pytest.mark.anvil
def test_a_node_with_no_engine_runs_a_war_app_as_processes_when_asked(anvil_url: str, tmp_path: Path) -> None:
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    (ident,) = licensed_nodes(chain, dep, 0x6A, 1)
    origin = Origin(tmp_path / "repo")
    first = origin.push("1")
    port = free_port()
    spec_file = tmp_path / "native.yaml"
    spec_file.write_text(NATIVE_SPEC.format(port=port, repo=origin.url))
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    signer = ["--key", csp_key, "--deployment", str(record)]
    job_id = fund_job(spec_file, csp_key, anvil_url, record)
    node: NodeProcess | None = None
    native = NativeRunner(tmp_path / "node1.work" / "native", ident.address)
    try:
        node = start_node(tmp_path, 1, ident, anvil_url, record, [], extra=("--engine", "none", "--native-war"))
        with urllib.request.urlopen(f"{node.api}/peers", timeout=10) as r:
            assert r.status == 200
        result = run_cli("deploy", str(spec_file), "--job", str(job_id), "--via", node.api, *signer)
        assert result.exit_code == 0, result.output

        def replica(n: NodeProcess = node) -> dict:
            return first_replica(n.api, job_id)

        wait_for(lambda: replica().get("version") == first and replica()["state"] == "healthy", 60,
                 "the first commit serving natively")
        assert page(port) == "<p>version 1</p>\n"
        assert [(s.role, s.version) for s in native.list_managed()] == [("serve", first)]  # a process, no container
        second = origin.push("2")
        wait_for(lambda: replica().get("version") == second, 60, "the pushed commit serving")
        assert page(port) == "<p>version 2</p>\n"
        stopped = run_cli("job", "stop", str(job_id), "--via", node.api, *signer)
        assert stopped.exit_code == 0, stopped.output
        wait_for(lambda: not native.list_managed(), 30, "every process removed")
        assert page(port) is None
    finally:
        if node is not None:
            stop(node)
        for leftover in native.list_managed():
            native.remove(leftover.container_id, timeout_s=1)
