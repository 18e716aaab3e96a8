"""The ChainDist example through the README's commands: ``job fund`` and ``deploy`` of
``examples/chaindist-primes.yaml`` to two ``deedmesh node run`` processes (libp2p between them);
``job status`` from either node shows the run completed with its result digest, ``job logs`` the
answer (the primes below 50,000: 5,133) and where each shard ran; ``job stop`` ends it."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from mesh._chaindist import rank_workers
from mesh._runner_car import CarRunner

from .test_cli_job import ADMITTED, fund_job, licensed_nodes, run_cli, setup_chain
from .test_node_processes import NodeProcess, peer_states, start_node, stop, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chaindist-primes.yaml"


@pytest.mark.anvil
def test_the_chaindist_example_runs_over_two_nodes_and_shows_its_result(
        anvil_url: str, tmp_path: Path, engine: docker.DockerClient) -> None:
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    idents = licensed_nodes(chain, dep, 0x6A, 2)
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    signer = ["--key", csp_key, "--deployment", str(record)]
    job_id = fund_job(EXAMPLE, csp_key, anvil_url, record)
    nodes: list[NodeProcess] = []
    try:
        for n, ident in enumerate(idents):
            bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
            nodes.append(start_node(tmp_path, n, ident, anvil_url, record, bootstrap))
        wait_for(lambda: all(len(peer_states(n.api)) == 1 for n in nodes), 30, "the two nodes see each other")
        result = run_cli("deploy", str(EXAMPLE), "--job", str(job_id), "--via", nodes[1].api, *signer)
        assert result.exit_code == 0, result.output

        def replica(n: NodeProcess) -> dict:
            status = run_cli("job", "status", str(job_id), "--via", n.api)
            claims = json.loads(status.output)[0]["claims"] if status.exit_code == 0 else []
            return claims[0] if claims else {}

        wait_for(lambda: replica(nodes[0]).get("result_digest") is not None, 120, "the run completed")
        seen = replica(nodes[1])
        assert seen["state"] == "completed"
        digest = seen["result_digest"]
        assert len(digest) == 64
        assert replica(nodes[0])["result_digest"] == digest
        logs = run_cli("job", "logs", str(job_id), "--via", nodes[0].api, "--key", csp_key)
        assert logs.exit_code == 0, logs.output
        text = json.loads(logs.stdout)["replicas"][0]["logs"]
        assert f"completed: digest {digest}\n5133" in text
        given = {int(line.split("shard ")[1].split(" ")[0]): line.split(" -> ")[1]
                 for line in text.splitlines() if " -> " in line}
        # each shard went to the first worker of its own rendezvous order, which anyone can recompute
        assert given == {s: rank_workers(job_id, s, [n.address for n in nodes])[0] for s in range(4)}
        events = run_cli("job", "status", str(job_id), "--via", nodes[1].api, as_json=False)
        assert f"digest {digest}" in " ".join(events.output.split())

        stopped = run_cli("job", "stop", str(job_id), "--via", nodes[0].api, *signer)
        assert stopped.exit_code == 0, stopped.output
        wait_for(lambda: not replica(nodes[1]), 30, "the run released")
        assert all(not CarRunner(engine, n.address).list_managed() for n in nodes)
    finally:
        for node in nodes:
            stop(node)
        for ident in idents:
            for leftover in CarRunner(engine, ident.address).list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
