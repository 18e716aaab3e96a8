"""``deedmesh job fund``: a CSP creates and funds a job in the escrow for a spec file.

The spec is validated first (a bad field is named with its line and column before anything is
spent); then one approve and one ``createJob`` transaction, signed locally with the CSP's key
from its keystore (never sent to the chain node). The job is funded for the spec's hash and
replica count, which is what every node later checks a submission against (``_submission``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from eth_account import Account
from rich.console import Console

from contracts import Chain, Deployment, Epoch, JobParams, SettlementPolicy, TokenUnits

from ._identity import read_keystore, resolve_password
from ._jobspec import spec_hash
from ._jobspec_load import load_spec


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
    password = resolve_password(password_file=password_file)
    if password is None:
        password = click.prompt("keystore password", hide_input=True, err=True)
    csp = Account.from_key(read_keystore(keystore, password).private_key)
    as_json = bool(ctx.find_root().params.get("json_output"))
    console = Console(stderr=True, quiet=as_json or not sys.stderr.isatty())
    with console.status("connecting to the chain"):
        chain = Chain.connect(rpc)
        record = Deployment.load(deployment)
        record.check_chain(chain)
        chain.add_signer(csp)
        escrow, token = record.escrow(chain), record.payment_token(chain)
        params = JobParams(spec_hash=spec_hash(spec), token=token.address, replicas=spec.replicas, epochs=epochs,
                           start_epoch=Epoch(escrow.next_epoch() if start_epoch is None else start_epoch),
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
