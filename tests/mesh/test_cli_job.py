"""``deedmesh job fund`` against anvil: a CSP funds a job for a spec file with its own keystore key;
a bad spec is refused before anything is spent, an unadmitted CSP gets the escrow's named error.
Then two ``deedmesh node run`` processes: ``deploy``, ``job status``, ``job logs`` and ``job stop``
through either node, by its HTTP API URL or its libp2p multiaddr; each replica's container log read
through the node that does not run it; refusals by exit code and reason."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from contracts import Chain, DeployConfig, Deployment, csp_admission, deploy, sign
from mesh._cli import cli
from mesh._cli_client import call_node
from mesh._cli_job import submit
from mesh._errors import SubmissionRefused
from mesh._identity import NodeIdentity, write_keystore
from mesh._jobspec import spec_hash
from mesh._jobspec_load import load_spec
from mesh._runner_car import CarRunner
from mesh._submission import sign_log_request, sign_submission

from ..engine.test_mesh_car import answers
from .test_node_processes import NodeProcess, peer_states, start_node, stop, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml"
PASSWORD = "csp-password"
ATTESTER = Account.from_key("0x" + "a7" * 32)


def fund(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--json", "job", "fund", *args], env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


ADMITTED, STRANGER = NodeIdentity(bytes([0x5A]) * 32), NodeIdentity(bytes([0x5B]) * 32)


def setup_chain(anvil_url: str, tmp_path: Path, config: DeployConfig | None = None,
                oracles: list[str] | None = None) -> tuple[Chain, Deployment, Path]:
    """A fresh deployment (the devnet preset, three of anvil's accounts as oracles, unless given)
    with one admitted CSP (ADMITTED) and one that is not (STRANGER), both funded, their keystores
    in ``tmp_path``."""
    chain = Chain.connect(anvil_url)
    a = chain.accounts
    dep = deploy(chain, config or DeployConfig.devnet(), admin=a[0], oracles=oracles or [a[1], a[2], a[3]],
                 attester=ATTESTER.address)
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



def licensed_nodes(chain: Chain, dep: Deployment, first_byte: int, n: int) -> list[NodeIdentity]:
    """``n`` node identities, each linked to a license of its own operator account."""
    a, licenses = chain.accounts, dep.licenses(chain)
    idents = [NodeIdentity(bytes([first_byte + i]) * 32) for i in range(n)]
    for i, ident in enumerate(idents):
        licenses.link_node(licenses.mint(a[6 + i], sender=a[0]), ident.address, sender=a[6 + i])
    return idents


def fund_job(spec_file: Path, csp_key: str, rpc: str, record: Path, epochs: int = 2) -> int:
    """``job fund`` of ``spec_file`` by the admitted CSP (10 units per node-epoch, ``epochs`` epochs): the job id."""
    funded = run_cli("job", "fund", str(spec_file), "--key", csp_key, "--rpc", rpc, "--deployment", str(record),
                     "--price", "10", "--epochs", str(epochs))
    assert funded.exit_code == 0, funded.output
    return int(json.loads(funded.output)["job_id"])


def run_cli(*args: str, as_json: bool = True) -> Result:
    return CliRunner().invoke(cli, ["--json", *args] if as_json else list(args),
                              env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


def fetch(url: str) -> bytes:
    """The body at ``url``, or b"" while nothing answers there properly yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return bytes(r.read())
    except (OSError, http.client.HTTPException):
        return b""


MARKER = "a line from the container"
# the example web app, printing one line at start: $GREETING is expanded by the container's shell
LOGGING_COMMAND = f"""command: [sh, -c, 'echo "$GREETING: {MARKER}"; exec httpd -f -v -p 8080 -h /www']"""


@pytest.mark.anvil
def test_deploy_status_logs_and_stop_through_either_node_by_url_or_multiaddr(
        anvil_url: str, tmp_path: Path, engine: docker.DockerClient) -> None:
    # the engine is up, so both nodes advertise a CAR runner, claim a replica each and run it
    chain, dep, record = setup_chain(anvil_url, tmp_path)
    idents = licensed_nodes(chain, dep, 0x60, 2)
    csp_key = str(tmp_path / f"{ADMITTED.address}.json")
    spec_file = tmp_path / "web.yaml"
    spec_file.write_text(EXAMPLE.read_text().replace('command: [httpd, -f, -v, -p, "8080", -h, /www]', LOGGING_COMMAND))
    assert MARKER in spec_file.read_text()
    funded = run_cli("job", "fund", str(spec_file), "--key", csp_key, "--rpc", anvil_url, "--deployment", str(record),
                     "--price", "10", "--epochs", "2")
    job_id = json.loads(funded.output)["job_id"]
    nodes: list[NodeProcess] = []
    try:
        for n, ident in enumerate(idents):
            bootstrap = nodes[0].ready["addrs"][:1] if nodes else []
            nodes.append(start_node(tmp_path, n, ident, anvil_url, record, bootstrap))  # (node 2 would have no escrow)
        wait_for(lambda: all(len(peer_states(n.api)) == 1 for n in nodes), 30, "the two nodes see each other")
        signer = ["--key", csp_key, "--deployment", str(record)]
        p2p = [n.ready["addrs"][0] for n in nodes]  # /ip4/127.0.0.1/tcp/<port>/p2p/<peer id>
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/16Uiu2" in a for a in p2p)

        # deployed through node 1's libp2p address: no HTTP involved
        result = run_cli("deploy", str(spec_file), "--job", str(job_id), "--via", p2p[0], *signer)
        assert result.exit_code == 0, result.output
        accepted = json.loads(result.output)
        assert (accepted["job_id"], accepted["accepted_by"]) == (job_id, nodes[0].address)

        def seen_by(node: NodeProcess) -> dict:
            status = run_cli("job", "status", str(job_id), "--via", node.api)
            return json.loads(status.output)[0] if status.exit_code == 0 else {}

        wait_for(lambda: seen_by(nodes[1]).get("nonce") == accepted["nonce"], 10, "the job relayed to node 2")
        assert seen_by(nodes[1])["name"] == "web"
        # both replicas are claimed, one per node, and both nodes see the same claims
        def claims_of(node: NodeProcess) -> list[dict]:  # as every node sees them (a holder adds its ports)
            return [{k: v for k, v in c.items() if k != "ports"} for c in seen_by(node).get("claims", [])]

        wait_for(lambda: {c["node"] for c in claims_of(nodes[0])} == {n.address for n in nodes}
                 and claims_of(nodes[0]) == claims_of(nodes[1]), 15, "two replicas claimed")
        # job status over libp2p shows what HTTP shows
        over_p2p = run_cli("job", "status", str(job_id), "--via", p2p[1])
        assert over_p2p.exit_code == 0, over_p2p.output
        shown, http = json.loads(over_p2p.stdout)[0], seen_by(nodes[1])
        assert (shown["nonce"], shown["name"]) == (http["nonce"], http["name"]) == (accepted["nonce"], "web")
        assert [(c["replica"], c["node"]) for c in shown["claims"]] == [(c["replica"], c["node"])
                                                                        for c in http["claims"]]
        runners = {n.address: CarRunner(engine, n.address) for n in nodes}
        claims = seen_by(nodes[0])["claims"]
        for claim in claims:  # each node runs its replica: the web app answers
            wait_for(lambda c=claim: answers(runners[c["node"]], job_id, c["replica"]), 60, "a replica answering")
        for node in nodes:  # at the port its holder shows for it (the node's front), and only the holder shows one
            own = [c for c in seen_by(node)["claims"] if c["node"] == node.address]
            assert len(own) == 1
            assert own[0]["ports"].keys() == {"8080"}
            front = f"http://127.0.0.1:{own[0]['ports']['8080']}/"
            # the front routes to the replica once its node has seen it healthy, a moment after it answers
            def front_answers(url: str = front) -> bool:
                return b"hello" in fetch(url)

            wait_for(front_answers, 30, "the node's front answering")
            assert all(c["ports"] == {} for c in seen_by(node)["claims"] if c["node"] != node.address)
        # and job status from either node shows both replicas healthy (the example checks every 5 s)
        wait_for(lambda: [c["state"] for c in seen_by(nodes[1])["claims"]] == ["healthy", "healthy"], 30,
                 "both replicas healthy in job status")
        # with its recent events, as that node saw them: the submission, each replica placed and healthy
        events = {(e["what"], e["replica"], e["node"], e["detail"]) for e in seen_by(nodes[1])["events"]}
        assert ("submitted", None, None, f"nonce {accepted['nonce']}") in events
        for c in claims:
            assert ("placed", c["replica"], c["node"], "generation 1") in events
        wait_for(lambda: {(e["replica"], e["node"]) for e in seen_by(nodes[1])["events"] if e["detail"] == "healthy"}
                 == {(c["replica"], c["node"]) for c in claims}, 10, "healthy events for both replicas")
        table = run_cli("job", "status", str(job_id), "--via", nodes[1].api, as_json=False)
        assert table.exit_code == 0, table.output
        assert f"recent events of job {job_id}" in table.output
        assert "placed replica 0 on" in table.output

        # each replica's log, through the node that does not run it (over HTTP, then over libp2p)
        for claim, via in zip(claims, ("api", "p2p"), strict=True):
            other = next(n for n in nodes if n.address != claim["node"])

            def log_of(c: dict = claim, node: NodeProcess = other, how: str = via) -> dict:
                target = node.api if how == "api" else node.ready["addrs"][0]
                got = run_cli("job", "logs", str(job_id), "--via", target, "--key", csp_key,
                              "--replica", str(c["replica"]))
                assert got.exit_code == 0, got.output
                return json.loads(got.stdout)["replicas"][0]

            wait_for(lambda f=log_of: MARKER in f()["logs"], 30, "the replica's log through the other node")
            shown_log = log_of()
            assert (shown_log["replica"], shown_log["node"]) == (claim["replica"], claim["node"])
            assert f"hello from deedmesh: {MARKER}" in shown_log["logs"]  # $GREETING expanded in the container
        # every replica at once, as text, through node 1's libp2p address, the escrow taken from the node
        every = run_cli("job", "logs", str(job_id), "--via", p2p[0], "--key", csp_key, "--tail", "5", as_json=False)
        assert every.exit_code == 0, every.output
        for claim in claims:
            assert f"==> replica {claim['replica']} on {claim['node']} <==" in every.stdout
        assert every.stdout.count(MARKER) == 2
        # refused: another CSP, an unknown job, a replica that does not exist, an expired request
        log_refusals = [
            (["--key", str(tmp_path / f"{STRANGER.address}.json")], str(job_id), "403 wrong-owner"),
            (["--key", csp_key], "999", "404 unknown-job"),
            (["--key", csp_key, "--replica", "5"], str(job_id), "404 no-replica"),
        ]
        for args, job, reason in log_refusals:
            result = run_cli("job", "logs", job, "--via", p2p[1], *args)
            assert result.exit_code == 12, result.output
            assert reason in result.output
        expired = sign_log_request(ADMITTED.private_key, chain.chain_id, dep.job_escrow, job_id, None, 5,
                                   int(time.time()) - 1)
        status, refusal = call_node(nodes[1].api, "POST", f"/jobs/{job_id}/logs", expired.model_dump())
        assert (status, refusal["error"]) == (410, "expired")
        # a multiaddr naming another peer id than the node's: Noise refuses the dial
        wrong = p2p[0].split("/p2p/")[0] + "/p2p/" + p2p[1].split("/p2p/")[1]
        result = run_cli("job", "status", "--via", wrong)
        assert result.exit_code == 9, result.output
        assert "unreachable over libp2p" in result.output

        refusals = [
            (["deploy", str(spec_file), "--job", str(job_id), "--via", nodes[1].api, "--key",
              str(tmp_path / f"{STRANGER.address}.json"), "--deployment", str(record)], "wrong-owner"),
            (["deploy", str(spec_file), "--job", "999", "--via", p2p[1], *signer], "unknown-job"),
        ]
        for args, reason in refusals:
            result = run_cli(*args)
            assert result.exit_code == 11, result.output
            assert f" {reason})" in result.output
        # the same signed body twice, through two nodes: the second is a replay (the first was relayed)
        now = int(time.time())
        spec = load_spec(spec_file)
        signed = sign_submission(ADMITTED.private_key, chain.chain_id, dep.job_escrow, job_id,
                                 spec_hash(spec), accepted["nonce"] + 1, now + 600)
        body = {"submission": signed.model_dump(), "spec": spec.model_dump(mode="json")}
        assert submit(nodes[0].api, body)["nonce"] == accepted["nonce"] + 1
        wait_for(lambda: seen_by(nodes[1]).get("nonce") == accepted["nonce"] + 1, 10, "the second action relayed")
        with pytest.raises(SubmissionRefused) as refused:
            submit(p2p[1], body)  # the same refusal over libp2p as over HTTP
        assert (refused.value.status, refused.value.reason) == (409, "replayed")
        expired = sign_submission(ADMITTED.private_key, chain.chain_id, dep.job_escrow, job_id,
                                  spec_hash(spec), accepted["nonce"] + 2, now - 1)
        with pytest.raises(SubmissionRefused) as refused:
            submit(nodes[1].api, {"submission": expired.model_dump(), "spec": body["spec"]})
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
