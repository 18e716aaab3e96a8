"""``deedmesh claim``, ``refund`` and ``burn`` against the contract test world: epoch reports built
from the oracles' signed observations land on chain and are published as an oracle stores them;
the commands run in process through the deedmesh group with keystore keys. Balances move by
exactly the amounts printed, a second run finds nothing due, a report that does not match the
chain's root is refused with nothing sent, an unreachable oracle is a clear error, another CSP's
job is refused, and conservation holds at the end. One claim fetches its report over real libp2p
from a live server speaking the oracle protocol.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result
from eth_account import Account
from eth_account.signers.local import LocalAccount

from contracts import (
    BURN_ADDRESS,
    EMBEDDED,
    Chain,
    Epoch,
    Job,
    JobId,
    JobStatus,
    JobTotals,
    LicenseStatus,
    SettlementPolicy,
    TokenUnits,
    escrow_domain,
    sign,
)
from contracts._anvil import free_port
from mesh import Libp2pConfig, Message, NodeIdentity, open_libp2p_transport, peer_id_of
from mesh._cli import cli
from mesh._identity import write_keystore
from oracle._fetch import ReportRootMismatch, ReportUnavailable, Settled, fetch_report
from oracle._inputs import read_inputs
from oracle._observe import compute_observation
from oracle._report import (
    ChainInputs,
    EpochReport,
    JobInput,
    NodeInput,
    build_report,
    select_observations,
    sign_observation,
)
from oracle._service import MAX_MESSAGE_BYTES, PROTOCOL
from oracle._settle import (
    LicenseHolder,
    Skipped,
    as_applied,
    pending_totals,
    plan_burns,
    plan_claims,
    plan_refunds,
)
from oracle._settlement import Standing
from tests.contracts.world import CSP_FUNDS, PRICE, World, key

PASSWORD = "settle-password"
OPERATOR = NodeIdentity(bytes([0x71]) * 32)  # owns a license of its own, whose node serves both jobs
CSP = NodeIdentity(bytes([0x72]) * 32)  # an admitted CSP with a keystore
KEEPER = NodeIdentity(bytes([0x73]) * 32)  # anyone: executes burns
SERVER = NodeIdentity(bytes([0x74]) * 32)  # the libp2p key of the test's oracle-protocol server


@dataclass
class Scene:
    """The world plus a license operator, a CSP with keystores, and two jobs from epoch ``start``:
    ``mine`` (the keystore CSP's: replica 0 served by the operator's node all epoch, replica 1 by
    node 1 for 70 % and node 2, up 2/3 of its tenure, for the rest: withheld for the CSP) and
    ``theirs`` (the world's CSP: one replica, the operator's node). Policy: release at 200, burn
    below 50, 1 % of every release burned; so each settled epoch pays, refunds and burns."""

    world: World
    tmp: Path
    record: Path
    reports: Path
    keys: dict[str, Path]
    license_id: int
    node: LocalAccount
    mine: JobId
    theirs: JobId
    start: int
    settled: list[EpochReport] = field(default_factory=list)

    @property
    def chain(self) -> Chain:
        return self.world.chain

    def settle(self, *, publish: bool = True) -> EpochReport:
        """Land the next epoch's report, as three of the four oracles (the threshold) would, and
        publish it in ``reports`` (``<content id>.json``, as an oracle stores it)."""
        w, epoch = self.world, self.start + len(self.settled)
        w.advance_to_epoch(epoch + 1)
        genesis, seconds, _ = w.escrow.epoch_clock()
        start, end = (genesis + epoch * seconds) * 1000, (genesis + (epoch + 1) * seconds) * 1000
        span = end - start
        op, n1, n2 = self.node.address.lower(), w.nodes[1].address.lower(), w.nodes[2].address.lower()
        held = [(self.mine, 0, op, start, end), (self.mine, 1, n1, start, start + span * 7 // 10),
                (self.mine, 1, n2, start + span * 7 // 10, end), (self.theirs, 0, op, start, end)]
        seen = compute_observation(start, end, watched=[(start, end)], held=held,
                                   alive=[(op, start, end), (n1, start, end), (n2, start + span * 8 // 10, end)])
        domain = w.escrow.domain()
        signers = sorted(w.oracle_keys[:3], key=lambda k: k.address.lower())
        observations = [sign_observation(domain, epoch, seen, k.key) for k in signers]
        chosen = select_observations(observations, domain, w.oracles.oracles(), epoch, start, end).observations
        inputs = read_inputs(self.chain, w.dep, epoch, [op, n1, n2])
        report = build_report(epoch, chosen, inputs, self.settled[-1] if self.settled else None, 3)
        w.escrow.submit_report(epoch, report.root_bytes, report.totals_root_bytes,
                               [sign(report.message(domain), k.key) for k in signers], sender=w.outsider)
        if publish:
            self.publish(report)
        self.settled.append(report)
        return report

    def publish(self, report: EpochReport, directory: Path | None = None) -> Path:
        path = (directory or self.reports) / f"{report.content_id()}.json"
        path.write_text(report.model_dump_json())
        return path

    def nonce(self, identity: NodeIdentity) -> int:
        return int(self.chain.w3.eth.get_transaction_count(identity.address))

    def balance(self, account: str) -> int:
        return int(self.world.token.balance_of(account))

    def run(self, command: str, who: str, *args: str) -> Result:
        """``deedmesh --json <command> --key <who's keystore> --rpc --deployment <args>``."""
        return run_cli("--json", command, "--key", str(self.keys[who]), "--rpc", self.chain.url,
                       "--deployment", str(self.record), *args)


def run_cli(*argv: str) -> Result:
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    try:  # the group installs its own log handler on the root logger; pytest's must come back
        return CliRunner().invoke(cli, list(argv), env={"DEEDMESH_KEY_PASSWORD": PASSWORD})
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture
def scene(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    chain, w = world.chain, world
    if chain.kind == EMBEDDED:  # the embedded chain lives in this process: the commands connect to it
        monkeypatch.setattr(Chain, "connect", staticmethod(lambda url, **kw: chain))
    record = tmp_path / "deployment.json"
    record.write_text(w.dep.to_json())
    reports = tmp_path / "reports"
    reports.mkdir()
    keys = {}
    for name, identity in (("operator", OPERATOR), ("csp", CSP), ("keeper", KEEPER)):
        keys[name] = write_keystore(tmp_path / f"{name}.json", identity, PASSWORD, scrypt_n=2**10)
        chain.send_value(chain.accounts[0], identity.address, 10**18)
        chain.add_signer(Account.from_key(identity.private_key))  # the test's own transactions from it
    license_id = w.licenses.mint(OPERATOR.address, sender=w.admin)
    node = key(60)
    w.licenses.link_node(license_id, node.address, sender=OPERATOR.address)
    w.licenses.mint(CSP.address, sender=w.admin)  # the deed requirement
    w.token.mint(CSP.address, CSP_FUNDS, sender=w.admin)
    w.admit(CSP.address)
    start = w.escrow.current_epoch() + 1
    mine = w.new_job(csp=CSP.address, replicas=2, epochs=3, start_epoch=start)
    theirs = w.new_job(replicas=1, epochs=3, start_epoch=start)
    return Scene(w, tmp_path, record, reports, keys, license_id, node, mine, theirs, start)


def paid_of(out: dict[str, Any]) -> dict[tuple[int, int], int]:
    return {(p["job_id"], p["license_id"]): p["amount"] for p in out["paid"]}


# ------------------------------------------------------------------ claim


def test_claim_pays_every_license_of_the_key_once_then_only_what_was_earned_since(scene: Scene) -> None:
    w, lic = scene.world, scene.license_id
    first = scene.settle()
    before = scene.balance(OPERATOR.address)
    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = {row: first.pay_of[row] for row in ((scene.mine, lic), (scene.theirs, lic))}
    assert paid_of(out) == expected
    assert all(v > 0 for v in expected.values())
    assert {(p["owner"], p["epoch"]) for p in out["paid"]} == {(OPERATOR.address, first.epoch)}
    assert out["source"] == str(scene.reports / f"{first.content_id()}.json")
    assert out["totals"] == {w.token.address: sum(expected.values())}
    assert scene.balance(OPERATOR.address) - before == sum(expected.values())  # exactly what was printed
    assert w.escrow.claimed_of(scene.mine, lic) == first.pay_of[(scene.mine, lic)]

    again = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["paid"] == []
    assert "nothing to claim" in json.loads(again.stdout)["note"]
    assert scene.balance(OPERATOR.address) - before == sum(expected.values())

    second = scene.settle()
    before = scene.balance(OPERATOR.address)
    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    increments = {row: second.pay_of[row] - first.pay_of[row] for row in expected}
    assert paid_of(out) == increments  # cumulative: only what was earned since the last claim
    assert {p["epoch"] for p in out["paid"]} == {second.epoch}
    assert scene.balance(OPERATOR.address) - before == sum(increments.values())
    w.assert_conserved()


def test_a_license_of_another_owner_is_claimed_for_that_owner_and_the_text_says_whose(scene: Scene) -> None:
    w = scene.world
    report = scene.settle()
    other, other_owner = w.license_ids[1], w.owners[1]  # node 1 served 70 % of `mine`'s replica 1
    before = {a: scene.balance(a) for a in (OPERATOR.address, other_owner)}
    result = run_cli("claim", "--key", str(scene.keys["operator"]), "--rpc", scene.chain.url, "--deployment",
                     str(scene.record), "--reports", str(scene.reports), "--license", str(other),
                     "--license", str(scene.license_id))
    assert result.exit_code == 0, result.output
    gained = {a: scene.balance(a) - before[a] for a in before}
    assert gained[other_owner] == report.pay_of[(scene.mine, other)] > 0
    assert gained[OPERATOR.address] == (report.pay_of[(scene.mine, scene.license_id)]
                                        + report.pay_of[(scene.theirs, scene.license_id)])
    text = " ".join(result.stdout.split())
    assert f"license {other} belongs to {other_owner}: its pay went to that owner" in text
    rows = {tuple(line.split()) for line in result.stdout.splitlines()}
    for job_id, license_id, owner in ((scene.mine, other, other_owner),
                                      (scene.mine, scene.license_id, OPERATOR.address),
                                      (scene.theirs, scene.license_id, OPERATOR.address)):
        amount = report.pay_of[(job_id, license_id)]
        assert (str(job_id), str(license_id), owner, str(report.epoch), str(amount)) in rows
    assert f"paid {sum(gained.values())} units of token {w.token.address}" in text
    w.assert_conserved()


def test_a_restricted_license_is_left_out_with_the_reason_and_an_unknown_one_is_refused(scene: Scene) -> None:
    w = scene.world
    scene.settle()
    w.licenses.set_status(scene.license_id, LicenseStatus.FROZEN, sender=w.admin)
    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["paid"] == []
    assert "nothing to claim" in out["note"]
    assert {(s["job_id"], s["reason"].split(":")[0]) for s in out["skipped"]} == {(scene.mine, "frozen"),
                                                                               (scene.theirs, "frozen")}
    nonce = scene.nonce(OPERATOR)
    unknown = scene.run("claim", "operator", "--reports", str(scene.reports), "--license", "999")
    assert unknown.exit_code == 2
    assert "license 999: no such license" in unknown.output
    assert scene.nonce(OPERATOR) == nonce


@pytest.mark.parametrize("tamper", ["amount", "root", "totals"])
def test_a_report_that_does_not_match_the_chain_is_refused_and_nothing_is_sent(scene: Scene, tamper: str) -> None:
    report = scene.settle(publish=False)
    doc = json.loads(report.model_dump_json())
    if tamper == "amount":  # one amount raised, the root left as signed: the pay no longer hashes to it
        doc["pay"][0][2] += 1
    elif tamper == "totals":  # a job's refund raised, its totals root left as signed
        doc["totals"][0][2] += 1
    else:  # a consistent report of other amounts: its root is not the chain's
        doc["pay"] = [[j, lic, amount + 1] for j, lic, amount in doc["pay"]]
        doc["root"] = EpochReport.model_validate_json(json.dumps(doc)).tree.root.hex()  # type: ignore[union-attr]
        doc["root"] = "0x" + doc["root"]
    forged = scene.reports / "forged.json"
    forged.write_text(json.dumps(doc))
    nonce, before = scene.nonce(OPERATOR), scene.balance(OPERATOR.address)

    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 16, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "ReportRootMismatch"
    why = {"amount": "pay rows do not hash to its root", "root": "is not the chain's",
           "totals": "totals rows do not hash to its totals root"}[tamper]
    assert f"refused every report of epoch {report.epoch} (nothing was sent): {forged}: its" in error["message"]
    assert why in error["message"]
    assert (scene.nonce(OPERATOR), scene.balance(OPERATOR.address)) == (nonce, before)
    assert scene.world.escrow.claimed_of(scene.mine, scene.license_id) == 0

    genuine = scene.publish(report)  # beside the forged one: the genuine one is used
    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str(genuine)
    assert scene.balance(OPERATOR.address) > before


def test_an_unreachable_oracle_with_no_other_source_is_a_clear_error(scene: Scene) -> None:
    report = scene.settle(publish=False)
    oracle = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{peer_id_of(SERVER)}"  # nothing listens there
    nonce = scene.nonce(OPERATOR)
    result = scene.run("claim", "operator", "--oracle", oracle, "--timeout-s", "5")
    assert result.exit_code == 9, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "ReportUnavailable"
    assert f"no report of epoch {report.epoch} (the latest settled) from any source: {oracle}: " in error["message"]
    assert "dial failed" in error["message"]
    text = run_cli("claim", "--key", str(scene.keys["operator"]), "--rpc", scene.chain.url, "--deployment",
                   str(scene.record), "--oracle", oracle, "--reports", str(scene.reports))
    assert text.exit_code == 9
    assert "error: ReportUnavailable: no report of epoch" in text.stderr
    assert f"{scene.reports}: none of 0 files is a report of epoch {report.epoch}" in text.stderr
    assert scene.nonce(OPERATOR) == nonce


def test_claim_needs_a_report_source(scene: Scene) -> None:
    result = scene.run("claim", "operator")
    assert result.exit_code == 2
    assert "--oracle MULTIADDR or --reports DIR_OR_FILE" in result.output


def test_nothing_settled_yet_is_nothing_to_claim(scene: Scene) -> None:
    result = scene.run("claim", "operator", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["note"] == "no epoch has been settled yet"


def test_every_round_claims_what_is_new_and_a_failed_round_is_retried(scene: Scene,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    report = scene.settle(publish=False)  # not published yet: the first round finds no report
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            scene.publish(report)
        elif len(slept) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("oracle._cli_settle._sleep", fake_sleep)
    before = scene.balance(OPERATOR.address)
    result = scene.run("claim", "operator", "--reports", str(scene.reports), "--every", "60")
    assert result.exit_code == 130, result.output
    rounds = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rounds) == 2  # the failed round printed nothing on stdout
    assert paid_of(rounds[0]) == {(j, lic): amount for j, lic, amount in report.pay if lic == scene.license_id}
    assert rounds[1]["paid"] == []
    assert "nothing to claim" in rounds[1]["note"]
    assert "claim round 1 failed, retrying in 60 s: ReportUnavailable" in result.stderr
    assert "stopped after 3 rounds" in result.stderr
    assert all(0 < s <= 60 for s in slept)
    assert scene.balance(OPERATOR.address) - before == sum(paid_of(rounds[0]).values())


# ------------------------------------------------------------------ over libp2p


@contextmanager
def oracle_server(answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[str]:
    """A server of the oracle protocol on a libp2p host of its own, in a thread (the command under
    test runs ``trio.run`` itself); yields its multiaddr and stops it at the end."""
    started: queue.Queue[tuple[str, trio.Event, trio.lowlevel.TrioToken] | BaseException] = queue.Queue()

    async def handler(request: Message) -> bytes:
        return json.dumps(answer(json.loads(request.data))).encode()

    async def serve() -> None:
        stop = trio.Event()
        with trio.CancelScope() as everything:
            async with open_libp2p_transport(SERVER, Libp2pConfig(pubsub=False), ()) as transport:
                transport.set_handler(PROTOCOL, handler, max_request_bytes=MAX_MESSAGE_BYTES, timeout_s=10)
                started.put((transport.addrs()[0], stop, trio.lowlevel.current_trio_token()))
                await stop.wait()
                everything.cancel()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the test thread, which raises it
            started.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    got = started.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    addr, stop, token = got
    try:
        yield addr
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=60)
        assert not thread.is_alive()


def serving(*reports: EpochReport) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``Oracle.answer`` for "report": the held report of the epoch asked, or ``{"error": "none"}``."""
    held = {r.epoch: json.loads(r.model_dump_json()) for r in reports}

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        assert request["kind"] == "report"
        report = held.get(int(request["epoch"]))
        return {"error": "none"} if report is None else {"report": report}

    return answer


def test_claim_fetches_the_report_from_a_live_oracle_over_libp2p(scene: Scene) -> None:
    report = scene.settle(publish=False)
    before = scene.balance(OPERATOR.address)
    with oracle_server(serving()) as without, oracle_server(serving(report)) as holder:
        result = scene.run("claim", "operator", "--oracle", without, "--oracle", holder)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["source"] == holder  # the first oracle does not hold it: the next one is asked
    assert paid_of(out) == {(j, lic): amount for j, lic, amount in report.pay if lic == scene.license_id}
    assert scene.balance(OPERATOR.address) - before == sum(paid_of(out).values())
    scene.world.assert_conserved()


def pure_report(epoch: int = 5) -> EpochReport:
    """A report of three oracles' observations, off chain: node A serves job 1 all epoch."""
    node = "0x" + "0a" * 20
    start, end = epoch * 100_000, (epoch + 1) * 100_000
    seen = compute_observation(start, end, watched=[(start, end)], alive=[(node, start, end)],
                               held=[(1, 0, node, start, end)])
    domain = escrow_domain(31337, "0x" + "e5" * 20)
    observations = [sign_observation(domain, epoch, seen, key(300 + i).key) for i in range(3)]
    inputs = ChainInputs(block=1, block_hash="0x" + "ab" * 32, start_ms=start, end_ms=end,
                         jobs=(JobInput(job_id=1, price_per_node_epoch=PRICE, replicas=1, start_epoch=epoch, epochs=2,
                                        status=JobStatus.ACTIVE, policy=SettlementPolicy()),),
                         nodes=(NodeInput(node=node, license_id=7, standing=Standing.ACTIVE),))
    return build_report(epoch, observations, inputs, None, 3)


async def test_fetch_report_takes_only_a_report_matching_the_root() -> None:
    report = pure_report()
    with trio.CancelScope() as everything:
        async with open_libp2p_transport(SERVER, Libp2pConfig(pubsub=False), ()) as transport:
            asked: list[dict[str, Any]] = []

            async def handler(request: Message) -> bytes:
                asked.append(json.loads(request.data))
                return json.dumps(serving(report)(asked[-1])).encode()

            transport.set_handler(PROTOCOL, handler, max_request_bytes=MAX_MESSAGE_BYTES, timeout_s=10)
            addr = transport.addrs()[0]
            settled = Settled(report.epoch, report.root_bytes, report.totals_root_bytes)
            got, source = await fetch_report([addr], settled, timeout_s=10)
            assert (got, source) == (report, addr)
            assert asked == [{"kind": "report", "epoch": report.epoch}]
            with pytest.raises(ReportRootMismatch, match=r"is not the chain's 0x1111") as mismatch:
                await fetch_report([addr], Settled(report.epoch, b"\x11" * 32, settled.totals_root), timeout_s=10)
            assert mismatch.value.refusals[0][0] == addr
            with pytest.raises(ReportRootMismatch, match=r"its totals root 0x\w+ is not the chain's 0x2222"):
                await fetch_report([addr], Settled(report.epoch, settled.root, b"\x22" * 32), timeout_s=10)
            with pytest.raises(ReportUnavailable, match=r"does not serve it \(answered 'none'\)"):
                await fetch_report([addr], Settled(report.epoch + 1, settled.root, settled.totals_root), timeout_s=10)
            everything.cancel()


# ------------------------------------------------------------------ refund and burn


def test_refund_takes_what_is_due_to_the_csp_and_refuses_another_csps_job(scene: Scene) -> None:
    w = scene.world
    scene.settle()
    nonce = scene.nonce(CSP)
    refused = scene.run("refund", "csp", "--job", str(scene.theirs))
    assert refused.exit_code == 2
    assert f"job {scene.theirs}: belongs to CSP {w.csp}, not to {CSP.address}" in refused.output
    assert scene.nonce(CSP) == nonce  # refused before anything was sent

    # the report landed, its totals are not applied yet: without a report source nothing is due
    report = scene.settled[-1]
    assert w.escrow.get_job(scene.mine).alloc_refund == 0
    assert w.escrow.settled_until(scene.mine) == 0
    unapplied = scene.run("refund", "csp")
    assert unapplied.exit_code == 0, unapplied.output
    assert json.loads(unapplied.stdout)["moved"] == []
    assert "--oracle or --reports applies the newest report's" in json.loads(unapplied.stdout)["note"]
    assert scene.nonce(CSP) == nonce

    due = report.totals_proofs([scene.mine])[0].totals.refund  # node 2's withheld share and rounding
    assert due > 0
    before = scene.balance(CSP.address)
    result = scene.run("refund", "csp", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(m["job_id"], m["to"], m["amount"]) for m in out["moved"]] == [(scene.mine, CSP.address, due)]
    assert (out["epoch"], out["source"]) == (report.epoch, str(scene.reports / f"{report.content_id()}.json"))
    assert scene.balance(CSP.address) - before == out["totals"][w.token.address] == due
    job = w.escrow.get_job(scene.mine)  # the totals were applied in the same transaction
    assert (job.alloc_release, job.alloc_refund, job.alloc_burn, job.refunded) == (*report.totals[0][1:], due)
    assert w.escrow.settled_until(scene.mine) == report.epoch + 1

    again = scene.run("refund", "csp", "--job", str(scene.mine), "--reports", str(scene.reports))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["moved"] == []
    assert json.loads(again.stdout)["note"] == f"nothing to refund: no refund is due on job {scene.mine}"
    w.assert_conserved()


def test_burn_sends_what_is_due_to_the_burn_address(scene: Scene) -> None:
    w = scene.world
    report = scene.settle()
    due = {t.totals.job_id: t.totals.burn for t in report.totals_proofs([scene.mine, scene.theirs])}
    assert all(due.values())  # 1 % of every release
    before = scene.balance(BURN_ADDRESS)
    result = scene.run("burn", "keeper", "--reports", str(scene.reports))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {m["job_id"]: m["amount"] for m in out["moved"]} == due
    assert {m["to"] for m in out["moved"]} == {BURN_ADDRESS}
    assert scene.balance(BURN_ADDRESS) - before == sum(due.values())
    assert scene.balance(KEEPER.address) == 0  # the keeper only paid gas
    assert {j: w.escrow.get_job(j).burned for j in due} == due

    again = run_cli("burn", "--key", str(scene.keys["keeper"]), "--rpc", scene.chain.url, "--deployment",
                    str(scene.record))
    assert again.exit_code == 0, again.output
    assert "nothing to burn: no burn is due on jobs" in again.stdout
    unknown = scene.run("burn", "keeper", "--job", "999")
    assert unknown.exit_code == 2
    assert "job 999: no such job" in unknown.output
    w.assert_conserved()


# ------------------------------------------------------------------ pure decisions and help


def _job(job_id: int, *, release: int = 0, spent: int = 0, refund: int = 0, refunded: int = 0, burn: int = 0,
         burned: int = 0) -> Job:
    return Job(job_id=JobId(job_id), csp="0x" + "c5" * 20, start_epoch=Epoch(1), replicas=1, token="0x" + "70" * 20,
               epochs=2, status=JobStatus.ACTIVE, policy=SettlementPolicy(), spec_hash=bytes(32),
               price_per_node_epoch=TokenUnits(PRICE), deposited=TokenUnits(2 * PRICE),
               alloc_release=TokenUnits(release), release_spent=TokenUnits(spent), alloc_refund=TokenUnits(refund),
               refunded=TokenUnits(refunded), alloc_burn=TokenUnits(burn), burned=TokenUnits(burned),
               reclaimed=TokenUnits(0), forfeited=TokenUnits(0))


def test_plan_claims_pays_the_unclaimed_part_and_leaves_out_what_would_revert() -> None:
    report = pure_report()
    ((job_id, license_id, cumulative),) = report.pay
    owner = "0x" + "0e" * 20
    active = {license_id: LicenseHolder(license_id, owner, LicenseStatus.ACTIVE)}
    job = _job(job_id, release=cumulative)
    plan = plan_claims(report, active, {(job_id, license_id): 100}, {job_id: job})
    assert [(p.job_id, p.license_id, p.owner, p.cumulative, p.amount) for p in plan.payouts] == [
        (job_id, license_id, owner, cumulative, cumulative - 100)]
    assert plan_claims(report, active, {(job_id, license_id): cumulative}, {job_id: job}).payouts == ()
    for status, reason in ((LicenseStatus.SUSPENDED, "suspended: the escrow pays a license only while it is active"),
                           (LicenseStatus.BLACKLISTED, "blacklisted: its pay is forfeited (burned), never paid")):
        holders = {license_id: LicenseHolder(license_id, owner, status)}
        assert plan_claims(report, holders, {}, {job_id: job}).skipped == (Skipped(license_id, job_id, reason),)
    short = plan_claims(report, active, {}, {job_id: _job(job_id, release=cumulative, spent=1)})
    assert short.payouts == ()
    assert "is more than the" in short.skipped[0].reason
    unpaid = plan_claims(report, {9: LicenseHolder(9, owner, LicenseStatus.ACTIVE)}, {}, {})
    assert unpaid.skipped == (Skipped(9, None, f"no pay in the report of epoch {report.epoch}"),)


def test_plan_refunds_and_burns_take_only_what_is_allocated_and_not_yet_moved() -> None:
    jobs = [_job(2, refund=50, refunded=20, burn=7, burned=7), _job(1, refund=5, burn=9, burned=4), _job(3)]
    assert [(d.job_id, d.to, d.amount) for d in plan_refunds(jobs)] == [(1, "0x" + "c5" * 20, 5),
                                                                       (2, "0x" + "c5" * 20, 30)]
    assert [(d.job_id, d.to, d.amount) for d in plan_burns(jobs)] == [(1, BURN_ADDRESS, 5)]


@pytest.mark.parametrize(("command", "words"), [
    ("claim", ["latest settled epoch", "--oracle", "--reports", "--every", "16 every report found was refused"]),
    ("refund", ["refunds due to a CSP", "--job", "another CSP"]),
    ("burn", ["burn address", "--job", "Anyone may execute it"]),
])
def test_each_command_explains_itself(command: str, words: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for word in [*words, "Exit codes", "--key", "--rpc", "--deployment"]:
        assert word in text


def test_pending_totals_are_the_reports_newer_changed_totals_of_active_jobs() -> None:
    report = pure_report()
    ((job_id, release, refund, burn),) = report.totals
    assert release > 0
    fresh = _job(job_id)
    assert pending_totals(report, {job_id: fresh}, {}) == {job_id: JobTotals(JobId(job_id), TokenUnits(release),
                                                                            TokenUnits(refund), TokenUnits(burn))}
    applied = as_applied(fresh, pending_totals(report, {job_id: fresh}, {})[job_id])
    assert (applied.alloc_release, applied.alloc_refund, applied.alloc_burn) == (release, refund, burn)
    assert as_applied(fresh, None) is fresh
    # already applied from this epoch or a newer one, unchanged, closed, or not asked about: nothing
    assert pending_totals(report, {job_id: fresh}, {job_id: report.epoch + 1}) == {}
    assert pending_totals(report, {job_id: applied}, {}) == {}
    closed = Job(**{**fresh.__dict__, "status": JobStatus.CLOSED})
    assert pending_totals(report, {job_id: closed}, {}) == {}
    assert pending_totals(report, {}, {}) == {}
