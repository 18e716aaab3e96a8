"""``job update`` and ``job scale`` as the README shows them, against two node processes, anvil and
the real engine: an update rolls out and the escrow names the new spec; a scale down returns the
released replica's share of the epochs left and a scale up pulls it again, each exactly as the
escrow quoted; an update whose image does not exist is rolled back by the mesh and recorded back
on chain (exit 13); bad input is refused before anything is spent."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from mesh._jobspec import revision_of, spec_hash
from mesh._jobspec_load import load_spec
from mesh._runner_car import CarRunner

from .test_cli_job import ADMITTED, EXAMPLE, fund_job, licensed_nodes, run_cli, setup_chain
from .test_node_processes import NodeProcess, peer_states, start_node, stop, wait_for


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.anvil
def test_update_scale_and_a_rolled_back_update_through_the_cli(
        anvil_url: str, tmp_path: Path, engine: docker.DockerClient) -> None:
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    idents = licensed_nodes(chain, dep, 0x6C, 2)
    escrow, token = dep.escrow(chain), dep.payment_token(chain)
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    v1 = write(tmp_path / "v1.yaml", EXAMPLE.read_text())
    v2 = write(tmp_path / "v2.yaml", EXAMPLE.read_text().replace("hello from deedmesh", "hello again"))
    broken = write(tmp_path / "broken.yaml", v2.read_text().replace("localhost/deedmesh-busybox:1",
                                                                    "localhost/deedmesh-missing:1"))
    three = write(tmp_path / "three.yaml", v2.read_text().replace("replicas: 2", "replicas: 3"))
    job_id = fund_job(v1, csp_key, anvil_url, record, epochs=30)  # outlasts a slow run: scales need epochs left
    csp = ["--key", csp_key, "--deployment", str(record)]
    chained = [*csp, "--rpc", anvil_url, "--timeout-s", "120"]
    nodes: list[NodeProcess] = []
    try:
        for n, ident in enumerate(idents):
            bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
            nodes.append(start_node(tmp_path, n, ident, anvil_url, record, bootstrap))
        wait_for(lambda: all(len(peer_states(n.api)) == 1 for n in nodes), 30, "the two nodes see each other")
        via = ["--via", nodes[0].api]
        deployed = run_cli("deploy", str(v1), "--job", str(job_id), *via, *csp)
        assert deployed.exit_code == 0, deployed.output

        def replicas() -> list[dict]:
            shown = run_cli("job", "status", str(job_id), "--via", nodes[1].api)
            return json.loads(shown.output)[0]["claims"] if shown.exit_code == 0 else []

        wait_for(lambda: [c["state"] for c in replicas()] == ["healthy", "healthy"], 60, "two replicas healthy")

        # refused before anything is spent: another replica count is a scale, not an update
        refused = run_cli("job", "update", str(job_id), str(three), *via, *chained)
        assert refused.exit_code == 2, refused.output
        assert "job scale" in refused.output
        assert escrow.get_job(job_id).spec_hash == spec_hash(load_spec(v1))

        updated = run_cli("job", "update", str(job_id), str(v2), *via, *chained)
        assert updated.exit_code == 0, updated.output
        out = json.loads(updated.output)
        assert (out["outcome"], out["revision"]) == ("updated", revision_of(load_spec(v2)))
        assert escrow.get_job(job_id).spec_hash == spec_hash(load_spec(v2))
        assert {c["revision"] for c in replicas()} == {revision_of(load_spec(v2))}

        # scale down: replica 1 stops and its share of the epochs left comes back at once (the
        # epochs left as of the transaction's block: the JSON says what the escrow did)
        before = token.balance_of(ADMITTED.address)
        down = run_cli("job", "scale", str(job_id), "1", *via, *chained)
        assert down.exit_code == 0, down.output
        out = json.loads(down.output)
        assert (out["outcome"], out["replicas"], out["previous"]) == ("scaled", 1, 2)
        funded = escrow.get_job(job_id)
        left = funded.start_epoch + funded.epochs - out["from_epoch"]  # from the next epoch (or the start) to the end
        assert left > 0
        assert (out["pulled"], out["refunded"]) == (0, 10 * 1 * left)
        assert token.balance_of(ADMITTED.address) == before + out["refunded"]
        assert escrow.get_job(job_id).replicas == 1
        assert [c["replica"] for c in replicas()] == [0]

        # scale up again: paid for, and a second replica runs
        before = token.balance_of(ADMITTED.address)
        up = run_cli("job", "scale", str(job_id), "2", *via, *chained)
        assert up.exit_code == 0, up.output
        out = json.loads(up.output)
        assert out["pulled"] == 10 * 1 * (funded.start_epoch + funded.epochs - out["from_epoch"]) > 0
        assert token.balance_of(ADMITTED.address) == before - out["pulled"]
        assert escrow.get_job(job_id).replicas == 2
        wait_for(lambda: [c["state"] for c in replicas()] == ["healthy", "healthy"], 60, "two replicas again")

        # an update that cannot run is rolled back by the mesh, then recorded back on chain
        rolled = run_cli("job", "update", str(job_id), str(broken), *via, *chained)
        assert rolled.exit_code == 13, rolled.output
        assert "rolled back" in rolled.output
        assert escrow.get_job(job_id).spec_hash == spec_hash(load_spec(v2))
        assert escrow.get_job(job_id).replicas == 2
        wait_for(lambda: {(c["revision"], c["state"]) for c in replicas()} == {(revision_of(load_spec(v2)),
                                                                                 "healthy")},
                 30, "every replica healthy on the previous revision")
        stopped = run_cli("job", "stop", str(job_id), *via, *csp)
        assert stopped.exit_code == 0, stopped.output
        wait_for(lambda: not any(CarRunner(engine, i.address).list_managed() for i in idents), 60,
                 "every container removed")
    finally:
        for node in nodes:
            stop(node)
        for ident in idents:
            for leftover in CarRunner(engine, ident.address).list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
