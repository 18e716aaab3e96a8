"""``deedmesh audit`` re-derives a real settlement history from the chain and the published
reports, balances it, and names every tamper: an edited report file, totals unlike the signed ones,
a signature by an oracle not registered at that block, an amount that does not add up, tokens the
escrow holds for no job, and a report in the oracles' full format that cites chain inputs unlike
the chain's at the block it cites, or a block after its root landed. Conservation holds on chain at
the end of every test.

The history (one per chain backend, reverted to a snapshot around every test): four jobs from
epoch s, A topped up and scaled up before its start, B scaled down mid-job, C closed after its
grace with an epoch no report covered, D cancelled; two epochs settled with quorum-signed reports
(epoch s by oracles 0, 1, 3, its totals applied in a transaction of their own; then oracle 3 is
removed, oracle 4 added and the threshold lowered to 2; epoch s+1 by oracles 2 and 4, its totals
applied only as the escrow's clients do, inside ``multicall`` with the claim, refund and close that
need them, one entry skipped as already applied), claims in batches, refunds, burns, and a
blacklisted license's pay forfeited. Tests of the cited inputs settle one more epoch on top of it as the oracles would
(``_settle_full``): signed observations, ``build_report``, a quorum, the full format published.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_account.signers.local import LocalAccount

from contracts import (
    EMBEDDED,
    Chain,
    ChainUnreachable,
    JobId,
    JobStatus,
    JobTotals,
    LicenseStatus,
    MerkleTree,
    SettlementPolicy,
    TokenUnits,
    TotalsProof,
    epoch_report,
    release_leaf,
    sign,
    totals_proofs,
    totals_root,
)
from oracle import _audit_inputs as audit_inputs
from oracle._audit import (
    AMOUNTS_NOT_VERIFIED,
    AuditFailed,
    AuditOptions,
    AuditReport,
    ChainEvent,
    ChainRecord,
    Check,
    ReportCall,
    audit,
    check,
    check_signatures,
    collect,
    load_published_reports,
    read_cited_inputs,
)
from oracle._audit_chain import PayoutCall
from oracle._audit_cli import EXIT_AUDIT_FAILED, audit_command
from oracle._audit_ledger import Allocation
from oracle._inputs import read_inputs
from oracle._observe import Observed
from oracle._report import ChainInputs, EpochReport, build_report, sign_observation
from oracle._settlement import Standing, compute_share_outcome
from tests.contracts.world import PRICE, World, build_world, key

Slot = tuple[int, int] | None  # (license, availability) of the node that served the slot, or nobody


@dataclass
class History:
    world: World
    s: int  # the first settled epoch
    a: JobId  # topped up, scaled up before its start
    b: JobId  # scaled down mid-job; one of its licenses blacklisted and forfeited
    c: JobId  # closed after its grace, its second epoch never reported
    d: JobId  # cancelled before its start
    docs: dict[int, dict[str, Any]]  # the published report of each epoch
    pay: dict[int, dict[tuple[int, int], int]]  # cumulative pay per epoch
    totals: dict[int, list[JobTotals]]
    removed: LocalAccount  # signed epoch s, removed before epoch s+1
    added: LocalAccount  # added after epoch s, signed epoch s+1

    @property
    def chain(self) -> Chain:
        return self.world.chain

    def assert_conserved(self, *, balance: bool = True) -> None:
        jobs = None if balance else range(1, self.world.escrow.last_job_id() + 1)
        self.world.assert_conserved(jobs)


def _epoch(served: dict[int, list[Slot]], policy: SettlementPolicy, pay: dict[tuple[int, int], int],
           totals: dict[int, list[int]]) -> None:
    """Add one epoch's outcomes (SETTLEMENT.md, as oracle/_settlement computes them) to the cumulative amounts."""
    for job, slots in served.items():
        cumulative = totals.setdefault(job, [0, 0, 0])
        for slot in slots:
            if slot is None:  # nobody served it: the CSP's
                cumulative[1] += PRICE
                continue
            license_id, availability = slot
            out = compute_share_outcome(PRICE, availability, policy)
            cumulative[0] += out.node
            cumulative[1] += out.refund
            cumulative[2] += out.burn
            if out.node:
                pay[(job, license_id)] = pay.get((job, license_id), 0) + out.node


def _settle(w: World) -> History:
    csp, admin, esc = w.csp, w.admin, w.escrow
    lic = w.license_ids
    s = esc.current_epoch() + 1
    a = w.new_job(replicas=2, epochs=3, start_epoch=s)
    b = w.new_job(replicas=3, epochs=3, start_epoch=s)
    c = w.new_job(replicas=1, epochs=2, start_epoch=s)
    d = w.new_job(replicas=1, epochs=1, start_epoch=s)
    w.token.approve(esc.address, PRICE, sender=csp)
    esc.top_up(a, PRICE, sender=csp)
    pull, _, _ = esc.quote_scale(a, 3)
    w.token.approve(esc.address, pull, sender=csp)
    esc.scale_job(a, 3, b"\xa3" * 32, sender=csp)
    esc.cancel_job(d, sender=csp)
    policy = esc.get_job(a).policy

    served: dict[int, dict[int, list[Slot]]] = {
        s: {a: [(lic[0], 255), (lic[1], 255), (lic[2], 100)],  # the third withheld
            b: [(lic[3], 255), (lic[4], 0), None],  # one burned, one unserved
            c: [(lic[0], 255)]},
        s + 1: {a: [(lic[0], 255), (lic[1], 255), (lic[2], 255)],
                b: [(lic[3], 255), (lic[4], 255), None]},  # c: no report covers its second epoch
    }
    pay_now: dict[tuple[int, int], int] = {}
    totals_now: dict[int, list[int]] = {}
    pays: dict[int, dict[tuple[int, int], int]] = {}
    totals: dict[int, list[JobTotals]] = {}
    trees: dict[int, MerkleTree] = {}

    def post(epoch: int, signers: list[LocalAccount], *, apply: bool) -> None:
        _epoch(served[epoch], policy, pay_now, totals_now)
        pays[epoch] = dict(pay_now)
        totals[epoch] = [JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(bn))
                         for j, (r, f, bn) in sorted(totals_now.items())]
        trees[epoch] = w.post_report(epoch, pays[epoch], totals[epoch], signers=signers, apply=apply)

    def proofs(epoch: int, *jobs: int) -> list[TotalsProof]:
        return totals_proofs(epoch, totals[epoch], jobs)

    def claim(epoch: int, *pairs: tuple[int, int], applying: tuple[int, ...] = ()) -> None:
        esc.claim([w.claim_of(trees[epoch], epoch, j, li, pays[epoch][(j, li)]) for j, li in pairs], sender=admin,
                  totals=proofs(epoch, *applying))

    w.advance_to_epoch(s + 1)
    removed, added = w.oracle_keys[3], key(104)
    post(s, [w.oracle_keys[0], w.oracle_keys[1], removed], apply=True)  # applyTotals on its own
    claim(s, (a, lic[0]), (b, lic[3]), (c, lic[0]))
    esc.take_refund([a, b], sender=csp)
    esc.execute_burn([b], sender=admin)
    esc.scale_job(b, 2, b"\xb2" * 32, sender=csp)  # from epoch s+2: returns one slot-epoch now

    w.oracles.remove_oracle(removed.address, sender=admin)
    w.oracles.add_oracle(added.address, sender=admin)
    w.oracles.set_threshold(2, sender=admin)

    w.advance_to_epoch(s + 2)
    post(s + 1, [w.oracle_keys[2], added], apply=False)  # applied by those who need the totals:
    claim(s + 1, (a, lic[0]), (a, lic[1]), applying=(a,))  # multicall(applyTotals, claim): two claims
    esc.take_refund([b], sender=csp, totals=proofs(s + 1, a, b))  # a's entry skipped, applied just before
    claim(s + 1, (b, lic[3]))
    w.licenses.set_status(lic[4], LicenseStatus.BLACKLISTED, sender=admin)
    esc.forfeit([w.claim_of(trees[s + 1], s + 1, b, lic[4], pays[s + 1][(b, lic[4])])], sender=admin)
    esc.execute_burn([a, b], sender=admin)

    w.advance_to_epoch(s + 4)  # c's end (s+2) plus the grace (2 epochs)
    esc.close_job(c, sender=csp, totals=proofs(s + 1, c))  # the escrow closes c only on s+1's totals

    docs = {
        # the simple published form: objects, and an extra field the audit ignores
        s: {"epoch": s, "root": "0x" + trees[s].root.hex(), "note": "published by the oracles",
            "totals": [{"job_id": t.job_id, "release": t.release, "refund": t.refund, "burn": t.burn}
                       for t in totals[s]],
            "pay": [{"job_id": j, "license_id": li, "cumulative": amount} for (j, li), amount in pays[s].items()]},
        # oracle/_report.py's form: arrays, and the totals hash stated
        s + 1: {"epoch": s + 1, "root": "0x" + trees[s + 1].root.hex(),
                "totals_root": "0x" + totals_root(totals[s + 1]).hex(),
                "totals": [[t.job_id, t.release, t.refund, t.burn] for t in totals[s + 1]],
                "pay": [[j, li, amount] for (j, li), amount in sorted(pays[s + 1].items())]},
    }
    return History(w, s, a, b, c, d, docs, pays, totals, removed, added)


@pytest.fixture(scope="module")
def _history(chain: Chain) -> History:
    return _settle(build_world(chain))


@pytest.fixture
def history(_history: History) -> Iterator[History]:
    snap = _history.chain.snapshot()
    try:
        yield _history
    finally:
        _history.chain.revert_to(snap)


def _write(directory: Path, doc: dict[str, Any]) -> Path:
    """Store ``doc`` content-addressed: ``<sha256 of its bytes>.json``."""
    raw = json.dumps(doc, indent=2, sort_keys=True).encode()
    path = directory / f"{hashlib.sha256(raw).hexdigest()}.json"
    path.write_bytes(raw)
    return path


@pytest.fixture
def reports(history: History, tmp_path: Path) -> dict[int, Path]:
    """The published reports, one file per epoch, under tmp_path / "reports"."""
    directory = tmp_path / "reports"
    directory.mkdir()
    return {epoch: _write(directory, doc) for epoch, doc in history.docs.items()}


def _audit(history: History, reports: dict[int, Path], **options: Any) -> AuditReport:
    directory = {path.parent for path in reports.values()} or set()
    return audit(history.chain, history.world.dep, reports=sorted(directory), options=AuditOptions(**options))


def _checks(report: AuditReport) -> set[tuple[Check, int | None, int | None]]:
    return {(f.check, f.job_id, f.epoch) for f in report.errors}


def _record_and_published(history: History, reports: dict[int, Path]) -> tuple[ChainRecord, list[Any]]:
    published, problems = load_published_reports([next(iter(reports.values())).parent])
    assert problems == []
    return collect(history.chain, history.world.dep), published


def _settled_tx(record: ChainRecord, epoch: int) -> str:
    return next(e.tx_hash for e in record.escrow_events if e.name == "EpochSettled" and e.args["epoch"] == epoch)


def _report_call(record: ChainRecord, epoch: int) -> tuple[str, ReportCall]:
    tx = _settled_tx(record, epoch)
    (call,) = record.calls[tx].reports
    return tx, call


def _with_calls(record: ChainRecord, tx: str, **changes: Any) -> ChainRecord:
    """``record`` with the calls of ``tx`` changed (``reports=``, ``payouts=``, ``totals=``)."""
    return replace(record, calls={**record.calls, tx: replace(record.calls[tx], **changes)})


def _allocated_tx(record: ChainRecord, job_id: int, epoch: int) -> str:
    return next(e.tx_hash for e in record.escrow_events
                if e.name == "JobAllocated" and (e.args["jobId"], e.args["epoch"]) == (job_id, epoch))


def _cli(history: History, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str,
         root: bool = False) -> Result:
    """Run ``deedmesh audit`` in process: through the deedmesh group (the entry point) with ``root``,
    else the command itself. The embedded chain lives in this process, so connecting to it is patched."""
    chain = history.chain
    if chain.kind == EMBEDDED:
        monkeypatch.setattr(Chain, "connect", staticmethod(lambda url, **kw: chain))
    record = tmp_path / "deployment.json"
    record.write_text(history.world.dep.to_json())
    argv = ["--rpc", chain.url, "--deployment", str(record), *args]
    if not root:
        return CliRunner().invoke(audit_command, argv)
    from mesh._cli import cli

    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    try:  # the group installs its own log handler on the root logger; pytest's must come back
        return CliRunner().invoke(cli, ["--json", "audit", *argv])
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


# ---------------------------------------------------------------------------------- balanced


def test_a_settled_history_audits_balanced(history: History, reports: dict[int, Path]) -> None:
    w, s = history.world, history.s
    report = _audit(history, reports)
    assert report.ok, [f.line for f in report.findings]
    assert report.findings == ()
    report.raise_for_findings()
    assert report.not_verified == (AMOUNTS_NOT_VERIFIED,)  # honest about the hook
    assert [(e.epoch, e.report) for e in report.epochs] == [(s, "ok"), (s + 1, "ok")]
    assert [e.threshold for e in report.epochs] == [3, 2]
    assert [e.payouts for e in report.epochs] == [3, 4]
    assert [(e.jobs, e.applied) for e in report.epochs] == [(3, 3), (3, 3)]  # a, b, c: every report's totals
    assert [(t.job_id, t.epoch, t.applied, t.source) for t in report.totals] == [
        (j, e, True, "report") for j in (history.a, history.b, history.c) for e in (s, s + 1)]

    accounts = {j.job_id: j for j in report.jobs}
    assert set(accounts) == {history.a, history.b, history.c, history.d}
    for job_id, acc in accounts.items():
        job = w.escrow.get_job(job_id)
        assert acc.conservation() == job.conservation()
        assert acc.held == job.held
        assert (acc.status, acc.replicas, acc.reclaimed) == (job.status, job.replicas, job.reclaimed)
    a, b, c, d = (accounts[j] for j in (history.a, history.b, history.c, history.d))
    assert a.deposited == PRICE * (2 * 3 + 1 + 3)  # create, top-up, scale-up pull for the 3 epochs
    assert a.claimable == history.pay[s + 1][(history.a, w.license_ids[2])]  # never claimed
    assert b.reclaimed == PRICE
    assert b.forfeited > 0
    assert (c.status, c.reclaimed, c.locked) == (JobStatus.CLOSED, PRICE, 0)  # its unreported epoch
    assert (d.status, d.reclaimed, d.allocations) == (JobStatus.CANCELLED, PRICE, ())
    assert [x.epoch for x in c.allocations] == [s, s + 1]
    assert [(x.settled_until, x.landed) for x in (a, b, c, d)] == [(s + 2, None)] * 3 + [(0, None)]
    assert [(bal.balance, bal.held) for bal in report.balances] == [(w.token.balance_of(w.escrow.address),
                                                                   sum(x.held for x in report.jobs))]
    history.assert_conserved()


def test_an_oracle_removed_after_a_report_still_counts_for_it(history: History, reports: dict[int, Path]) -> None:
    w = history.world
    assert not w.oracles.is_oracle(history.removed.address)  # gone now
    report = _audit(history, reports)
    first, second = report.epochs
    assert history.removed.address in first.signers  # but registered at epoch s's block
    assert history.added.address not in first.oracles
    assert history.added.address in second.signers
    assert history.removed.address not in second.oracles
    assert report.ok
    history.assert_conserved()


def test_cli_json_through_the_deedmesh_group_exits_0(history: History, reports: dict[int, Path],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = _cli(history, monkeypatch, tmp_path, "--reports", str(reports[history.s].parent), root=True)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["ok"] is True
    assert summary["discrepancies"] == []
    assert summary["warnings"] == []
    assert [e["epoch"] for e in summary["epochs"]] == [history.s, history.s + 1]
    for job in summary["jobs"]:
        c = job["conservation"]
        assert c["deposited"] == c["released"] + c["refunded"] + c["burned"] + c["locked"]
    history.assert_conserved()


def test_cli_text_prints_tables_and_the_verdict(history: History, reports: dict[int, Path],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = _cli(history, monkeypatch, tmp_path, "--reports", str(reports[history.s].parent))
    assert out.exit_code == 0, out.output
    for words in ("epochs settled", "jobs (rebuilt from events)", "cumulative allocations", "balanced and verified",
                  "not verified"):
        assert words in out.stdout
    history.assert_conserved()


def test_a_missing_report_warns_unless_reports_are_required(history: History, reports: dict[int, Path],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = history.s
    reports.pop(s + 1).unlink()
    report = _audit(history, reports)
    assert report.ok
    assert [(f.check, f.epoch) for f in report.warnings] == [(Check.REPORT_MISSING, s + 1)]
    # the table falls back on what was applied on chain for that epoch
    assert {(t.epoch, t.source) for t in report.totals if t.epoch == s + 1} == {(s + 1, "chain")}
    # a report published for an epoch that never landed: a warning too
    ahead = dict(history.docs[s], epoch=s + 7)
    extra = _write(reports[s].parent, ahead)
    assert [(f.check, f.epoch) for f in _audit(history, reports).warnings] == [(Check.REPORT_MISSING, s + 1),
                                                                              (Check.REPORT_UNSETTLED, s + 7)]
    extra.unlink()
    out = _cli(history, monkeypatch, tmp_path, "--reports", str(reports[s].parent), "--require-reports", "--json")
    assert out.exit_code == EXIT_AUDIT_FAILED
    assert [(d["check"], d["epoch"]) for d in json.loads(out.stdout)["discrepancies"]] == [("report-missing", s + 1)]
    assert f"report-missing: job - epoch {s + 1}: no published report" in out.stderr
    history.assert_conserved()


def test_from_epoch_and_job_narrow_the_audit(history: History, reports: dict[int, Path]) -> None:
    s = history.s
    report = _audit(history, reports, from_epoch=s + 1, job_id=history.b)
    assert report.ok
    assert [e.epoch for e in report.epochs] == [s + 1]
    assert [j.job_id for j in report.jobs] == [history.b]
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (1) an edited report file


def test_an_edited_report_file_is_caught(history: History, reports: dict[int, Path], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    s, a, lic = history.s, history.a, history.world.license_ids[0]
    path = reports[s]
    doc = json.loads(path.read_text())
    entry = next(p for p in doc["pay"] if (p["job_id"], p["license_id"]) == (a, lic))
    entry["cumulative"] += 1  # one pay amount, in place, the file name kept
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    report = _audit(history, reports)
    assert _checks(report) == {(Check.REPORT_CONTENT_HASH, None, s), (Check.REPORT_ROOT, None, s),
                               (Check.REPORT_PAY, a, s)}
    assert report.epochs[0].report == "mismatch"
    assert any(f"license {lic} pay {entry['cumulative']}, a claim proved {entry['cumulative'] - 1}" in f.detail
               for f in report.errors)
    with pytest.raises(AuditFailed) as failed:
        report.raise_for_findings()
    assert failed.value.exit_code == EXIT_AUDIT_FAILED

    out = _cli(history, monkeypatch, tmp_path, "--reports", str(path.parent))
    assert out.exit_code == EXIT_AUDIT_FAILED
    assert f"DISCREPANCY report-root: job - epoch {s}:" in out.stdout
    assert f"DISCREPANCY report-pay: job {a} epoch {s}:" in out.stdout
    history.assert_conserved()


def test_an_edited_report_with_its_root_recomputed_differs_from_the_chain(history: History,
                                                                          reports: dict[int, Path]) -> None:
    s, b = history.s, history.b
    original = reports.pop(s + 1)
    doc = json.loads(original.read_text())
    original.unlink()  # replaced by the altered one
    pay = {(j, li): amount for j, li, amount in doc["pay"]}
    moved = next(k for k in pay if k[0] == b)
    pay[moved] -= 5  # pay moved between two licenses: the job's total unchanged
    pay[next(k for k in pay if k[0] == b and k != moved)] += 5
    doc["pay"] = [[j, li, amount] for (j, li), amount in sorted(pay.items())]
    doc["root"] = "0x" + MerkleTree(release_leaf(j, li, amount) for (j, li), amount in pay.items()).root.hex()
    reports[s + 1] = _write(reports[s].parent, doc)  # consistent in itself, content-addressed
    report = _audit(history, reports)
    assert (Check.REPORT_ROOT_ON_CHAIN, None, s + 1) in _checks(report)
    assert (Check.REPORT_ROOT, None, s + 1) not in _checks(report)
    assert {(f.check, f.job_id) for f in report.errors if f.check is Check.REPORT_PAY} <= {(Check.REPORT_PAY, b)}
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (2) totals unlike the chain's


def test_a_report_whose_totals_differ_from_the_signed_ones_is_caught(history: History,
                                                                     reports: dict[int, Path]) -> None:
    s, a = history.s, history.a
    original = reports.pop(s)
    doc = json.loads(original.read_text())
    original.unlink()  # replaced by the altered one
    entry = next(t for t in doc["totals"] if t["job_id"] == a)
    entry["refund"] -= 1
    entry["burn"] += 1  # the job's sum unchanged: only the split differs
    reports[s] = _write(reports[s + 1].parent, doc)
    reports[s].with_name("ignored.txt").write_text("not a report")
    report = _audit(history, reports)
    # its rows do not hash to the totals root the quorum signed; and a's were applied on chain: named
    assert _checks(report) == {(Check.TOTALS_ROOT, None, s), (Check.REPORT_TOTALS, a, s)}
    signed = next(t for t in history.totals[s] if t.job_id == a)
    (named,) = [f for f in report.errors if f.check is Check.REPORT_TOTALS]
    assert f"applied on chain {signed.release}/{signed.refund}/{signed.burn}" in named.detail
    assert report.epochs[0].report == "mismatch"
    # the table takes no totals from it: epoch s's rows are what was applied
    assert {(t.epoch, t.source) for t in report.totals if t.epoch == s} == {(s, "chain")}
    history.assert_conserved()


def test_a_report_stating_another_totals_root_or_two_versions_is_caught(history: History,
                                                                        reports: dict[int, Path]) -> None:
    s, b = history.s, history.b
    doc = json.loads(reports[s + 1].read_text())
    doc["totals_root"] = "0x" + "22" * 32  # its rows still the signed ones
    reports[s + 1].unlink()
    reports[s + 1] = _write(reports[s].parent, doc)
    report = _audit(history, reports)
    assert _checks(report) == {(Check.TOTALS_ROOT, None, s + 1)}
    assert "states totals root 0x2222" in report.errors[0].detail
    # a second, different version of epoch s+1's report published beside the honest one
    doc = dict(history.docs[s + 1])
    doc["totals"] = [[j, r, f + 1 if j == b else f, bn] for j, r, f, bn in doc["totals"]]
    reports[s + 1].unlink()
    reports[s + 1] = _write(reports[s].parent, history.docs[s + 1])
    reports[-1] = _write(reports[s].parent, doc)
    report = _audit(history, reports)
    assert _checks(report) == {(Check.REPORT_CONFLICT, None, s + 1), (Check.TOTALS_ROOT, None, s + 1),
                               (Check.REPORT_TOTALS, b, s + 1)}
    history.assert_conserved()


def test_a_malformed_report_file_is_a_discrepancy_not_a_crash(history: History, reports: dict[int, Path]) -> None:
    broken = reports[history.s].parent / "broken.json"
    broken.write_text(json.dumps({"epoch": history.s, "root": "0x12", "totals": [], "pay": []}))
    report = _audit(history, reports)
    assert [(f.check, "root must be" in f.detail) for f in report.errors] == [(Check.REPORT_MALFORMED, True)]
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (3) signatures at that block


def test_a_signature_by_an_oracle_removed_before_the_report_is_caught(history: History,
                                                                      reports: dict[int, Path]) -> None:
    s = history.s
    record, published = _record_and_published(history, reports)
    tx, call = _report_call(record, s + 1)
    message = epoch_report(record.domain, s + 1, call.root, call.totals_root)
    forged = [sign(message, history.removed.key), call.signatures[0]]  # removed before epoch s+1's block
    report = check(_with_calls(record, tx, reports=(replace(call, signatures=tuple(forged)),)), published)
    assert _checks(report) == {(Check.SIGNER_NOT_REGISTERED, None, s + 1), (Check.QUORUM_NOT_REACHED, None, s + 1)}
    assert any(history.removed.address in f.detail for f in report.errors)
    history.assert_conserved()


def test_quorum_is_judged_by_the_oracle_set_and_threshold_at_that_block(history: History,
                                                                        reports: dict[int, Path]) -> None:
    s = history.s
    record, published = _record_and_published(history, reports)
    tx, call = _report_call(record, s)

    def with_signatures(signatures: list[bytes]) -> AuditReport:
        return check(_with_calls(record, tx, reports=(replace(call, signatures=tuple(signatures)),)), published)

    # two signatures meet today's threshold (2), not the 3 in force when epoch s settled
    dropped = with_signatures(list(call.signatures[:2]))
    assert (Check.QUORUM_NOT_REACHED, None, s) in _checks(dropped)
    assert (Check.SIGNER_COUNT, None, s) in _checks(dropped)  # the event counted 3
    # an oracle added after epoch s did not count for it
    message = epoch_report(record.domain, s, call.root, call.totals_root)
    later = with_signatures([*call.signatures[:2], sign(message, history.added.key)])
    assert _checks(later) == {(Check.SIGNER_NOT_REGISTERED, None, s), (Check.QUORUM_NOT_REACHED, None, s)}
    history.assert_conserved()


def test_malformed_and_duplicate_signatures_are_refused_as_the_registry_would(history: History) -> None:
    w = history.world
    domain = w.escrow.domain()
    root, thash = b"\x01" * 32, b"\x02" * 32
    message = epoch_report(domain, 7, root, thash)
    good = [sign(message, k.key) for k in w.oracle_keys[:3]]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s_value = int.from_bytes(good[0][32:64], "big")
    high_s = good[0][:32] + (n - s_value).to_bytes(32, "big") + bytes([55 - good[0][64]])  # the malleable twin
    v_zero = good[1][:64] + bytes([good[1][64] - 27])
    oracles = frozenset(k.address for k in w.oracle_keys)
    signers, findings = check_signatures(7, root, thash, [high_s, v_zero, good[2], good[2], good[2][:64]],
                                         domain=domain, oracles=oracles, threshold=1, block=1)
    assert signers == (w.oracle_keys[2].address,)
    assert [f.check for f in findings] == [Check.SIGNATURE_INVALID, Check.SIGNATURE_INVALID, Check.SIGNER_DUPLICATE,
                                           Check.SIGNATURE_INVALID]
    assert "upper half" in findings[0].detail
    assert "not 27 or 28" in findings[1].detail
    assert "64 bytes" in findings[3].detail
    signers, findings = check_signatures(7, root, thash, good, domain=domain, oracles=oracles, threshold=3, block=1)
    assert len(signers) == 3
    assert findings == []
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (4) amounts


def test_tokens_sent_straight_to_the_escrow_unbalance_it(history: History, reports: dict[int, Path],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    w = history.world
    w.token.transfer(w.escrow.address, 7, sender=w.csp2)  # on chain: held for no job
    report = _audit(history, reports)
    assert _checks(report) == {(Check.ESCROW_BALANCE, None, None)}
    assert "+7 unaccounted" in report.errors[0].detail
    out = _cli(history, monkeypatch, tmp_path, "--reports", str(reports[history.s].parent), "--json")
    assert out.exit_code == EXIT_AUDIT_FAILED
    assert [d["check"] for d in json.loads(out.stdout)["discrepancies"]] == ["escrow-balance"]
    # one job's audit does not cover the escrow-wide balance, and says so
    one = _audit(history, reports, job_id=history.a)
    assert one.ok
    assert any("escrow token balance" in item for item in one.not_verified)
    history.assert_conserved(balance=False)  # every job still conserves; the escrow holds 7 more


def _alter_event(record: ChainRecord, name: str, job_id: int, **args: int) -> ChainRecord:
    index = next(i for i, e in enumerate(record.escrow_events) if e.name == name and e.args["jobId"] == job_id)
    old: ChainEvent = record.escrow_events[index]
    events = list(record.escrow_events)
    events[index] = replace(old, args={**old.args, **args})
    return replace(record, escrow_events=tuple(events))


def test_an_altered_refund_or_claim_amount_is_named(history: History, reports: dict[int, Path]) -> None:
    s, a, b = history.s, history.a, history.b
    record, published = _record_and_published(history, reports)
    refund = next(e for e in record.escrow_events if e.name == "RefundTaken" and e.args["jobId"] == a)
    altered = check(_alter_event(record, "RefundTaken", a, amount=refund.args["amount"] - 1), published)
    # the job's rule and state, and the escrow's balance: the events now leave 1 unit the escrow does not hold
    assert {(f.check, f.job_id) for f in altered.errors} == {(Check.LEDGER, a), (Check.JOB_STATE, a),
                                                            (Check.ESCROW_BALANCE, None)}
    assert any("refunded: events give" in f.detail for f in altered.errors)

    claimed = next(e for e in record.escrow_events if e.name == "Claimed" and e.args["jobId"] == b)
    altered = check(_alter_event(record, "Claimed", b, amount=claimed.args["amount"] + 3), published)
    assert {(f.check, f.job_id, f.epoch) for f in altered.errors} >= {(Check.CLAIM_AMOUNT, b, s)}
    # 3 more than epoch s allocated to B's release: its claimable term goes negative, and stays so
    # (everything B's reports released was claimed or forfeited): the end state does not conserve
    assert {f.check for f in altered.errors} == {Check.CLAIM_AMOUNT, Check.LEDGER, Check.JOB_STATE,
                                                 Check.ESCROW_BALANCE, Check.CONSERVATION}
    assert any(f.check is Check.LEDGER and "claimable is -3" in f.detail for f in altered.errors)
    assert any(f.check is Check.CONSERVATION and f.job_id == b and "'claimable': -3" in f.detail
               for f in altered.errors)
    history.assert_conserved()


def test_a_claim_whose_calldata_does_not_prove_its_leaf_is_caught(history: History, reports: dict[int, Path]) -> None:
    s, a = history.s, history.a
    record, published = _record_and_published(history, reports)
    tx, calls = next((tx, calls) for tx, calls in record.calls.items() if len(calls.claims_of("claim")) == 2)
    assert calls.functions == ("applyTotals", "claim")  # a multicall: its claim decoded from inside it
    (call,) = calls.payouts
    first = call.claims[0]
    forged = PayoutCall(call.function, (replace(first, cumulative=first.cumulative + 1), call.claims[1]))
    report = check(_with_calls(record, tx, payouts=(forged,)), published)
    assert _checks(report) == {(Check.CLAIM_PROOF, a, s + 1), (Check.CLAIM_AMOUNT, a, s + 1)}
    history.assert_conserved()


def test_amounts_replayed_from_events_follow_the_escrow_rules(history: History, reports: dict[int, Path]) -> None:
    s, b, c = history.s, history.b, history.c
    record, published = _record_and_published(history, reports)
    scaled = next(e for e in record.escrow_events if e.name == "JobScaled" and e.args["jobId"] == b)
    altered = check(_alter_event(record, "JobScaled", b, refunded=scaled.args["refunded"] + 1), published)
    assert any(f.check is Check.LEDGER and f.job_id == b and "epochs left" in f.detail for f in altered.errors)
    closed = next(e for e in record.escrow_events if e.name == "JobClosed")
    altered = check(_alter_event(record, "JobClosed", c, reclaimed=closed.args["reclaimed"] - 1), published)
    assert any(f.check is Check.LEDGER and "unallocated remainder" in f.detail for f in altered.errors)
    assert any(f.check is Check.JOB_STATE and f.job_id == c for f in altered.errors)
    allocated = [i for i, e in enumerate(record.escrow_events)
                 if e.name == "JobAllocated" and e.args["epoch"] == s + 1 and e.args["jobId"] == b]
    events = list(record.escrow_events)
    events[allocated[0]] = replace(events[allocated[0]], args={**events[allocated[0]].args, "burn": 0})
    altered = check(replace(record, escrow_events=tuple(events)), published)
    assert (Check.ALLOCATION, b, s + 1) in _checks(altered)
    assert any(f.check is Check.LEDGER and "decreased" in f.detail for f in altered.errors)
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (4b) totals applied on chain


def test_totals_applied_through_multicall_are_audited(history: History, reports: dict[int, Path]) -> None:
    s, a, b, c = history.s, history.a, history.b, history.c
    record, published = _record_and_published(history, reports)
    # epoch s+1's totals reached the jobs only inside multicalls: each decoded from inside them
    claimed = _allocated_tx(record, a, s + 1)
    assert record.calls[claimed].functions == ("applyTotals", "claim")
    assert record.calls[claimed].totals == tuple(totals_proofs(s + 1, history.totals[s + 1], [a]))
    refunded = _allocated_tx(record, b, s + 1)
    assert record.calls[refunded].functions == ("applyTotals", "takeRefund")
    assert [t.totals.job_id for t in record.calls[refunded].totals] == [a, b]  # a's skipped: no event for it
    assert record.calls[_allocated_tx(record, c, s + 1)].functions == ("applyTotals", "closeJob")
    assert check(record, published).ok

    # the entry's amounts changed: its proof no longer proves them, and the event is not them
    entry = record.calls[claimed].totals[0]
    forged = replace(entry, totals=replace(entry.totals, release=entry.totals.release + 1))
    report = check(_with_calls(record, claimed, totals=(forged,)), published)
    assert _checks(report) == {(Check.TOTALS_PROOF, a, s + 1), (Check.ALLOCATION, a, s + 1)}
    assert any("JobAllocated" in f.detail and "the applyTotals entry proves" in f.detail for f in report.errors)
    # an entry proving the totals of an epoch no report of which had landed
    report = check(_with_calls(record, claimed, totals=(entry, replace(entry, epoch=s + 3))), published)
    assert _checks(report) == {(Check.TOTALS_PROOF, a, s + 3), (Check.TOTALS_CALLDATA, a, s + 3)}
    # a JobAllocated with no entry behind it
    report = check(_with_calls(record, claimed, totals=()), published)
    assert _checks(report) == {(Check.TOTALS_CALLDATA, a, s + 1)}
    # the skipped entry replaced by a valid one the escrow could not have skipped (c's s+1 totals,
    # applied only later, at its close): the escrow would have applied it
    (c_entry,) = totals_proofs(s + 1, history.totals[s + 1], [c])
    report = check(_with_calls(record, refunded, totals=(c_entry, record.calls[refunded].totals[1])), published)
    assert _checks(report) == {(Check.TOTALS_CALLDATA, c, s + 1)}
    assert "neither applied (no JobAllocated) nor skippable" in report.errors[0].detail
    # applyTotals relayed through another contract: its entries cannot be read
    alone = _allocated_tx(record, a, s)  # epoch s's totals, applied in a transaction of their own
    assert record.calls[alone].functions == ("applyTotals",)
    calls = {k: v for k, v in record.calls.items() if k != alone}
    report = check(replace(record, calls=calls, undecodable={alone: f"transaction {alone} was sent to a relayer"}),
                   published)
    assert _checks(report) == {(Check.TOTALS_CALLDATA, min(t.job_id for t in history.totals[s]), s)}
    assert "totals proofs not verified" in report.errors[0].detail
    history.assert_conserved()


def test_a_close_on_totals_not_applied_is_caught(history: History, reports: dict[int, Path]) -> None:
    s, c = history.s, history.c
    record, published = _record_and_published(history, reports)
    tx = _allocated_tx(record, c, s + 1)
    events = tuple(e for e in record.escrow_events
                   if not (e.tx_hash == tx and e.name == "JobAllocated"))  # as if the close skipped the totals
    report = check(replace(record, escrow_events=events), published)
    ledger = [f.detail for f in report.errors if f.check is Check.LEDGER and f.job_id == c]
    assert any(f"report of epoch {s + 1} covers the job and was not applied" in d for d in ledger)
    assert any(f.check is Check.JOB_STATE and "settled_until: events give" in f.detail for f in report.errors)
    # the escrow requires it only until a second grace period is over: a close after it is no finding
    closed = next(e for e in record.escrow_events if e.name == "JobClosed" and int(e.args["jobId"]) == c)
    job = record.jobs[c]
    assert record.closed_at_epoch[closed.at.block] < job.start_epoch + job.epochs + 2 * record.close_grace_epochs
    late = {**record.closed_at_epoch, closed.at.block: job.start_epoch + job.epochs + 2 * record.close_grace_epochs}
    lapsed = check(replace(record, escrow_events=events, closed_at_epoch=late), published)
    assert not [f for f in lapsed.errors if f.check is Check.LEDGER and f.job_id == c and "was not applied" in f.detail]
    history.assert_conserved()


def test_a_landed_report_not_applied_yet_is_locked_and_shown_not_a_discrepancy(
        history: History, reports: dict[int, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    w, s, a, b = history.world, history.s, history.a, history.b
    lic = w.license_ids
    policy = w.escrow.get_job(a).policy
    pay = dict(history.pay[s + 1])
    cumulative = {t.job_id: [t.release, t.refund, t.burn] for t in history.totals[s + 1] if t.job_id in (a, b)}
    _epoch({a: [(lic[0], 255), (lic[1], 255), (lic[2], 255)], b: [(lic[3], 255), (lic[4], 0)]}, policy, pay,
           cumulative)
    totals = [JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(bn))
              for j, (r, f, bn) in sorted(cumulative.items())]
    tree = w.post_report(s + 2, pay, totals, signers=[w.oracle_keys[2], history.added], apply=False)
    reports[s + 2] = _write(reports[s].parent, {
        "epoch": s + 2, "root": "0x" + tree.root.hex(), "totals_root": "0x" + totals_root(totals).hex(),
        "totals": [[t.job_id, t.release, t.refund, t.burn] for t in totals],
        "pay": [[j, li, amount] for (j, li), amount in sorted(pay.items())]})
    report = _audit(history, reports)
    assert report.ok, [f.line for f in report.findings]
    assert [(e.epoch, e.jobs, e.applied) for e in report.epochs][-1] == (s + 2, 2, 0)
    assert [(t.job_id, t.applied) for t in report.totals if t.epoch == s + 2] == [(a, False), (b, False)]
    accounts = {j.job_id: j for j in report.jobs}
    for t in totals:
        acc, job = accounts[t.job_id], w.escrow.get_job(t.job_id)
        assert (acc.settled_until, acc.landed) == (s + 2, Allocation(s + 2, t.release, t.refund, t.burn))
        unapplied = t.release + t.refund + t.burn - job.alloc_release - job.alloc_refund - job.alloc_burn
        assert 0 < acc.landed_unapplied == unapplied <= acc.locked == job.locked  # still locked on chain
        assert acc.conservation() == job.conservation()
    out = _cli(history, monkeypatch, tmp_path, "--reports", str(reports[s].parent), "--json")
    assert out.exit_code == 0, out.output
    shown = {j["job_id"]: j for j in json.loads(out.stdout)["jobs"]}
    assert (shown[a]["settled_until"], shown[a]["landed"]["epoch"]) == (s + 2, s + 2)
    assert {(t["job_id"], t["epoch"], t["applied"]) for t in json.loads(out.stdout)["totals"]} >= {
        (a, s + 2, False), (b, s + 2, False), (a, s + 1, True)}

    # a's totals applied by anyone: up to date; b's still landed
    w.escrow.apply_totals(totals_proofs(s + 2, totals, [a]), sender=w.outsider)
    report = _audit(history, reports)
    assert report.ok, [f.line for f in report.findings]
    accounts = {j.job_id: j for j in report.jobs}
    assert (accounts[a].settled_until, accounts[a].landed, accounts[a].landed_unapplied) == (s + 3, None, 0)
    assert accounts[b].landed is not None
    assert [(t.job_id, t.applied) for t in report.totals if t.epoch == s + 2] == [(a, True), (b, False)]
    # a tampered row of totals nobody applied: the totals root still catches it
    doc = json.loads(reports[s + 2].read_text())
    doc["totals"][1][2] += 1  # b's refund
    reports.pop(s + 2).unlink()
    reports[s + 2] = _write(reports[s].parent, doc)
    assert _checks(_audit(history, reports)) == {(Check.TOTALS_ROOT, None, s + 2)}
    history.assert_conserved()


def test_what_the_chain_says_of_itself_is_cross_checked(history: History, reports: dict[int, Path]) -> None:
    s, b = history.s, history.b
    record, published = _record_and_published(history, reports)
    # the escrow consults another oracle registry than the deployment record names
    elsewhere = replace(record, oracle_registry=history.world.escrow.address)
    assert _checks(check(elsewhere, published)) == {(Check.DEPLOYMENT, None, None)}
    # the totals root the escrow stored is not the one its event announced
    stored = replace(record, totals_roots={**record.totals_roots, s: b"\x00" * 32})
    report = check(stored, published)
    assert _checks(report) == {(Check.ROOT_ON_CHAIN, None, s)}
    assert report.errors[0].detail.startswith("totalsRootOf is 0x00")
    # the report's calldata carries another totals root than the event
    tx, call = _report_call(record, s + 1)
    report = check(_with_calls(record, tx, reports=(replace(call, totals_root=b"\x01" * 32),)), published)
    assert _checks(report) == {(Check.REPORT_CALLDATA, None, s + 1)}
    # a claim against an epoch not settled before it, and one relayed through another contract
    claimed = next(e for e in record.escrow_events if e.name == "Claimed" and e.args["jobId"] == b
                   and e.args["licenseId"] == history.world.license_ids[3] and e.tx_hash in record.calls
                   and len(record.calls[e.tx_hash].claims_of("claim")) == 1)
    (call_b,) = record.calls[claimed.tx_hash].payouts
    later = PayoutCall("claim", (replace(call_b.claims[0], epoch=s + 3),))
    assert _checks(check(_with_calls(record, claimed.tx_hash, payouts=(later,)), published)) == {
        (Check.CLAIM_EPOCH, b, s + 3)}
    calls = {k: v for k, v in record.calls.items() if k != claimed.tx_hash}
    relayed = replace(record, calls=calls, undecodable={claimed.tx_hash: "sent to a multisig"})
    assert _checks(check(relayed, published)) == {(Check.CLAIM_CALLDATA, b, None)}
    # the escrow's settledUntil unlike the applications replayed from events
    ahead = replace(record, settled_until={**record.settled_until, b: s + 5})
    assert _checks(check(ahead, published)) == {(Check.JOB_STATE, b, None)}
    history.assert_conserved()


# ---------------------------------------------------------------------------------- (5) the chain inputs cited


@dataclass
class FullEpoch:
    epoch: int
    job: JobId  # E: two replicas for this one epoch, served all epoch by nodes 0 and 1
    report: EpochReport  # as signed, landed and published
    read: ChainInputs  # what the chain says at the cited block
    landed: int  # the block its root landed in
    path: Path


def _settle_full(history: History, directory: Path,
                 edit: Callable[[ChainInputs], ChainInputs] = lambda inputs: inputs) -> FullEpoch:
    """One more epoch settled as the oracles settle one: two registered oracles sign the same
    observation, the leader reads the chain inputs at the latest block and builds the report from
    them as ``edit`` leaves them (the identity: honest), both sign it, it lands and is published
    in the full format under its content id."""
    w = history.world
    epoch = w.escrow.current_epoch() + 1
    job = w.new_job(replicas=2, epochs=1, start_epoch=epoch)
    w.advance_to_epoch(epoch + 1)
    genesis, seconds, _ = w.escrow.epoch_clock()
    start_ms, end_ms = (genesis + epoch * seconds) * 1000, (genesis + (epoch + 1) * seconds) * 1000
    span = end_ms - start_ms
    nodes = sorted(n.address.lower() for n in w.nodes[:2])
    observed = Observed(start_ms, end_ms, span, tuple((n, 255) for n in nodes),
                        tuple((job, replica, node, span, span) for replica, node in enumerate(nodes)))
    domain = w.escrow.domain()
    signers = sorted([w.oracle_keys[0], history.added], key=lambda k: k.address)
    observations = [sign_observation(domain, epoch, observed, k.key) for k in signers]
    read = read_inputs(w.chain, w.dep, epoch, nodes)
    report = build_report(epoch, observations, edit(read), None, w.oracles.threshold())
    w.escrow.submit_report(epoch, report.root_bytes, report.totals_root_bytes,
                           [sign(report.message(domain), k.key) for k in signers], sender=w.outsider)
    landed = w.chain.block_number()  # dev chains mine each transaction in a block of its own
    path = directory / f"{report.content_id()}.json"
    path.write_text(report.model_dump_json())  # as an oracle stores it (oracle/_service.py)
    return FullEpoch(epoch, job, report, read, landed, path)


def test_a_full_report_whose_inputs_are_the_chains_balances(history: History, reports: dict[int, Path],
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    full = _settle_full(history, reports[history.s].parent)
    reports[full.epoch] = full.path
    mirror = tmp_path / "mirror"  # the same report published twice: read back once
    mirror.mkdir()
    reports[-1] = mirror / full.path.name
    reports[-1].write_bytes(full.path.read_bytes())
    reads: list[tuple[int, int]] = []

    def counted(chain: Chain, deployment: Any, epoch: int, nodes: Any, block: int | None = None) -> ChainInputs:
        reads.append((epoch, block or -1))
        return read_inputs(chain, deployment, epoch, nodes, block)

    monkeypatch.setattr(audit_inputs, "read_inputs", counted)
    report = _audit(history, reports)
    assert report.ok, [f.line for f in report.findings]
    assert report.findings == ()
    assert report.not_verified == (AMOUNTS_NOT_VERIFIED,)  # the two minimal reports; the full one verified
    assert [(e.epoch, e.report) for e in report.epochs][-1] == (full.epoch, "ok")
    assert reads == [(full.epoch, full.report.inputs.block)]
    assert full.report.inputs == full.read
    assert full.report.inputs.block < full.landed
    history.assert_conserved()


def test_a_full_report_that_does_not_build_on_the_previous_one_is_caught(history: History,
                                                                          reports: dict[int, Path]) -> None:
    full = _settle_full(history, reports[history.s].parent)
    edited = full.report.model_copy(update={"previous_id": "ab" * 32})  # same roots: nothing on chain differs
    full.path.unlink()
    reports[full.epoch] = full.path.with_name(f"{edited.content_id()}.json")
    reports[full.epoch].write_text(edited.model_dump_json())
    report = _audit(history, reports)
    assert _checks(report) == {(Check.REPORT_AMOUNTS, None, full.epoch)}
    assert f"builds on report {'ab' * 32}" in report.errors[0].detail
    history.assert_conserved()


def _restrict_node_1(inputs: ChainInputs) -> ChainInputs:
    """License 1's node cited as frozen: its share goes to the CSP instead of its owner."""
    nodes = tuple(n.model_copy(update={"standing": Standing.RESTRICTED}) if i == 1 else n
                  for i, n in enumerate(inputs.nodes))
    return inputs.model_copy(update={"nodes": nodes})


def _one_replica(inputs: ChainInputs) -> ChainInputs:
    """Job E (the newest; the inputs also hold the history's jobs not closed yet) cited with one
    replica: its second slot settled by nobody, the node that served it unpaid."""
    e = max(j.job_id for j in inputs.jobs)
    return inputs.model_copy(update={"jobs": tuple(j.model_copy(update={"replicas": 1}) if j.job_id == e else j
                                                   for j in inputs.jobs)})


@pytest.mark.parametrize("edit", [pytest.param(_restrict_node_1, id="standing"),
                                  pytest.param(_one_replica, id="replicas")])
def test_signed_and_landed_inputs_unlike_the_chain_are_caught_by_the_read_back(
        history: History, reports: dict[int, Path], edit: Callable[[ChainInputs], ChainInputs]) -> None:
    # a quorum signs a report built from false inputs: its amounts follow from them, its root and
    # totals are the ones on chain; only the chain read at the cited block can tell
    full = _settle_full(history, reports[history.s].parent, edit)
    reports[full.epoch] = full.path
    block = full.report.inputs.block
    if edit is _restrict_node_1:
        node = full.read.nodes[1]
        expected = (None, f"node {node.node} (license {node.license_id}) standing: cited restricted, chain active "
                          f"(block {block})")
    else:
        expected = (full.job, f"job {full.job} replicas: cited 1, chain 2 (block {block})")
    record, published = _record_and_published(history, reports)
    report = check(read_cited_inputs(history.chain, record, published), published)
    assert _checks(report) == {(Check.REPORT_INPUTS, expected[0], full.epoch)}
    assert [(f.job_id, f.detail) for f in report.errors] == [(expected[0], f"{full.path}: {expected[1]}")]
    assert [(e.epoch, e.report) for e in report.epochs][-1] == (full.epoch, "mismatch")
    assert report.not_verified == (AMOUNTS_NOT_VERIFIED,)
    # without the read-back every other check passes: the recomputed amounts agree with the chain
    unread = check(record, published)
    assert unread.ok, [f.line for f in unread.findings]
    assert unread.not_verified == (AMOUNTS_NOT_VERIFIED, f"chain inputs cited by {full.path} (epoch {full.epoch}, "
                                                         f"block {block}): not read back")
    history.assert_conserved()


@pytest.mark.parametrize(("where", "problem"), [
    pytest.param("landed", "not before block {landed}, in which its root landed", id="the-landing-block"),
    pytest.param("deployment", "before the deployment (block {deployed})", id="before-the-deployment"),
])
def test_a_report_citing_a_block_it_cannot_have_read_is_caught(history: History, reports: dict[int, Path],
                                                              where: str, problem: str) -> None:
    full = _settle_full(history, reports[history.s].parent)
    deployed = history.world.dep.block
    assert 0 < deployed < full.report.inputs.block < full.landed
    block = full.landed if where == "landed" else deployed - 1
    # re-signed over the same root and totals: the cited block moves no amount
    edited = full.report.model_copy(update={"inputs": full.report.inputs.model_copy(update={"block": block})})
    full.path.unlink()
    reports[full.epoch] = full.path.with_name(f"{edited.content_id()}.json")
    reports[full.epoch].write_text(edited.model_dump_json())
    report = _audit(history, reports)
    assert _checks(report) == {(Check.REPORT_INPUTS_BLOCK, None, full.epoch)}
    (finding,) = report.errors
    assert finding.detail == (f"{reports[full.epoch]}: cites chain inputs at block {block}, "
                              + problem.format(landed=full.landed, deployed=deployed))
    assert report.not_verified == (AMOUNTS_NOT_VERIFIED,)  # no read was needed, none left undone
    history.assert_conserved()


def test_inputs_at_a_block_the_chain_no_longer_serves_are_not_verified(history: History, reports: dict[int, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    full = _settle_full(history, reports[history.s].parent, _restrict_node_1)  # false, and now uncheckable
    reports[full.epoch] = full.path
    block = full.report.inputs.block
    record, published = _record_and_published(history, reports)  # the latest block's state is served
    eth, provider = history.chain.w3.eth, history.chain.w3.provider
    served, served_one, served_batch = eth.call, provider.make_request, getattr(provider, "make_batch_request", None)
    failure: list[Exception] = [ValueError({"code": -32000, "message": f"missing trie node {'ab' * 32}"})]

    def gone(at: Any) -> bool:
        """A pruned node: the state of the blocks up to the cited one is gone."""
        number = int(at, 16) if isinstance(at, str) and at.startswith("0x") else at
        return isinstance(number, int) and number <= block

    def pruned(transaction: Any, block_identifier: Any = None, *args: Any, **kwargs: Any) -> Any:
        if gone(block_identifier):
            raise failure[0]
        return served(transaction, block_identifier, *args, **kwargs)

    def answer(method: Any, params: Any) -> Any:  # raw JSON-RPC (Chain.read_many on a URL), as a node answers
        if method == "eth_call" and gone(params[1]):
            if not isinstance(failure[0], ValueError):
                raise failure[0]
            return {"jsonrpc": "2.0", "id": 1, "error": failure[0].args[0]}
        return served_one(method, params)

    monkeypatch.setattr(eth, "call", pruned)
    monkeypatch.setattr(provider, "make_request", answer)
    if served_batch is not None:
        monkeypatch.setattr(provider, "make_batch_request", lambda requests: [answer(m, p) for m, p in requests])
    report = check(read_cited_inputs(history.chain, record, published), published)
    assert report.ok, [f.line for f in report.findings]  # not a discrepancy: the audit could not tell
    (unread,) = [line for line in report.not_verified if line != AMOUNTS_NOT_VERIFIED]
    assert unread.startswith(f"chain inputs cited by {full.path} (epoch {full.epoch}, block {block}): the chain "
                             f"did not serve its state at block {block} (")
    assert "missing trie node" in unread
    # an unreachable chain is not "not verified": the audit fails as it does on any other read
    failure[0] = ConnectionError("connection refused")
    with pytest.raises(ChainUnreachable):
        read_cited_inputs(history.chain, record, published)
    monkeypatch.undo()
    history.assert_conserved()


# ---------------------------------------------------------------------------------- what the audit cannot read


def test_a_report_relayed_through_another_contract_is_flagged_unverifiable(history: History,
                                                                            reports: dict[int, Path]) -> None:
    s = history.s
    record, published = _record_and_published(history, reports)
    tx = _settled_tx(record, s)
    calls = {k: v for k, v in record.calls.items() if k != tx}
    relayed = replace(record, calls=calls, undecodable={tx: f"transaction {tx} was sent to a multisig"})
    report = check(relayed, published)
    assert _checks(report) == {(Check.REPORT_CALLDATA, None, s)}
    assert "signatures not verified" in report.errors[0].detail
    assert report.epochs[0].signers == ()
    history.assert_conserved()


def test_a_deployment_record_for_another_chain_exits_4(history: History, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    elsewhere = replace(history.world.dep, chain_id=history.world.dep.chain_id + 1)
    monkeypatch.setattr(history.world, "dep", elsewhere)
    out = _cli(history, monkeypatch, tmp_path, root=True)
    assert out.exit_code == 4
    assert json.loads(out.stdout)["error"] == "DeploymentError"
    history.assert_conserved()
