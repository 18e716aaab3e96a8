"""``deedmesh node run`` (one node process) and ``deedmesh status --via NODE`` (the mesh as a node
sees it; NODE is an API URL or a libp2p multiaddr, ``_cli_client``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ._cli_client import get_json, via_option
from ._config import load_config
from ._errors import MeshError
from ._identity import read_keystore, resolve_password
from ._process import NodeSettings, run


@click.group()
def node() -> None:
    """Run a deedmesh node."""


@node.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML file with any of the settings below (flags override it).")
@click.option("--key", "keystore", type=click.Path(dir_okay=False, path_type=Path),
              help="The node's keystore file (deedmesh keys new).  [required]")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt).")
@click.option("--rpc", help="JSON-RPC URL of the chain holding the license registry.  [required]")
@click.option("--deployment", type=click.Path(dir_okay=False, path_type=Path),
              help="Deployment record with the contract addresses (deedmesh chain deploy --out).")
@click.option("--license-registry", metavar="ADDRESS",
              help="The license registry's address, instead of a deployment record.")
@click.option("--listen", help="libp2p listen multiaddr.  [default: /ip4/127.0.0.1/tcp/0]")
@click.option("--bootstrap", multiple=True, help="A peer's multiaddr with /p2p/<id> (repeat).")
@click.option("--api-port", type=click.IntRange(1, 65535), help="HTTP API port on 127.0.0.1.  [default: 8700]")
@click.option("--tag", "tags", multiple=True, help="A capacity tag placement constraints can match (repeat).")
@click.option("--operator-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Operator API token (created 0600 if missing; default: <keystore>.token).")
@click.option("--heartbeat-interval-ms", type=click.IntRange(250, 60_000),
              help="Liveness beat; peers are dead 2.75 intervals after their last beat.  [default: 1000]")
@click.option("--target-peers", type=click.IntRange(0, 64), help="Connections discovery keeps.  [default: 4]")
@click.option("--engine", help="Container engine for CAR replicas: auto (detect; none found: run none), none, "
                               "or a URL (unix:///..., tcp://...).  [default: auto]")
@click.option("--native-war/--no-native-war", default=None,
              help="With no container engine, run WAR replicas as plain processes of this node's user, "
                   "limited by cgroups (or rlimits) but not isolated: only for a dedicated user on a "
                   "dedicated box.  [default: no]")
def run_command(config_file: Path | None, keystore: Path | None, password_file: Path | None, rpc: str | None,
                deployment: Path | None, license_registry: str | None, listen: str | None,
                bootstrap: tuple[str, ...], api_port: int | None,
                tags: tuple[str, ...], operator_token_file: Path | None, heartbeat_interval_ms: int | None,
                target_peers: int | None, engine: str | None, native_war: bool | None) -> None:
    """Join the mesh: sync signed heartbeats and capacity with neighbours, keep the mesh view,
    keep connections to licensed live peers only, serve the API.

    Prints one JSON line {"event": "ready", "api": ..., "addrs": [...]} when up.
    """
    file = load_config(config_file) if config_file else {}

    def pick(flag: object, name: str) -> Any:
        return flag if flag not in (None, ()) else file.get(name)

    keystore_path, rpc_url, record = pick(keystore, "key"), pick(rpc, "rpc"), pick(deployment, "deployment")
    registry = pick(license_registry, "license_registry")
    missing = [flag for flag, v in (("--key", keystore_path), ("--rpc", rpc_url),
                                    ("--deployment or --license-registry", record or registry)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (as a flag or in --config)")
    if record and registry:
        raise click.UsageError("give --deployment or --license-registry, not both")
    for label, path in (("--key", keystore_path), ("--deployment", record)):
        if path and not Path(path).is_file():
            raise click.BadParameter(f"{path} does not exist", param_hint=label)
    secret_file = pick(password_file, "password_file")
    password = resolve_password(password_file=Path(secret_file) if secret_file else None)
    if password is None:
        password = click.prompt("keystore password", hide_input=True, err=True)
    identity = read_keystore(Path(keystore_path), password)
    optional: dict[str, Any] = {name: value for name, value in (
        ("listen", pick(listen, "listen")), ("bootstrap", tuple(pick(bootstrap, "bootstrap") or ())),
        ("api_port", pick(api_port, "api_port")), ("tags", tuple(pick(tags, "tags") or ())),
        ("heartbeat_interval_ms", pick(heartbeat_interval_ms, "heartbeat_interval_ms")),
        ("target_peers", pick(target_peers, "target_peers")), ("license_refresh_s", file.get("license_refresh_s")),
        ("engine", pick(engine, "engine")), ("native_war", pick(native_war, "native_war")),
    ) if value is not None}
    settings = NodeSettings(rpc=rpc_url, deployment=Path(record) if record else None, license_registry=registry,
                            **optional)
    token_file = pick(operator_token_file, "operator_token_file")
    run(identity, settings, Path(token_file) if token_file else Path(keystore_path).with_suffix(".token"),
        Path(keystore_path).with_suffix(".nonces.log"),  # the job nonces this node has seen, for restarts
        Path(keystore_path).with_suffix(".work"))  # WAR checkouts, ChainDist inputs and results


@click.command()
@via_option
@click.pass_context
def status(ctx: click.Context, via: str) -> None:
    """Show the mesh as one node sees it: peers, their state and capacity."""
    identity, peers = get_json(via, "/identity"), get_json(via, "/peers")
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps({"node": identity, "peers": peers}, indent=2))
        return
    if not isinstance(identity, dict) or not isinstance(peers, list):
        raise MeshError(f"{via} does not look like a deedmesh node API")
    table = Table("peer", "state", "last seen", "cpu free/total", "memory MB free/total", "tags",
                  title=f"mesh seen by {identity['address']}")
    for p in peers:
        cap = p["capacity"]
        seen = "-" if p["last_seen_ms_ago"] is None else f"{p['last_seen_ms_ago'] / 1000:.1f} s ago"
        cpu = f"{cap['free']['cpu_millis']}/{cap['total']['cpu_millis']}" if cap else "-"
        mem = f"{cap['free']['memory_mb']}/{cap['total']['memory_mb']}" if cap else "-"
        table.add_row(p["address"], p["state"], seen, cpu, mem, ",".join(cap["tags"]) if cap else "")
    Console().print(table)
