"""The ``deedmesh`` command line, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from contracts._anvil import free_port

DEEDMESH = str(Path(sys.executable).parent / "deedmesh")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEEDMESH, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_help_lists_contributed_commands_and_exit_codes() -> None:
    out = run("--help")
    assert out.returncode == 0
    for word in ("devnet", "chain", "Exit codes"):
        assert word in out.stdout


def test_devnet_settles_the_jobs_epochs_through_its_oracles_and_the_audit_balances(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    out = run("--json", "devnet", "--nodes", "3", "--oracles", "3", "--threshold", "2", "--epochs", "2",
              "--epoch-seconds", "8", "--dir", str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["engine"] is None  # the examples ran
    jobs = {j["kind"]: j for j in summary["jobs"]}
    assert set(jobs) == {"car", "war", "chaindist"}
    job = jobs["car"]
    first, last = job["start_epoch"], job["start_epoch"] + job["epochs"] - 1
    settled = {epoch: root for epoch, root in summary["settled"]}
    assert {first, last} <= set(settled)  # both of the jobs' epochs, by the oracles' agreement
    assert summary["epochs_settled"] == len(settled) >= 2
    assert int(settled[first], 16) > 0  # the jobs' epochs have node pay: a root
    assert int(settled[last], 16) > 0
    # every epoch the oracles saw through is accounted for: landed, given up, or passed over by a
    # later one (before the jobs, while the oracles came up); none of the jobs' epochs lacks a report
    rootless = set(summary["no_quorum"]) | set(summary["passed_over"])
    assert not rootless & set(settled)
    assert set(range(min([*settled, *rootless]), last + 1)) <= set(settled) | rootless
    assert not rootless & {first, last}
    for j in summary["jobs"]:
        assert j["locked"] == 0
        assert j["deposited"] == j["released"] + j["refunded"] + j["burned"] + j["locked"]
        assert j["released"] > 0  # the nodes served it
        assert j["burned"] > 0  # the protocol's share of each release
    assert jobs["chaindist"]["result_digest"]  # the fan-out job finished, and a live node shows its digest
    # a holder of the CAR job was killed early in the first epoch: its replica moved, and since it
    # held the replica a while without beating (suspect, until declared dead) its availability
    # during its tenure fell below the release threshold: its share was withheld for the CSP
    killed = summary["killed"]
    assert killed["epoch"] == first
    assert killed["moved_to"] not in (None, killed["node"])
    assert summary["reallocations"] >= 1
    assert job["refunded"] > 0
    if killed["into_epoch_s"] <= 0.4 * 8:  # killed early enough for the suspect time to weigh (as planned)
        mine = [w for w in summary["withheld"] if w["node"] == killed["node"].lower() and w["epoch"] == first]
        assert mine, summary["withheld"]
        assert all(w["availability_in_tenure"] < w["release_threshold"] for w in mine)
        assert job["withheld"] >= sum(w["share"] for w in mine if w["job_id"] == job["job_id"]) > 0
    paid = summary["claimed"]["paid"]
    assert sum(p["amount"] for p in paid) == sum(j["released"] for j in summary["jobs"])  # all claimed by owners
    assert {p["owner"] for p in paid} <= {n["owner"] for n in summary["nodes"]}
    assert sum(d["amount"] for d in summary["refunded"]["moved"]) == sum(j["refunded"] for j in summary["jobs"])
    assert summary["audit"] == {"balanced": True, "discrepancies": [], "not_verified": []}
    assert summary["conservation"]["balanced"] is True
    assert summary["conservation"]["escrow_balance"] == summary["conservation"]["escrow_holds"] == 0
    # the published reports are on disk, content-addressed: deedmesh audit over them agrees
    assert all(list(Path(d).glob("*.json")) for d in summary["report_directories"])
    assert "private" not in out.stdout.lower()  # keys are never printed
    # and nothing of the job is left in the engine
    assert not [c for c in engine.containers.list(all=True)
                if c.labels.get("deedmesh.node") in {n["node"] for n in summary["nodes"]}]


def test_devnet_refuses_an_impossible_threshold() -> None:
    out = run("devnet", "--oracles", "2", "--threshold", "3")
    assert out.returncode == 2
    assert "--threshold 3 is more than --oracles 2" in out.stderr


def test_unreachable_chain_exits_3_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = run("chain", "deploy", "--rpc", url, "--oracle", "0x" + "11" * 20, "--threshold", "1",
              "--attester", "0x" + "22" * 20)
    assert out.returncode == 3
    assert f"chain at {url} is unreachable" in out.stderr
    js = run("--json", "devnet", "--rpc", url)
    assert js.returncode == 3
    assert json.loads(js.stdout)["error"] == "ChainUnreachable"


@pytest.mark.anvil
def test_chain_deploy_to_anvil_writes_a_usable_record(anvil_url: str, tmp_path: Path) -> None:
    record = tmp_path / "deployment.json"
    out = run("--json", "chain", "deploy", "--rpc", anvil_url, "--oracle", "0x" + "11" * 20,
              "--oracle", "0x" + "33" * 20, "--threshold", "2", "--attester", "0x" + "22" * 20, "--out", str(record))
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert json.loads(record.read_text()) == printed
    assert printed["chain_id"] == 31337
    from contracts import Chain, Deployment
    chain = Chain.connect(anvil_url)
    dep = Deployment.load(record)
    dep.check_chain(chain)
    assert dep.oracles(chain).threshold() == 2
    assert dep.escrow(chain).is_token_allowed(dep.token)


def test_text_log_lines_carry_their_extra_fields() -> None:
    from mesh._cli import _TextFormatter

    def line(msg: str, **extra: object) -> str:
        record = logging.LogRecord("deedmesh.oracle", logging.WARNING, __file__, 1, msg, None, None)
        record.__dict__.update(extra)
        return _TextFormatter().format(record)

    assert line("no quorum for an epoch") == "WARNING deedmesh.oracle: no quorum for an epoch"
    assert line("no quorum for an epoch", epoch=3, rounds=2) == \
        "WARNING deedmesh.oracle: no quorum for an epoch epoch=3 rounds=2"
    quoted = line("reconcile failed", error='engine said "no" (x=1)')
    assert quoted == 'WARNING deedmesh.oracle: reconcile failed error="engine said \\"no\\" (x=1)"'


def test_libp2p_records_go_through_the_chosen_format_and_level() -> None:
    # py-libp2p detaches its loggers on import; bare lines on stderr broke --log-format json
    script = ("from mesh._cli import _configure_logging; _configure_logging('error', 'json'); "
              "import logging, mesh._transport_libp2p; "
              "logging.getLogger('libp2p.host.basic_host').warning('below the level'); "
              "logging.getLogger('libp2p.host.basic_host').error('Failed to open stream')")
    env = {k: v for k, v in os.environ.items() if k != "LIBP2P_DEBUG"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                         check=True)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [(r["level"], r["logger"], r["msg"]) for r in lines] == \
        [("error", "libp2p.host.basic_host", "Failed to open stream")]
