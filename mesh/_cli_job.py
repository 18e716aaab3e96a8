"""A CSP's commands: ``job fund`` (create and fund a job in the escrow for a spec file),
``deploy`` and ``job stop`` (sign a submission or a stop and hand it to any node's API),
``job status`` (the job as any node sees it) and ``job logs`` (its replicas' logs, through any node).

``--via`` names the node: its HTTP API URL, or its libp2p multiaddr (``/ip4/.../tcp/.../p2p/<peer
id>``), which needs no open API port on the node, and is encrypted and authenticated (Noise checks
the node holds that peer id's key). Over libp2p the CLI is a short-lived client with a throwaway
key speaking ``/deedmesh/api/1``, which the node answers through the same routes as HTTP.

``job fund``: the spec is validated first (a bad field is named with its line and column before anything is
spent); then one approve and one ``createJob`` transaction, signed locally with the CSP's key
from its keystore (never sent to the chain node). The job is funded for the spec's hash and
replica count, which is what every node later checks a submission against (``_submission``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from eth_account import Account
from rich.console import Console
from rich.table import Table

from contracts import Chain, Deployment, Epoch, JobEscrowClient, JobParams, SettlementPolicy, TokenUnits

from ._cli_client import call_node, via_option
from ._errors import MeshError, RequestRefused, SubmissionRefused
from ._identity import NodeIdentity, read_keystore, resolve_password
from ._jobspec import JobSpec, spec_hash
from ._jobspec_load import load_spec
from ._submission import MAX_TAIL, MAX_VALIDITY_S, STOP, sign_log_request, sign_submission

LOG_REQUEST_VALID_S = 120  # used at once; the slack covers a clock behind the node's


@click.group()
def job() -> None:
    """Fund and manage jobs (as a CSP)."""


@job.command("fund")
@click.argument("spec_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--key", "keystore", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The CSP's keystore file (deedmesh keys new).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt).")
@click.option("--rpc", required=True, help="JSON-RPC URL of the chain holding the escrow.")
@click.option("--deployment", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Deployment record with the contract addresses (deedmesh chain deploy --out).")
@click.option("--price", type=click.IntRange(1), required=True,
              help="Pay per node per epoch, in the payment token's smallest units.")
@click.option("--epochs", type=click.IntRange(1, 10_000), required=True, help="How many epochs to fund.")
@click.option("--start-epoch", type=click.IntRange(0), help="First funded epoch.  [default: the next one]")
@click.option("--release-threshold", type=click.IntRange(0, 255), default=SettlementPolicy.release_threshold,
              show_default=True, help="Availability (0-255) at or above which a node's pay is released.")
@click.option("--burn-floor", type=click.IntRange(0, 255), default=SettlementPolicy.burn_floor, show_default=True,
              help="Availability below which a node's pay is burned (0: never burn, only withhold).")
@click.option("--protocol-burn-bps", type=click.IntRange(0, 10_000), default=SettlementPolicy.protocol_burn_bps,
              show_default=True, help="Share of every release that is burned, in basis points.")
@click.pass_context
def fund(ctx: click.Context, spec_file: Path, keystore: Path, password_file: Path | None, rpc: str,
         deployment: Path, price: int, epochs: int, start_epoch: int | None, release_threshold: int,
         burn_floor: int, protocol_burn_bps: int) -> None:
    """Create and fund a job for SPEC_FILE (approve + createJob); print its id.

    The deposit is price x replicas x epochs, taken from the CSP's token balance.
    """
    spec = load_spec(spec_file)
    if burn_floor > release_threshold:
        raise click.BadParameter("must not exceed --release-threshold", param_hint="--burn-floor")
    policy = SettlementPolicy(release_threshold, burn_floor, protocol_burn_bps)
    csp = Account.from_key(_csp_key(keystore, password_file).private_key)
    as_json = bool(ctx.find_root().params.get("json_output"))
    console = Console(stderr=True, quiet=as_json or not sys.stderr.isatty())
    with console.status("connecting to the chain"):
        chain = Chain.connect(rpc)
        record = Deployment.load(deployment)
        record.check_chain(chain)
        chain.add_signer(csp)
        escrow, token = record.escrow(chain), record.payment_token(chain)
        params = JobParams(spec_hash=spec_hash(spec), token=token.address, replicas=spec.replicas, epochs=epochs,
                           start_epoch=Epoch(next_epoch(chain, escrow) if start_epoch is None else start_epoch),
                           price_per_node_epoch=TokenUnits(price), policy=policy)
    with console.status(f"approving {params.deposit} token units"):
        token.approve(escrow.address, params.deposit, sender=csp.address)
    with console.status("creating the job"):
        job_id = escrow.create_job(params, sender=csp.address)
    out = {"job_id": job_id, "spec_hash": "0x" + params.spec_hash.hex(), "replicas": params.replicas,
           "epochs": epochs, "start_epoch": params.start_epoch, "deposit": params.deposit, "csp": csp.address}
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k:12} {v}")


def next_epoch(chain: Chain, escrow: JobEscrowClient) -> Epoch:
    """The epoch after the current one, so a block mined across an epoch boundary does not find a
    job's start in the past. "Now" is the later of the latest block's time and this machine's: a
    quiet dev chain that mines on demand may hold an old block, which would name an epoch long gone."""
    genesis, seconds, _ = escrow.epoch_clock()
    return Epoch(max(0, max(chain.now(), int(time.time())) - genesis) // seconds + 1)


def _csp_key(keystore: Path, password_file: Path | None) -> NodeIdentity:
    password = resolve_password(password_file=password_file)
    if password is None:
        password = click.prompt("keystore password", hide_input=True, err=True)
    return read_keystore(keystore, password)


def _submit(ctx: click.Context, via: str, keystore: Path, password_file: Path | None, deployment: Path,
            job_id: int, spec: JobSpec | None, valid_for_s: int) -> None:
    """Sign and submit (``deploy_spec``), and print the node's answer."""
    record = Deployment.load(deployment)
    key = _csp_key(keystore, password_file)
    answer = deploy_spec(via, key.private_key, record, job_id, spec, valid_for_s)
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps(answer))
    else:
        for k, v in answer.items():
            click.echo(f"{k:12} {v}")


def deploy_spec(via: str, csp_key: bytes, record: Deployment, job_id: int, spec: JobSpec | None,
                valid_for_s: int = 600) -> dict[str, Any]:
    """Sign ``spec``'s submission for the funded ``job_id`` (None: a stop) with the CSP's key and hand
    it to the node at ``via`` (blocking). The nonce is the clock in ms, so a later action always
    outranks an earlier one. ``SubmissionRefused`` if the node refuses it."""
    sub = sign_submission(csp_key, record.chain_id, record.job_escrow, job_id,
                          STOP if spec is None else spec_hash(spec), time.time_ns() // 1_000_000,
                          int(time.time()) + valid_for_s)
    return submit(via, {"submission": sub.model_dump(), "spec": None if spec is None else spec.model_dump(mode="json")})


def submit(via: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a signed submission to the node at ``via``; ``SubmissionRefused`` if it refuses."""
    status, answer = call_node(via, "POST", "/jobs", body)
    if status != 202 or not isinstance(answer, dict):
        refusal = answer if isinstance(answer, dict) else {}
        raise SubmissionRefused(via, status, refusal.get("error", "?"), refusal.get("message", ""))
    return answer


EVENTS_SHOWN = 10  # per job, in the table view (--json gives all the node keeps)
_csp_options = [
    click.option("--key", "keystore", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
                 help="The CSP's keystore file."),
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt)."),
    click.option("--deployment", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
                 help="Deployment record: the chain id and escrow the submission is signed for."),
    click.option("--valid-for-s", type=click.IntRange(1, MAX_VALIDITY_S), default=600, show_default=True,
                 help="How long the signed submission stays valid."),
]


def _with_csp_options(fn: Any) -> Any:
    for option in reversed(_csp_options):
        fn = option(fn)
    return fn


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--job", "job_id", type=click.IntRange(1), required=True, help="The funded job's id (job fund).")
@via_option
@_with_csp_options
@click.pass_context
def deploy(ctx: click.Context, spec_file: Path, job_id: int, via: str, keystore: Path, password_file: Path | None,
           deployment: Path, valid_for_s: int) -> None:
    """Sign SPEC_FILE's submission for a funded job and hand it to any node, which checks it against
    the escrow and relays it to the mesh. Exit 11 if the node refuses it (the reason is printed)."""
    _submit(ctx, via, keystore, password_file, deployment, job_id, load_spec(spec_file), valid_for_s)


@job.command("stop")
@click.argument("job_id", type=click.IntRange(1))
@via_option
@_with_csp_options
@click.pass_context
def stop(ctx: click.Context, job_id: int, via: str, keystore: Path, password_file: Path | None, deployment: Path,
         valid_for_s: int) -> None:
    """Sign a stop of JOB_ID and hand it to any node: every replica is released everywhere."""
    _submit(ctx, via, keystore, password_file, deployment, job_id, None, valid_for_s)


@job.command("status")
@click.argument("job_id", type=click.IntRange(1), required=False)
@via_option
@click.pass_context
def status(ctx: click.Context, job_id: int | None, via: str) -> None:
    """Jobs as the node at --via sees them (all, or JOB_ID): the CSP's newest action and the claims."""
    code, jobs = call_node(via, "GET", "/jobs")
    if code != 200 or not isinstance(jobs, list):
        raise MeshError(f"{via} does not look like a deedmesh node API ({code})")
    jobs = [j for j in jobs if job_id is None or j["job_id"] == job_id]
    if job_id is not None and not jobs:
        raise MeshError(f"{via} knows no job {job_id}")
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps(jobs, indent=2))
        return
    table = Table("job", "name", "kind", "job state", "replica", "node", "replica state", "restarts", "version/result",
                  "generation", "lease left", "ports")
    now_ms = time.time_ns() // 1_000_000
    for j in jobs:
        state = "stopped" if j["stopped"] else "submitted"
        rows = j["claims"] or [{"replica": "-", "node": "-", "generation": "-", "lease_until_ms": None,
                                "state": "unplaced", "restarts": "-"}]
        # the holder asked shows where it serves its replica (container port -> its port)
        for c in rows:
            left = "-" if c["lease_until_ms"] is None else f"{(c['lease_until_ms'] - now_ms) / 1000:.0f} s"
            table.add_row(str(j["job_id"]), j["name"] or "-", j["kind"] or "-", state, str(c["replica"]),
                          c["node"], c["state"], str(c["restarts"]), _version(c), str(c["generation"]), left,
                          " ".join(f"{k}→{v}" for k, v in (c.get("ports") or {}).items()) or "-")
    console = Console()
    console.print(table)
    for j in jobs:  # the newest events, as the node asked saw them
        if j.get("events"):
            console.print(f"recent events of job {j['job_id']} (as {via} saw them):")
            for e in j["events"][-EVENTS_SHOWN:]:
                when = time.strftime("%H:%M:%S", time.localtime(e["at_ms"] / 1000))
                replica = "" if e["replica"] is None else f" replica {e['replica']}"
                where = "" if e["node"] is None else f" on {e['node']}"
                console.print(f"  {when} {e['what']}{replica}{where}: {e['detail']}", highlight=False)


@job.command("logs")
@click.argument("job_id", type=click.IntRange(1))
@via_option
@click.option("--key", "keystore", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The CSP's keystore file: only the job's CSP may read its logs.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt).")
@click.option("--deployment", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Deployment record: the chain id and escrow the request is signed for.  "
                   "[default: the escrow the node at --via names]")
@click.option("--replica", type=click.IntRange(0, 63), help="One replica.  [default: every replica]")
@click.option("--tail", type=click.IntRange(1, MAX_TAIL), default=100, show_default=True,
              help="How many of the newest lines of each replica's log.")
@click.pass_context
def logs(ctx: click.Context, job_id: int, via: str, keystore: Path, password_file: Path | None,
         deployment: Path | None, replica: int | None, tail: int) -> None:
    """Print JOB_ID's container logs through any node: it reads the replicas it runs and asks the
    nodes that run the others. The request is signed with the CSP's key and valid for two minutes.
    Exit 12 if the node refuses, or if some replica's log could not be read (the others are printed)."""
    if deployment is not None:
        record = Deployment.load(deployment)
        chain_id, escrow = record.chain_id, record.job_escrow
    else:
        code, identity = call_node(via, "GET", "/identity")
        named = identity.get("escrow") if code == 200 and isinstance(identity, dict) else None
        if not isinstance(named, dict):
            raise MeshError(f"{via} names no escrow (it runs without one): pass --deployment")
        chain_id, escrow = int(named["chain_id"]), str(named["address"])
    key = _csp_key(keystore, password_file)
    signed = sign_log_request(key.private_key, chain_id, escrow, job_id, replica, tail,
                              int(time.time()) + LOG_REQUEST_VALID_S)
    code, answer = call_node(via, "POST", f"/jobs/{job_id}/logs", signed.model_dump())
    if code != 200 or not isinstance(answer, dict):
        refusal = answer if isinstance(answer, dict) else {}
        raise RequestRefused(via, code, refusal.get("error", "?"), refusal.get("message", ""))
    replicas = answer.get("replicas", [])
    failed = [r for r in replicas if "error" in r]
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps(answer))
    else:
        for r in replicas:
            if "error" in r:
                click.secho(f"replica {r['replica']} on {r['node']}: {r['status']} {r['error']}: {r['message']}",
                            fg="red", err=True)
                continue
            if len(replicas) > 1:
                click.echo(f"==> replica {r['replica']} on {r['node']} <==")
            click.echo(r["logs"], nl=not r["logs"].endswith("\n") and bool(r["logs"]))
            if r["truncated"]:
                click.echo(f"(replica {r['replica']}: older lines cut to fit the answer)", err=True)
    if failed:
        ctx.exit(12)


def _version(replica: dict[str, Any]) -> str:
    """A WAR replica's serving commit and one whose rollout failed, an updated job's spec revision
    and one it failed to reach, or a ChainDist run's result digest ("-" when there is none)."""
    if digest := replica.get("result_digest"):
        return f"result {digest[:16]}…"
    parts = []
    if serving := replica.get("version"):
        failed = replica.get("failed_version")
        parts.append(serving + (f" ({failed} failed)" if failed else ""))
    if revision := replica.get("revision"):
        failed = replica.get("failed_revision")
        parts.append(f"rev {revision}" + (f" ({failed} failed)" if failed else ""))
    return " ".join(parts) or "-"
