"""``deedmesh job fund`` against anvil: a CSP funds a job for a spec file with its own keystore key;
a bad spec is refused before anything is spent, an unadmitted CSP gets the escrow's named error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from contracts import Chain, DeployConfig, Deployment, csp_admission, deploy, sign
from mesh._cli import cli
from mesh._cli_job import _post as post
from mesh._errors import SubmissionRefused
from mesh._identity import NodeIdentity, write_keystore
from mesh._jobspec import spec_hash
from mesh._jobspec_load import load_spec
from mesh._runner_car import CarRunner
from mesh._submission import sign_submission

from ..engine.test_mesh_car import answers
from .test_node_processes import NodeProcess, peer_states, start_node, stop, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml"
PASSWORD = "csp-password"
ATTESTER = Account.from_key("0x" + "a7" * 32)


def fund(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--json", "job", "fund", *args], env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


ADMITTED, STRANGER = NodeIdentity(bytes([0x5A]) * 32), NodeIdentity(bytes([0x5B]) * 32)


def setup_chain(anvil_url: str, tmp_path: Path) -> tuple[Chain, Deployment, Path]:
    """A fresh deployment with one admitted CSP (ADMITTED) and one that is not (STRANGER), both
    funded, their keystores in ``tmp_path``."""
    chain = Chain.connect(anvil_url)
    a = chain.accounts
    dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=ATTESTER.address)
    record = tmp_path / "deployment.json"
    record.write_text(dep.to_json())
    escrow, token, licenses = dep.escrow(chain), dep.payment_token(chain), dep.licenses(chain)
    for ident in (ADMITTED, STRANGER):
        chain.send_value(a[0], ident.address, 10**18)
        token.mint(ident.address, 10**6, sender=a[0])
        write_keystore(tmp_path / f"{ident.address}.json", ident, PASSWORD, scrypt_n=2**10)
    licenses.mint(ADMITTED.address, sender=a[0])  # the deed requirement
    kyc, until = b"kyc".ljust(32, b"\0"), chain.now() + 86_400
    escrow.admit_csp(ADMITTED.address, kyc, until, 1, sign(csp_admission(escrow.domain(), ADMITTED.address, kyc,
                                                                         until, 1), ATTESTER.key), sender=a[0])
    return chain, dep, record


@pytest.mark.anvil
def test_a_csp_funds_a_job_for_its_spec(anvil_url: str, tmp_path: Path) -> None:
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    escrow, token = dep.escrow(chain), dep.payment_token(chain)
    admitted, stranger = ADMITTED, STRANGER
    common = ["--rpc", anvil_url, "--deployment", str(record), "--price", "10", "--epochs", "3"]

    epoch_before = escrow.current_epoch()
    result = fund(str(EXAMPLE), "--key", str(tmp_path / f"{admitted.address}.json"), *common)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    job = escrow.get_job(out["job_id"])
    assert job.csp == admitted.address
    assert job.spec_hash == spec_hash(load_spec(EXAMPLE))
    assert (job.replicas, job.epochs, job.deposited) == (2, 3, 10 * 2 * 3)
    assert job.start_epoch >= epoch_before + 1  # the default: after the epoch it was funded in
    assert token.balance_of(admitted.address) == 10**6 - 60

    result = fund(str(EXAMPLE), "--key", str(tmp_path / f"{stranger.address}.json"), *common)
    assert result.exit_code == 5
    assert "JobEscrowCspNotAdmitted" in result.output
    assert token.balance_of(stranger.address) == 10**6  # nothing was taken

    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("replicas: 2", "replicas: 0"))
    result = fund(str(bad), "--key", str(tmp_path / f"{admitted.address}.json"), *common)
    assert result.exit_code == 10
    assert "bad.yaml:4:1: replicas: Input should be greater than or equal to 1" in result.output
    assert escrow.last_job_id() == out["job_id"]  # no job was created for it



def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--json", *args], env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


@pytest.mark.anvil
def test_deploy_through_one_node_is_seen_everywhere_and_bad_submissions_are_refused(
        anvil_url: str, tmp_path: Path, engine: docker.DockerClient) -> None:
    # the engine is up, so both nodes advertise a CAR runner, claim a replica each and run it
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    a = chain.accounts
    licenses = dep.licenses(chain)
    idents = [NodeIdentity(bytes([0x60 + i]) * 32) for i in range(2)]
    for i, ident in enumerate(idents):
        lic = licenses.mint(a[6 + i], sender=a[0])
        licenses.link_node(lic, ident.address, sender=a[6 + i])
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    funded = run_cli("job", "fund", str(EXAMPLE), "--key", csp_key, "--rpc", anvil_url, "--deployment", str(record),
                     "--price", "10", "--epochs", "2")
    job_id = json.loads(funded.output)["job_id"]
    nodes: list[NodeProcess] = []
    try:
        for n, ident in enumerate(idents):
            bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
            nodes.append(start_node(tmp_path, n, ident, anvil_url, record, bootstrap))  # (node 2 would have no escrow)
        wait_for(lambda: all(len(peer_states(n.api)) == 1 for n in nodes), 30, "the two nodes see each other")
        signer = ["--key", csp_key, "--deployment", str(record)]

        result = run_cli("deploy", str(EXAMPLE), "--job", str(job_id), "--via", nodes[0].api, *signer)
        assert result.exit_code == 0, result.output
        accepted = json.loads(result.output)
        assert (accepted["job_id"], accepted["accepted_by"]) == (job_id, nodes[0].address)

        def seen_by(node: NodeProcess) -> dict:
            status = run_cli("job", "status", str(job_id), "--via", node.api)
            return json.loads(status.output)[0] if status.exit_code == 0 else {}

        wait_for(lambda: seen_by(nodes[1]).get("nonce") == accepted["nonce"], 10, "the job relayed to node 2")
        assert seen_by(nodes[1])["name"] == "web"
        # both replicas are claimed, one per node, and both nodes see the same claims
        wait_for(lambda: {c["node"] for c in seen_by(nodes[0]).get("claims", [])} == {n.address for n in nodes}
                 and seen_by(nodes[0])["claims"] == seen_by(nodes[1])["claims"], 15, "two replicas claimed")
        runners = {n.address: CarRunner(engine, n.address) for n in nodes}
        for claim in seen_by(nodes[0])["claims"]:  # each node runs its replica: the web app answers
            wait_for(lambda c=claim: answers(runners[c["node"]], job_id, c["replica"]), 60, "a replica answering")
        # and job status from either node shows both replicas healthy (the example checks every 5 s)
        wait_for(lambda: [c["state"] for c in seen_by(nodes[1])["claims"]] == ["healthy", "healthy"], 30,
                 "both replicas healthy in job status")

        refusals = [
            (["deploy", str(EXAMPLE), "--job", str(job_id), "--via", nodes[1].api, "--key",
              str(tmp_path / f"{STRANGER.address}.json"), "--deployment", str(record)], "wrong-owner"),
            (["deploy", str(EXAMPLE), "--job", "999", "--via", nodes[1].api, *signer], "unknown-job"),
        ]
        for args, reason in refusals:
            result = run_cli(*args)
            assert result.exit_code == 11, result.output
            assert f" {reason})" in result.output
        # the same signed body twice, through two nodes: the second is a replay (the first was relayed)
        now = int(time.time())
        signed = sign_submission(ADMITTED.private_key, chain.chain_id, dep.job_escrow, job_id,
                                 spec_hash(load_spec(EXAMPLE)), accepted["nonce"] + 1, now + 600)
        body = json.dumps({"submission": signed.model_dump(), "spec": load_spec(EXAMPLE).model_dump(mode="json")})
        assert post(f"{nodes[0].api}/jobs", body.encode())["nonce"] == accepted["nonce"] + 1
        wait_for(lambda: seen_by(nodes[1]).get("nonce") == accepted["nonce"] + 1, 10, "the second action relayed")
        with pytest.raises(SubmissionRefused) as refused:
            post(f"{nodes[1].api}/jobs", body.encode())
        assert (refused.value.status, refused.value.reason) == (409, "replayed")
        expired = sign_submission(ADMITTED.private_key, chain.chain_id, dep.job_escrow, job_id,
                                  spec_hash(load_spec(EXAMPLE)), accepted["nonce"] + 2, now - 1)
        with pytest.raises(SubmissionRefused) as refused:
            post(f"{nodes[1].api}/jobs", json.dumps({"submission": expired.model_dump(), "spec": json.loads(body)[
                "spec"]}).encode())
        assert (refused.value.status, refused.value.reason) == (410, "expired")

        result = run_cli("job", "stop", str(job_id), "--via", nodes[1].api, *signer)
        assert result.exit_code == 0, result.output
        wait_for(lambda: seen_by(nodes[0]).get("stopped") is True, 10, "the stop relayed to node 1")
        wait_for(lambda: seen_by(nodes[0])["claims"] == [] == seen_by(nodes[1])["claims"], 15, "replicas released")
        wait_for(lambda: not any(r.list_managed() for r in runners.values()), 30, "containers removed")
    finally:
        for node in nodes:
            stop(node)
        for ident in idents:  # containers a failed run left behind, by this test's node labels
            for leftover in CarRunner(engine, ident.address).list_managed():
                engine.containers.get(leftover.container_id).remove(force=True)
