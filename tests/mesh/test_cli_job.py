"""``deedmesh job fund`` against anvil: a CSP funds a job for a spec file with its own keystore key;
a bad spec is refused before anything is spent, an unadmitted CSP gets the escrow's named error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from contracts import Chain, DeployConfig, csp_admission, deploy, sign
from mesh._cli import cli
from mesh._identity import NodeIdentity, write_keystore
from mesh._jobspec import spec_hash
from mesh._jobspec_load import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml"
PASSWORD = "csp-password"
ATTESTER = Account.from_key("0x" + "a7" * 32)


def fund(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--json", "job", "fund", *args], env={"DEEDMESH_KEY_PASSWORD": PASSWORD})


@pytest.mark.anvil
def test_a_csp_funds_a_job_for_its_spec(anvil_url: str, tmp_path: Path) -> None:
    chain = Chain.connect(anvil_url)
    a = chain.accounts
    dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=ATTESTER.address)
    record = tmp_path / "deployment.json"
    record.write_text(dep.to_json())
    escrow, token, licenses = dep.escrow(chain), dep.payment_token(chain), dep.licenses(chain)
    admitted, stranger = NodeIdentity(bytes([0x5A]) * 32), NodeIdentity(bytes([0x5B]) * 32)
    for ident in (admitted, stranger):
        chain.send_value(a[0], ident.address, 10**18)
        token.mint(ident.address, 10**6, sender=a[0])
        write_keystore(tmp_path / f"{ident.address}.json", ident, PASSWORD, scrypt_n=2**10)
    licenses.mint(admitted.address, sender=a[0])  # the deed requirement
    kyc, until = b"kyc".ljust(32, b"\0"), chain.now() + 86_400
    escrow.admit_csp(admitted.address, kyc, until, 1, sign(csp_admission(escrow.domain(), admitted.address, kyc,
                                                                         until, 1), ATTESTER.key), sender=a[0])
    common = ["--rpc", anvil_url, "--deployment", str(record), "--price", "10", "--epochs", "3"]

    result = fund(str(EXAMPLE), "--key", str(tmp_path / f"{admitted.address}.json"), *common)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    job = escrow.get_job(out["job_id"])
    assert job.csp == admitted.address
    assert job.spec_hash == spec_hash(load_spec(EXAMPLE))
    assert (job.replicas, job.epochs, job.deposited) == (2, 3, 10 * 2 * 3)
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
