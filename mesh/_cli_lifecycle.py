"""A running job's lifecycle, as its CSP drives it: ``job update`` (a new spec, rolled out replica
by replica) and ``job scale`` (a new replica count, paid for in the escrow).

``job update ID SPEC_FILE``: the new spec is checked (same kind, the funded replica count: a
different count is ``job scale``), recorded in the escrow (``updateSpec``, signed locally), then
signed as a submission and handed to ``--via``. The mesh rolls it out with no leader
(``_rollout``); the command follows it from ``--via``'s view until every replica runs the new
revision and is healthy (exit 0), or a replica fails to and the mesh rolls back (exit 13): the
command then records the previous spec again, on chain and in the mesh, so what runs, what the
escrow names and what the mesh relays agree. Exit 14 if neither happened within ``--timeout-s``
(the update goes on; ``job status`` follows it).

``job scale ID N``: the current spec (as ``--via`` relays it) with ``replicas: N``. The escrow's
``quoteScale`` says what it costs; a scale up approves and pulls price x extra replicas x the
epochs left (from the next epoch), a scale down returns the released replicas' share of those
epochs to the CSP at once (pay stops from the next epoch). Then ``scaleJob`` (count and spec hash
in one transaction), the signed submission, and the command follows until N replicas are held
and running and none above N is.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from eth_account import Account
from rich.console import Console

from contracts import Chain, Deployment, JobStatus, TokenClient

from ._cli_client import call_node, via_option
from ._cli_job import _csp_key, _with_csp_options, job, submit
from ._errors import MeshError, UpdateRolledBack, UpdateTimedOut
from ._identity import NodeIdentity
from ._jobspec import JobSpec, parse_spec_json, revision_of, spec_hash
from ._jobspec_load import load_spec
from ._rollout import DONE
from ._submission import sign_submission

POLL_S = 1.0


def job_view(via: str, job_id: int) -> dict[str, Any]:
    """The job as the node at ``via`` relays it (``GET /jobs``); ``MeshError`` if it knows none."""
    code, jobs = call_node(via, "GET", "/jobs")
    if code != 200 or not isinstance(jobs, list):
        raise MeshError(f"{via} does not look like a deedmesh node API ({code})")
    named = [j for j in jobs if j["job_id"] == job_id]
    if not named:
        raise MeshError(f"{via} knows no job {job_id}")
    if len(named) > 1:
        raise MeshError(f"{via} knows job {job_id} from {len(named)} CSPs: ask a node that has read the chain")
    return dict(named[0])


def progress(view: dict[str, Any], revision: str, replicas: int) -> tuple[list[int], bool, list[int]]:
    """From a job view: the replicas below ``replicas`` done on ``revision`` (held, running it, healthy
    or running with no check), whether any replica failed to reach it, and the held replicas at or
    above ``replicas`` (a scale down not finished yet)."""
    done, failed, extra = set(), False, set()
    # an updated job's holders say which revision they run; before its first update they say nothing
    implied = None if view.get("previous_revision") else view["revision"]
    for claim in view["claims"]:
        live = claim["lease_until_ms"] is None or claim["lease_until_ms"] > time.time() * 1000
        if not live:
            continue
        if claim.get("failed_revision") == revision:
            failed = True
        if claim["replica"] >= replicas:
            extra.add(claim["replica"])
        elif claim["state"] in DONE and (claim.get("revision") or implied) == revision:
            done.add(claim["replica"])
    return sorted(done), failed, sorted(extra)


def _follow(via: str, job_id: int, revision: str, replicas: int, timeout_s: float, console: Console,
            what: str) -> tuple[str, dict[str, Any]]:
    """Poll ``via`` until every replica is done on ``revision`` ("done"), one failed ("rolled-back"),
    or ``timeout_s`` passed ("timeout"); the outcome and the last view."""
    deadline = time.monotonic() + timeout_s
    with console.status(f"{what}: waiting for the mesh") as shown:
        while True:
            view = job_view(via, job_id)
            done, failed, extra = progress(view, revision, replicas)
            if failed:
                return "rolled-back", view
            if len(done) == replicas and not extra:
                return "done", view
            if time.monotonic() > deadline:
                return "timeout", view
            shown.update(f"{what}: {len(done)}/{replicas} replicas on revision {revision}"
                         + (f", {len(extra)} above {replicas} still held" if extra else ""))
            time.sleep(POLL_S)


class _Csp:
    """The CSP's key, the chain and the escrow, for one command."""

    def __init__(self, keystore: Path, password_file: Path | None, rpc: str, deployment: Path) -> None:
        self.key: NodeIdentity = _csp_key(keystore, password_file)
        self.address = Account.from_key(self.key.private_key).address
        self.chain = Chain.connect(rpc)
        self.record = Deployment.load(deployment)
        self.record.check_chain(self.chain)
        self.chain.add_signer(Account.from_key(self.key.private_key))
        self.escrow = self.record.escrow(self.chain)

    def own_active_job(self, job_id: int) -> Any:
        found = self.escrow.get_job(job_id)
        if found.status is JobStatus.NONE:
            raise MeshError(f"job {job_id} does not exist in escrow {self.escrow.address}")
        if found.csp.lower() != self.address.lower():
            raise MeshError(f"job {job_id} belongs to {found.csp}, not to {self.address}")
        if found.status is not JobStatus.ACTIVE:
            raise MeshError(f"job {job_id} is {found.status.name.lower()}")
        return found

    def submit(self, via: str, job_id: int, spec: JobSpec, valid_for_s: int) -> dict[str, Any]:
        sub = sign_submission(self.key.private_key, self.record.chain_id, self.record.job_escrow, job_id,
                              spec_hash(spec), time.time_ns() // 1_000_000, int(time.time()) + valid_for_s)
        return submit(via, {"submission": sub.model_dump(), "spec": spec.model_dump(mode="json")})


_chain_options = [
    click.option("--rpc", required=True, help="JSON-RPC URL of the chain holding the escrow."),
    click.option("--wait/--no-wait", default=True, show_default=True,
                 help="Follow the mesh until the change is done (or rolled back)."),
    click.option("--timeout-s", type=click.FloatRange(1), default=600.0, show_default=True,
                 help="How long to follow it before giving up (exit 14; the change goes on)."),
]


def _with_chain_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_chain_options):
        fn = option(fn)
    return fn


def _emit(ctx: click.Context, out: dict[str, Any]) -> None:
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k:16} {v}")


def _console(ctx: click.Context) -> Console:
    return Console(stderr=True, quiet=bool(ctx.find_root().params.get("json_output")) or not sys.stderr.isatty())


@job.command("update")
@click.argument("job_id", type=click.IntRange(1))
@click.argument("spec_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@via_option
@_with_csp_options
@_with_chain_options
@click.pass_context
def update(ctx: click.Context, job_id: int, spec_file: Path, via: str, keystore: Path, password_file: Path | None,
           deployment: Path, valid_for_s: int, rpc: str, wait: bool, timeout_s: float) -> None:
    """Roll JOB_ID out to the spec in SPEC_FILE, replica by replica, gated on health (the spec's
    update: max_unavailable, max_surge, progress_deadline_s). Exit 13 if the mesh rolled it back
    (the previous spec is recorded again), 14 if it did not finish within --timeout-s."""
    spec = load_spec(spec_file)
    current = job_view(via, job_id)
    if current["stopped"] or current.get("spec") is None:
        raise MeshError(f"job {job_id} is stopped: deploy it instead")
    before = parse_spec_json(current["spec"])
    if spec.kind != before.kind:
        raise click.BadParameter(f"a {before.kind} job cannot become a {spec.kind} job: fund a new job",
                                 param_hint="SPEC_FILE")
    csp = _Csp(keystore, password_file, rpc, deployment)
    funded = csp.own_active_job(job_id)
    if spec.replicas != funded.replicas:
        raise click.BadParameter(f"the spec asks for {spec.replicas} replicas, {funded.replicas} are funded: "
                                 f"change the count with `deedmesh job scale {job_id} {spec.replicas}`",
                                 param_hint="SPEC_FILE")
    console, target = _console(ctx), revision_of(spec)
    with console.status("recording the new spec in the escrow"):
        if funded.spec_hash != spec_hash(spec):
            csp.escrow.update_spec(job_id, spec_hash(spec), sender=csp.address)
    answer = csp.submit(via, job_id, spec, valid_for_s)
    out: dict[str, Any] = {"job_id": job_id, "revision": target, "previous_revision": revision_of(before),
                           "nonce": answer.get("nonce"), "outcome": "submitted"}
    if not wait:
        _emit(ctx, out)
        return
    outcome, view = _follow(via, job_id, target, spec.replicas, timeout_s, console, "update")
    out["outcome"] = "updated" if outcome == "done" else outcome
    out["replicas"] = [{k: c.get(k) for k in ("replica", "node", "state", "revision", "failed_revision")}
                       for c in view["claims"]]
    if outcome == "rolled-back":
        with console.status("recording the previous spec again (escrow and mesh)"):
            csp.escrow.update_spec(job_id, spec_hash(before), sender=csp.address)
            csp.submit(via, job_id, before, valid_for_s)
        _emit(ctx, out)
        raise UpdateRolledBack(job_id, target, revision_of(before))
    _emit(ctx, out)
    if outcome == "timeout":
        raise UpdateTimedOut(job_id, target, timeout_s)


@job.command("scale")
@click.argument("job_id", type=click.IntRange(1))
@click.argument("replicas", type=click.IntRange(1, 64))
@via_option
@_with_csp_options
@_with_chain_options
@click.pass_context
def scale(ctx: click.Context, job_id: int, replicas: int, via: str, keystore: Path, password_file: Path | None,
          deployment: Path, valid_for_s: int, rpc: str, wait: bool, timeout_s: float) -> None:
    """Run JOB_ID with REPLICAS replicas: a scale up tops the escrow up for the extra replicas over
    the epochs left; a scale down stops the replicas above REPLICAS and returns their share of the
    epochs left (pay stops from the next epoch). Exit 14 if it did not settle within --timeout-s."""
    current = job_view(via, job_id)
    if current["stopped"] or current.get("spec") is None:
        raise MeshError(f"job {job_id} is stopped: deploy it instead")
    spec = parse_spec_json({**current["spec"], "replicas": replicas})
    csp = _Csp(keystore, password_file, rpc, deployment)
    funded = csp.own_active_job(job_id)
    if replicas == funded.replicas:
        raise click.BadParameter(f"job {job_id} already runs {replicas} replicas", param_hint="REPLICAS")
    console = _console(ctx)
    pull, _, _ = csp.escrow.quote_scale(job_id, replicas)
    if pull:  # the most it can cost: an epoch that ends before the transaction lands only lowers it
        with console.status(f"approving {pull} token units"):
            TokenClient(csp.chain, funded.token).approve(csp.escrow.address, pull, sender=csp.address)
    with console.status(f"scaling job {job_id} from {funded.replicas} to {replicas} replicas in the escrow"):
        receipt = csp.escrow.scale_job(job_id, replicas, spec_hash(spec), sender=csp.address)
    # what the escrow did, from its event (the quote is as of the block before)
    scaled = next(e.args for e in csp.escrow.events(receipt) if e.name == "JobScaled")
    answer = csp.submit(via, job_id, spec, valid_for_s)
    out: dict[str, Any] = {"job_id": job_id, "replicas": replicas, "previous": funded.replicas,
                           "pulled": int(scaled["pulled"]), "refunded": int(scaled["refunded"]),
                           "from_epoch": int(scaled["fromEpoch"]), "nonce": answer.get("nonce"),
                           "outcome": "submitted"}
    if wait:
        outcome, _ = _follow(via, job_id, revision_of(spec), replicas, timeout_s, console, "scale")
        out["outcome"] = "scaled" if outcome == "done" else outcome
    _emit(ctx, out)
    if out["outcome"] == "timeout":
        raise UpdateTimedOut(job_id, revision_of(spec), timeout_s)
