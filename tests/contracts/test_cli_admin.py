"""``deedmesh chain`` governance and bootstrap commands against anvil, in process (click's runner,
through the ``deedmesh`` group so exit codes are the user's): each one's effect on chain, and each
refusal by its exit code and the contract error it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from contracts import (
    Chain,
    DeployConfig,
    Deployment,
    JobParams,
    LicenseStatus,
    csp_admission,
    deploy,
    free_port,
    sign,
)
from mesh._cli import cli
from mesh._identity import NodeIdentity, write_keystore

pytestmark = pytest.mark.anvil

PASSWORD = "admin-test-password"
ATTESTER = NodeIdentity(bytes([0xA1]) * 32)
OWNER = NodeIdentity(bytes([0xA2]) * 32)
STRANGER = NodeIdentity(bytes([0xA3]) * 32)
NODE = Account.from_key(bytes([0xA4]) * 32).address
DEVNET = DeployConfig(epoch_seconds=10, close_grace_epochs=2, relink_cooldown_s=5, oracle_threshold=1, mock_token=True)


def run(*args: str, password: str = PASSWORD) -> Result:
    return CliRunner().invoke(cli, list(args), env={"DEEDMESH_KEY_PASSWORD": password})


@pytest.fixture
def world(anvil_url: str, tmp_path: Path) -> tuple[Chain, Deployment, list[str]]:
    """A fresh devnet deployment; keystores for the attester, an owner and a stranger in tmp_path.
    Returns the chain, the record and the ``--rpc/--deployment`` arguments."""
    chain = Chain.connect(anvil_url)
    dep = deploy(chain, DEVNET, admin=chain.accounts[0], oracles=[chain.accounts[1]], attester=ATTESTER.address)
    (tmp_path / "deployment.json").write_text(dep.to_json())
    for name, ident in (("attester", ATTESTER), ("owner", OWNER), ("stranger", STRANGER)):
        write_keystore(tmp_path / f"{name}.json", ident, PASSWORD, scrypt_n=2**10)
    return chain, dep, ["--rpc", anvil_url, "--deployment", str(tmp_path / "deployment.json")]


def test_bootstrap_a_node_operator_and_a_csp(world: tuple[Chain, Deployment, list[str]], tmp_path: Path) -> None:
    chain, dep, on = world
    licenses, escrow, token = dep.licenses(chain), dep.escrow(chain), dep.payment_token(chain)

    funded = run("--json", "chain", "fund-eth", "--to", OWNER.address, "--ether", "0.5", *on)
    assert funded.exit_code == 0, funded.output
    assert chain.w3.eth.get_balance(OWNER.address) == json.loads(funded.output)["balance_wei"] == 5 * 10**17

    minted = run("--json", "chain", "mint-license", "--to", OWNER.address.lower(), *on)  # any case is an address
    assert minted.exit_code == 0, minted.output
    license_id = json.loads(minted.output)["license_id"]
    assert licenses.owner_of(license_id) == OWNER.address

    linked = run("chain", "link-node", "--license", str(license_id), "--node", NODE, "--key",
                 str(tmp_path / "owner.json"), *on)  # text output
    assert linked.exit_code == 0, linked.output
    assert f"node           {NODE}" in linked.output
    assert licenses.node_of(license_id) == NODE
    assert licenses.is_node_eligible(NODE)

    for status in ("frozen", "active", "suspended"):
        changed = run("chain", "set-status", "--license", str(license_id), "--status", status, *on)
        assert changed.exit_code == 0, changed.output
        assert licenses.status_of(license_id) == LicenseStatus[status.upper()]

    # the CSP: the deed first, then the attester's admission, sent by a dev account (anyone may)
    assert run("chain", "mint-license", "--to", OWNER.address, *on).exit_code == 0
    admitted = run("--json", "chain", "admit-csp", "--csp", OWNER.address, "--attester-key",
                   str(tmp_path / "attester.json"), "--kyc-ref", "acme-0001", "--valid-for-days", "2", *on)
    assert admitted.exit_code == 0, admitted.output
    out = json.loads(admitted.output)
    assert out["attester"] == ATTESTER.address
    assert escrow.is_csp_admitted(OWNER.address)
    assert escrow.admitted_until(OWNER.address) == out["admitted_until"] >= chain.now() + 2 * 86_400 - 60

    tokens = run("--json", "chain", "mint-tokens", "--to", OWNER.address, "--amount", "1000000", *on)
    assert tokens.exit_code == 0, tokens.output
    assert token.balance_of(OWNER.address) == json.loads(tokens.output)["balance"] == 10**6


def test_chain_job_shows_a_jobs_accounts_and_waits_for_its_epochs(world: tuple[Chain, Deployment, list[str]]) -> None:
    chain, dep, on = world
    escrow, token, admin = dep.escrow(chain), dep.payment_token(chain), chain.accounts[0]
    params = JobParams(spec_hash=b"\x01" * 32, token=token.address, replicas=2, epochs=3,
                       start_epoch=escrow.current_epoch() + 1, price_per_node_epoch=5)  # type: ignore[arg-type]
    # the admin is a CSP here: a license, an admission, tokens
    licenses = dep.licenses(chain)
    licenses.mint(admin, sender=admin)
    until = chain.now() + 86_400
    escrow.admit_csp(admin, bytes(32), until, 7, sign(csp_admission(escrow.domain(), admin, bytes(32), until, 7),
                                                    ATTESTER.private_key), sender=admin)
    token.mint(admin, params.deposit, sender=admin)
    token.approve(escrow.address, params.deposit, sender=admin)
    job_id = escrow.create_job(params, sender=admin)

    shown = run("--json", "chain", "job", str(job_id), *on)
    assert shown.exit_code == 0, shown.output
    out = json.loads(shown.output)
    start = params.start_epoch
    assert out["epochs"] == [start, start + 2]
    assert (out["settled"], out["pending"]) == ([], [start, start + 1, start + 2])
    assert (out["deposited"], out["locked"], out["released"], out["applied_through"]) == (30, 30, 0, None)

    # no oracle runs here: the wait gives up, says which epochs, exits 14, and prints the job once
    waited = run("--json", "chain", "job", str(job_id), "--wait-settled", "--timeout-s", "0.2", *on)
    assert waited.exit_code == 14
    answer = json.loads(waited.output)
    assert answer["error"] == "TimedOut"
    assert f"epochs [{start}, {start + 1}, {start + 2}] of job {job_id} not settled within 0.2 s" in answer["message"]

    unknown = run("chain", "job", "99", *on)
    assert unknown.exit_code == 2
    assert "the escrow has no job 99" in unknown.output


def test_refusals_name_the_contract_error(world: tuple[Chain, Deployment, list[str]], tmp_path: Path) -> None:
    chain, dep, on = world
    chain.send_value(chain.accounts[0], STRANGER.address, 10**18)
    license_id = dep.licenses(chain).mint(OWNER.address, sender=chain.accounts[0])

    # not governance: a dev account without the role, and a keystore key without it
    for sender in (["--admin-index", "3"], ["--key", str(tmp_path / "stranger.json")]):
        refused = run("chain", "mint-license", "--to", OWNER.address, *sender, *on)
        assert refused.exit_code == 5, refused.output
        assert "AccessControlUnauthorizedAccount" in refused.output
        refused = run("chain", "set-status", "--license", str(license_id), "--status", "blacklisted", *sender, *on)
        assert refused.exit_code == 5
        assert "AccessControlUnauthorizedAccount" in refused.output
    assert dep.licenses(chain).status_of(license_id) == LicenseStatus.ACTIVE

    not_owner = run("chain", "link-node", "--license", str(license_id), "--node", NODE, "--key",
                    str(tmp_path / "stranger.json"), *on)
    assert not_owner.exit_code == 5
    assert "LicenseRegistryNotLicenseOwner" in not_owner.output
    unchanged = run("chain", "set-status", "--license", str(license_id), "--status", "active", *on)
    assert unchanged.exit_code == 5
    assert "LicenseRegistryStatusUnchanged" in unchanged.output

    # admission: the CSP holds no license; then a key that is not the attester
    no_deed = run("chain", "admit-csp", "--csp", STRANGER.address, "--attester-key", str(tmp_path / "attester.json"),
                  *on)
    assert no_deed.exit_code == 5
    assert "JobEscrowCspHoldsNoLicense" in no_deed.output
    forged = run("chain", "admit-csp", "--csp", OWNER.address, "--attester-key", str(tmp_path / "stranger.json"), *on)
    assert forged.exit_code == 5
    assert f"JobEscrowInvalidAttestation(signer='{STRANGER.address}')" in forged.output
    assert not dep.escrow(chain).is_csp_admitted(OWNER.address)

    minter = run("chain", "mint-tokens", "--to", OWNER.address, "--amount", "5", "--key",
                 str(tmp_path / "stranger.json"), *on)
    assert minter.exit_code == 5
    assert "OwnableUnauthorizedAccount" in minter.output


def test_usage_chain_record_and_keystore_errors(world: tuple[Chain, Deployment, list[str]], tmp_path: Path,
                                               anvil_url: str) -> None:
    chain, dep, on = world
    bad = run("chain", "mint-license", "--to", "0x1234", *on)
    assert bad.exit_code == 2
    assert "'0x1234' is not an address" in bad.output
    assert run("chain", "fund-eth", "--to", NODE, "--ether", "-1", *on).exit_code == 2
    assert run("chain", "set-status", "--license", "1", "--status", "banned", *on).exit_code == 2
    no_account = run("chain", "mint-license", "--to", NODE, "--admin-index", "99", *on)
    assert no_account.exit_code == 2
    assert "--admin-index 99" in no_account.output

    record = str(tmp_path / "deployment.json")
    unreachable = f"http://127.0.0.1:{free_port()}"
    down = run("--json", "chain", "mint-license", "--to", NODE, "--rpc", unreachable, "--deployment", record)
    assert down.exit_code == 3
    assert json.loads(down.output)["error"] == "ChainUnreachable"

    other_chain = tmp_path / "other.json"
    other_chain.write_text(json.dumps(json.loads(dep.to_json()) | {"chain_id": 1}))
    wrong = run("chain", "mint-license", "--to", NODE, "--rpc", anvil_url, "--deployment", str(other_chain))
    assert wrong.exit_code == 4
    assert "deployment is for chain 1" in wrong.output

    # a production deployment has no mock stablecoin
    production = deploy(chain, DeployConfig(10, 2, 5, 1, mock_token=False), admin=chain.accounts[0],
                        oracles=[chain.accounts[1]], attester=ATTESTER.address)
    (tmp_path / "production.json").write_text(production.to_json())
    no_token = run("chain", "mint-tokens", "--to", NODE, "--amount", "1", "--rpc", anvil_url, "--deployment",
                   str(tmp_path / "production.json"))
    assert no_token.exit_code == 4
    assert "no mock stablecoin to mint" in no_token.output

    owner_key = str(tmp_path / "owner.json")
    wrong_password = run("--json", "chain", "link-node", "--license", "1", "--node", NODE, "--key", owner_key, *on,
                         password="not it")
    assert wrong_password.exit_code == 8
    assert json.loads(wrong_password.output) == {
        "error": "KeystoreError", "message": f"{owner_key}: not a keystore, or the wrong password"}
    Path(owner_key).chmod(0o644)
    too_open = run("chain", "link-node", "--license", "1", "--node", NODE, "--key", owner_key, *on)
    assert too_open.exit_code == 8
    assert "others may read it" in too_open.output
    assert PASSWORD not in too_open.output + wrong_password.output
