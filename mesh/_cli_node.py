"""``deedmesh node run`` (one node process) and ``deedmesh status --via URL`` (the mesh as a node sees it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ._errors import MeshError
from ._identity import read_keystore, resolve_password
from ._process import NodeSettings, run


@click.group()
def node() -> None:
    """Run a deedmesh node."""


@node.command("run")
@click.option("--key", "keystore", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="The node's keystore file (deedmesh keys new).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD).")
@click.option("--rpc", required=True, help="JSON-RPC URL of the chain holding the license registry.")
@click.option("--deployment", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Deployment record (deedmesh chain deploy --out).")
@click.option("--listen", default="/ip4/127.0.0.1/tcp/0", show_default=True, help="libp2p listen multiaddr.")
@click.option("--bootstrap", multiple=True, help="A peer's multiaddr with /p2p/<id> (repeat).")
@click.option("--api-port", type=click.IntRange(1, 65535), default=8700, show_default=True,
              help="HTTP API port on 127.0.0.1.")
@click.option("--tag", "tags", multiple=True, help="A capacity tag placement constraints can match (repeat).")
@click.option("--operator-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Operator API token (created 0600 if missing; default: <keystore>.token).")
def run_command(keystore: Path, password_file: Path | None, rpc: str, deployment: Path, listen: str,
                bootstrap: tuple[str, ...], api_port: int, tags: tuple[str, ...],
                operator_token_file: Path | None) -> None:
    """Join the mesh: gossip signed heartbeats and capacity, keep the mesh view, serve the API.

    Prints one JSON line {"event": "ready", "api": ..., "addrs": [...]} when up.
    """
    password = resolve_password(password_file=password_file)
    if password is None:
        password = click.prompt("keystore password", hide_input=True, err=True)
    identity = read_keystore(keystore, password)
    settings = NodeSettings(rpc=rpc, deployment=deployment, listen=listen, bootstrap=bootstrap, api_port=api_port,
                            tags=tags)
    run(identity, settings, operator_token_file or keystore.with_suffix(".token"))


def fetch(url: str, timeout_s: float = 5.0) -> object:
    """GET a node API URL as JSON; an unreachable node is a ``MeshError``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MeshError(f"node API {url} is unreachable: {exc}") from exc


@click.command()
@click.option("--via", required=True, help="Any node's API URL, e.g. http://127.0.0.1:8700.")
@click.pass_context
def status(ctx: click.Context, via: str) -> None:
    """Show the mesh as one node sees it: peers, their state and capacity."""
    base = via.rstrip("/")
    identity, peers = fetch(f"{base}/identity"), fetch(f"{base}/peers")
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps({"node": identity, "peers": peers}, indent=2))
        return
    if not isinstance(identity, dict) or not isinstance(peers, list):
        raise MeshError(f"{base} does not look like a deedmesh node API")
    table = Table("peer", "state", "last seen", "cpu free/total", "memory MB free/total", "tags",
                  title=f"mesh seen by {identity['address']}")
    for p in peers:
        cap = p["capacity"]
        seen = "-" if p["last_seen_ms_ago"] is None else f"{p['last_seen_ms_ago'] / 1000:.1f} s ago"
        cpu = f"{cap['free']['cpu_millis']}/{cap['total']['cpu_millis']}" if cap else "-"
        mem = f"{cap['free']['memory_mb']}/{cap['total']['memory_mb']}" if cap else "-"
        table.add_row(p["address"], p["state"], seen, cpu, mem, ",".join(cap["tags"]) if cap else "")
    Console().print(table)
