"""``deedmesh audit``: re-derive every settlement of a deployment from the chain and the published
reports, print it per epoch and per job, and name every discrepancy.

Exit codes: 0 everything balances and verifies (warnings, such as an epoch without a published
report, are printed but do not fail the audit unless ``--require-reports``); 15 discrepancies
(``AuditFailed``), one line each on stdout (and on stderr with ``--json``), naming the check, job,
epoch and what differs; deedmesh's usual codes otherwise: 2 usage, 3 chain unreachable, 4 bad
deployment record, 7 other chain error.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from contracts import Chain, Deployment

from ._audit import AuditFailed, AuditOptions, AuditReport, audit

EXIT_AUDIT_FAILED = AuditFailed.exit_code


@click.command("audit")
@click.option("--rpc", required=True, help="JSON-RPC URL of the chain the deployment is on.")
@click.option("--deployment", "deployment_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The deployment record (deedmesh chain deploy --out).")
@click.option("--reports", "report_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A directory of published reports (*.json, content-addressed <sha256>.json) or one report "
                   "file; repeat for more.")
@click.option("--job", "job_id", type=click.IntRange(min=1), help="Audit this job only.")
@click.option("--from-epoch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Check reports of this epoch and later (job accounts always replay the whole history).")
@click.option("--require-reports", is_flag=True, help="A settled epoch without a published report fails the audit.")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON on stdout.")
@click.pass_context
def audit_command(ctx: click.Context, rpc: str, deployment_file: Path, report_paths: tuple[Path, ...],
                  job_id: int | None, from_epoch: int, require_reports: bool, json_output: bool) -> None:
    """Re-derive every settlement from chain events and published reports.

    Re-verifies every report's quorum signatures against the oracle registry as it was at that
    block, every claim's Merkle proof and amount, every job's accounts and conservation, the
    escrow's token balance, and each published report's root and totals; for a report in the
    oracles' full format, its amounts from what it cites and its chain inputs read back at the
    block it cites (a pruned node that no longer serves that block leaves them "not verified").

    \b
    Exit codes: 0 balanced and verified; 15 discrepancies (one line each, naming
    the check, job, epoch and what differs); 2 usage, 3 chain unreachable,
    4 bad deployment record, 7 other chain error.
    """
    json_output = json_output or bool(ctx.find_root().params.get("json_output"))
    deployment = Deployment.load(deployment_file)
    chain = Chain.connect(rpc)
    options = AuditOptions(job_id=job_id, from_epoch=from_epoch, require_reports=require_reports)
    report = audit(chain, deployment, reports=report_paths, options=options)
    if json_output:
        click.echo(json.dumps(report.as_json(), indent=2))
        for finding in report.errors:
            click.echo(finding.line, err=True)
    else:
        _print_report(Console(), report)
        for finding in report.findings:
            click.echo(("warning: " if finding.warning else "DISCREPANCY ") + finding.line)
    if not report.ok:
        ctx.exit(EXIT_AUDIT_FAILED)


def _print_report(console: Console, r: AuditReport) -> None:
    scope = f", job {r.options.job_id}" if r.options.job_id is not None else ""
    console.print(f"[bold]deedmesh audit[/] of escrow {r.escrow} on chain {r.chain_id}, blocks "
                  f"{r.from_block}..{r.to_block}{scope}")
    epochs = Table("epoch", "block", "signers", "threshold", "jobs", "applied", "payouts", "published report", "root",
                   title="epochs settled")
    for e in r.epochs:
        epochs.add_row(str(e.epoch), str(e.block), str(len(e.signers)), str(e.threshold),
                       "-" if e.jobs is None else str(e.jobs), str(e.applied), str(e.payouts), e.report,
                       "0x" + e.root.hex()[:16] + "…")
    console.print(epochs)
    jobs = Table("job", "status", "deposited", "released", "forfeited", "refunded", "burned", "reclaimed",
                 "claimable", "pending", "locked", "of which landed", "applied through", "held",
                 title="jobs (rebuilt from events)")
    for j in r.jobs:
        jobs.add_row(str(j.job_id), j.status.name.lower(), *(str(v) for v in (
            j.deposited, j.released, j.forfeited, j.refunded, j.burned, j.reclaimed, j.claimable,
            j.pending_refund + j.pending_burn, j.locked)),
            "-" if j.landed is None else f"{j.landed_unapplied} (epoch {j.landed.epoch})",
            "-" if not j.settled_until else f"epoch {j.settled_until - 1}", str(j.held))
    console.print(jobs)
    totals = Table("job", "epoch", "release", "refund", "burn", "", title="cumulative allocations per job and epoch")
    for t in r.totals:
        note = "applied" if t.applied else "landed, not applied"
        totals.add_row(str(t.job_id), str(t.epoch), str(t.release), str(t.refund), str(t.burn),
                       note + ("" if t.source == "report" else " (no published report)"))
    console.print(totals)
    if r.balances:
        balances = Table("token", "escrow balance", "jobs hold", title="escrow")
        for b in r.balances:
            balances.add_row(b.token, str(b.balance), str(b.held))
        console.print(balances)
    for item in r.not_verified:
        console.print(f"[yellow]not verified:[/] {item}")
    verdict = ("[green]balanced and verified[/]" if r.ok
               else f"[red]{len(r.errors)} discrepancies[/]")
    console.print(f"audit: {verdict}, {len(r.warnings)} warnings")
