"""``deedmesh oracle run``: run a registered oracle (``_process``)."""

from __future__ import annotations

from pathlib import Path

import click

from mesh import ParticipantSettings, read_keystore, resolve_password

from ._process import OracleSettings, run
from ._service import OracleConfig

DEFAULTS = OracleConfig()


@click.group()
def oracle() -> None:
    """Run an oracle (its key must be in the deployment's oracle registry)."""


@oracle.command("run")
@click.option("--key", "keystore", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The oracle's keystore file (deedmesh keys new); its address must be a registered oracle.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt).")
@click.option("--rpc", required=True, help="JSON-RPC URL of the chain (the oracle pays gas for its submissions).")
@click.option("--deployment", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Deployment record with the contract addresses (deedmesh chain deploy --out).")
@click.option("--listen", default=ParticipantSettings.listen, show_default=True, help="libp2p listen multiaddr.")
@click.option("--bootstrap", multiple=True, help="A node's multiaddr with /p2p/<id> (repeat).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Work directory: watch logs and settled reports.  [default: <keystore>.oracle]")
@click.option("--settle-s", type=click.FloatRange(0, 3600), default=DEFAULTS.settle_s, show_default=True,
              help="After an epoch ends, how long to wait for the watch log's last samples before observing it.")
@click.option("--round-s", type=click.FloatRange(1, 86_400), default=DEFAULTS.round_s, show_default=True,
              help="A leader's time to land the root before the next oracle in line takes over.")
@click.option("--heartbeat-interval-ms", type=click.IntRange(250, 60_000),
              default=ParticipantSettings.heartbeat_interval_ms, show_default=True,
              help="This participant's own heartbeat interval (as the nodes').")
@click.option("--license-refresh-s", type=click.FloatRange(0.5, 3600), default=ParticipantSettings.license_refresh_s,
              show_default=True, help="How often licenses and the oracle set are read from the chain.")
def run_command(keystore: Path, password_file: Path | None, rpc: str, deployment: Path, listen: str,
                bootstrap: tuple[str, ...], directory: Path | None, settle_s: float, round_s: float,
                heartbeat_interval_ms: int, license_refresh_s: float) -> None:
    """Watch the mesh, agree on each epoch's report with the other oracles, land its roots on
    chain, and keep every settled report (served to anyone over
    /deedmesh/oracle/1: nodes claim with them, auditors check them).

    Prints one JSON line {"event": "ready", "addrs": [...], ...} when up, then one line per epoch:
    {"event": "settled", "epoch": ..., "root": ...}, {"event": "no-quorum", ...} (given up) or
    {"event": "passed-over", ...} (a later epoch landed first: no report of its own).
    """
    password = resolve_password(password_file=password_file)
    if password is None:
        password = click.prompt("keystore password", hide_input=True, err=True)
    identity = read_keystore(keystore, password)
    participant = ParticipantSettings(listen=listen, bootstrap=bootstrap, heartbeat_interval_ms=heartbeat_interval_ms,
                                      license_refresh_s=license_refresh_s)
    config = OracleConfig(settle_s=settle_s, round_s=round_s, request_s=min(DEFAULTS.request_s, round_s / 2),
                          poll_s=DEFAULTS.poll_s)
    run(identity, OracleSettings(rpc=rpc, deployment=deployment, participant=participant, config=config),
        directory or keystore.with_suffix(".oracle"))
