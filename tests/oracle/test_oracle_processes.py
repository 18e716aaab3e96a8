"""``deedmesh oracle run`` as a real deployment runs it: two ``deedmesh node run`` processes (real
libp2p, the container engine) serve a CSP's two-replica job, three oracle processes (t = 2) watch
the mesh on libp2p and settle each of the job's epochs on anvil; one oracle is stopped after the
first epoch and the other two settle the second. The operators' pay is claimed with the report
fetched from an oracle over libp2p (``deedmesh claim --oracle``), the CSP takes its refund
(``deedmesh refund``), and the audit over the oracles' published reports balances, with every
amount recomputed. Refused: a key that is not a registered oracle (exit 9, nothing printed)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from contracts import Anvil, DeployConfig
from contracts._anvil import stop_process
from mesh._identity import NodeIdentity, write_keystore
from mesh._runner_car import CarRunner
from oracle._audit import AMOUNTS_NOT_VERIFIED
from oracle._report import EpochReport

from ..mesh.test_cli_job import ADMITTED, EXAMPLE, fund_job, licensed_nodes, run_cli, setup_chain
from ..mesh.test_node_processes import DEEDMESH, PASSWORD, START_DEADLINE_S, peer_states, start_node, stop, wait_for

EPOCH_S = 8
ORACLES = [Account.from_key(bytes([0x0C, i + 1]) + bytes(30)) for i in range(3)]


@dataclass
class OracleProcess:
    proc: subprocess.Popen[str]
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def read(self, timeout_s: float) -> None:
        """Take the JSON lines the oracle printed, waiting at most ``timeout_s`` for the first."""
        assert self.proc.stdout is not None
        while select.select([self.proc.stdout], [], [], timeout_s)[0]:
            line = self.proc.stdout.readline()
            if not line:
                return
            self.events.append(json.loads(line))
            timeout_s = 0

    def settled(self) -> dict[int, str]:
        return {e["epoch"]: e["root"] for e in self.events if e["event"] == "settled"}


def start_oracle(tmp: Path, key: LocalAccount, rpc: str, record: Path, bootstrap: list[str]) -> OracleProcess:
    keystore = tmp / f"oracle-{key.address}.json"
    write_keystore(keystore, NodeIdentity(key.key), PASSWORD, scrypt_n=2**10)
    log = tmp / f"oracle-{key.address}.log"
    args = [DEEDMESH, "--log-level", "info", "--log-format", "json", "oracle", "run", "--key", str(keystore),
            "--rpc", rpc, "--deployment", str(record), "--settle-s", "1", "--round-s", "4",
            "--license-refresh-s", "1", *(arg for b in bootstrap for arg in ("--bootstrap", b))]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "a"), text=True,  # noqa: SIM115
                            env=os.environ | {"DEEDMESH_KEY_PASSWORD": PASSWORD})
    return OracleProcess(proc, log)


def started(oracle: OracleProcess) -> OracleProcess:
    oracle.read(START_DEADLINE_S)
    if not oracle.events or oracle.events[0]["event"] != "ready":
        oracle.proc.kill()
        oracle.proc.wait()
        raise AssertionError(f"an oracle did not become ready: {oracle.log.read_text()[-2000:]}")
    oracle.ready = oracle.events.pop(0)
    return oracle


def stop_oracle(oracle: OracleProcess) -> None:
    stop_process(oracle.proc)
    if oracle.proc.stdout:
        oracle.proc.stdout.close()


@pytest.mark.anvil
def test_oracle_processes_settle_a_jobs_epochs_on_anvil_and_the_audit_balances(
        tmp_path: Path, engine: docker.DockerClient) -> None:
    config = DeployConfig(epoch_seconds=EPOCH_S, close_grace_epochs=2, relink_cooldown_s=5, oracle_threshold=2,
                          mock_token=True)
    with Anvil() as anvil:
        chain, dep, record = setup_chain(anvil.url, tmp_path, config, [k.address for k in ORACLES])
        for k in ORACLES:  # an oracle pays the gas of its own submissions
            chain.send_value(chain.accounts[0], k.address, 10**18)
        idents = licensed_nodes(chain, dep, 0x5A, 2)
        escrow = dep.escrow(chain)
        nodes, oracles = [], []
        try:
            for n, ident in enumerate(idents):
                nodes.append(start_node(tmp_path, n, ident, anvil.url, record,
                                        nodes[0].ready["addrs"][:1] if nodes else []))
            oracles = [start_oracle(tmp_path, k, anvil.url, record, nodes[0].ready["addrs"][:1]) for k in ORACLES]
            oracles = [started(o) for o in oracles]
            # each oracle is a participant of the mesh: the nodes see it (as an oracle, not a node to place on)
            wait_for(lambda: all(len(peer_states(n.api)) >= 1 + len(ORACLES) for n in nodes), 30,
                     "the nodes see each other and the oracles")

            job_id = fund_job(EXAMPLE, str(tmp_path / f"{ADMITTED.address}.json"), anvil.url, record)
            deployed = run_cli("deploy", str(EXAMPLE), "--job", str(job_id), "--via", nodes[0].api, "--key",
                               str(tmp_path / f"{ADMITTED.address}.json"), "--deployment", str(record))
            assert deployed.exit_code == 0, deployed.output
            job = escrow.get_job(job_id)
            first, last = job.start_epoch, job.start_epoch + job.epochs - 1

            def settled_by_all(epoch: int, among: list[OracleProcess]) -> bool:
                for o in among:
                    o.read(0.2)
                return all(epoch in o.settled() for o in among)

            wait_for(lambda: settled_by_all(first, oracles), EPOCH_S * (first + 3 - escrow.current_epoch()) + 30,
                     "every oracle saw the job's first epoch settle")
            stop_oracle(oracles[0])  # t = 2: the other two go on alone
            wait_for(lambda: settled_by_all(last, oracles[1:]), EPOCH_S * 3 + 30,
                     "the two oracles left settle the job's last epoch")

            for epoch in (first, last):
                roots = {o.settled()[epoch] for o in oracles[1:]}
                assert roots == {"0x" + escrow.root_of(epoch).hex()}  # what they say landed is on chain
            # the reports they keep: the job's slot-epochs all accounted for, its nodes paid
            published = [p for o in oracles for p in Path(o.ready["directory"], "reports").glob("*.json")]
            reports = {r.epoch: r for r in (EpochReport.model_validate_json(p.read_text()) for p in published)}
            for epoch in (first, last):  # each epoch: price x replicas, to the unit
                assert sum(next(row[1:] for row in reports[epoch].settled if row[0] == job_id)) == 10 * 2
            paid = {lic for j, lic, amount in reports[last].pay if j == job_id and amount > 0}
            assert paid  # the nodes served it
            assert {dep.licenses(chain).node_of(lic) for lic in paid} <= {i.address for i in idents}
            # the node operators' pay, claimed with the report fetched from an oracle over libp2p (the
            # CSP's key sends the transaction; each license's owner is paid)
            token, licenses = dep.payment_token(chain), dep.licenses(chain)
            owed = {lic: amount for j, lic, amount in reports[last].pay if j == job_id}
            before = {lic: token.balance_of(licenses.owner_of(lic)) for lic in owed}
            signer = ["--key", str(tmp_path / f"{ADMITTED.address}.json"), "--rpc", anvil.url,
                      "--deployment", str(record)]
            claimed = run_cli("claim", *signer, "--oracle", oracles[1].ready["addrs"][0],
                              *(arg for lic in sorted(owed) for arg in ("--license", str(lic))))
            assert claimed.exit_code == 0, claimed.output
            assert {p["license_id"]: p["amount"] for p in json.loads(claimed.output)["paid"]} == owed
            assert all(token.balance_of(licenses.owner_of(lic)) == before[lic] + owed[lic] for lic in owed)
            # the CSP takes back what the reports withheld (the slot time before the replicas ran)
            due = escrow.get_job(job_id).alloc_refund
            refunded = run_cli("refund", *signer)
            assert refunded.exit_code == 0, refunded.output
            assert escrow.get_job(job_id).refunded == due
            terms = escrow.get_job(job_id).conservation()
            assert terms["deposited"] == terms["released"] + terms["refunded"] + terms["burned"] + terms["locked"]

            dirs = [str(Path(o.ready["directory"], "reports")) for o in oracles]
            audited = run_cli("audit", "--rpc", anvil.url, "--deployment", str(record),
                              *(arg for d in dirs for arg in ("--reports", d)))
            assert audited.exit_code == 0, audited.output
            result = json.loads(audited.output)
            assert result["ok"], result["discrepancies"]
            assert AMOUNTS_NOT_VERIFIED not in result["not_verified"]  # every amount recomputed
        finally:
            for node in nodes:
                stop(node)
            for o in oracles:
                stop_oracle(o)
            for ident in idents:
                for leftover in CarRunner(engine, ident.address).list_managed():
                    engine.containers.get(leftover.container_id).remove(force=True)


@pytest.mark.anvil
def test_a_key_that_is_not_a_registered_oracle_is_refused(tmp_path: Path) -> None:
    stranger = Account.from_key(bytes([0x0D]) * 32)
    with Anvil() as anvil:
        _, _, record = setup_chain(anvil.url, tmp_path, DeployConfig.devnet(), [k.address for k in ORACLES])
        oracle = start_oracle(tmp_path, stranger, anvil.url, record, [])
        try:
            deadline = time.monotonic() + START_DEADLINE_S
            while oracle.proc.poll() is None and time.monotonic() < deadline:
                oracle.read(0.5)  # it says nothing on stdout; waits for its exit with a deadline
            assert oracle.proc.returncode == 9
            assert f"{stranger.address} is not a registered oracle" in oracle.log.read_text()
            assert not oracle.events
        finally:
            stop_oracle(oracle)
