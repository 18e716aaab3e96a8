"""``deedmesh devnet``: a whole deployment on one machine, on the embedded defaults (``_devnet``):
the chain and its contracts, licensed nodes and registered oracles on libp2p, a CSP's job, every
epoch of it settled by the oracles, the pay claimed, the refund taken, burns executed, and the
audit over it all. Exit 0 only if the audit balances.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from eth_account import Account
from rich.console import Console
from rich.live import Live
from rich.table import Table

from contracts import EMBEDDED, Anvil, Chain, ChainError

from ._devnet import DevnetShape, run_devnet
from ._devnet_view import LiveView


@contextmanager
def _chain_for(chain_kind: str, rpc: str | None) -> Iterator[Chain]:
    if rpc:
        yield Chain.connect(rpc)
    elif chain_kind == "anvil":
        with Anvil() as node:
            yield Chain.connect(node.url)
    else:
        yield Chain.connect(EMBEDDED)


@click.command()
@click.option("--chain", "chain_kind", type=click.Choice(["embedded", "anvil"]), default="embedded",
              show_default=True, help="Embedded eth-tester, or an anvil started (and stopped) here.")
@click.option("--rpc", help="Use this JSON-RPC URL instead (a dev chain with unlocked, funded accounts).")
@click.option("--nodes", type=click.IntRange(1, 100), default=5, show_default=True, help="Licensed nodes.")
@click.option("--oracles", type=click.IntRange(1, 50), default=4, show_default=True, help="Registered oracles.")
@click.option("--threshold", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Oracle signatures a report needs.")
@click.option("--epochs", type=click.IntRange(1, 100), default=2, show_default=True,
              help="Epochs the CSP's job is funded for; the devnet ends once they are all settled.")
@click.option("--epoch-seconds", type=click.IntRange(4, 3600), default=10, show_default=True,
              help="Epoch length on chain.")
@click.option("--kill/--no-kill", default=True, show_default=True,
              help="Stop a node that holds a replica a quarter into the jobs' first epoch (3 nodes or more): "
                   "its replicas move; its share is withheld if it held them long without beating, and the "
                   "unserved slot time is refunded.")
@click.option("--processes", is_flag=True,
              help="Run every node and oracle as its own OS process (deedmesh node run / oracle run), against "
                   "anvil (started here) unless --rpc names a chain.")
@click.option("--keep", is_flag=True,
              help="After the audit, leave the nodes and oracles running (the job too) and print each node's "
                   "API; Ctrl-C stops the job and everything else.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the work directory here (deployment record, node files, oracle reports); "
                   "default: a temporary one, removed at the end.")
@click.pass_context
def devnet(ctx: click.Context, chain_kind: str, rpc: str | None, nodes: int, oracles: int, threshold: int,
           epochs: int, epoch_seconds: int, kill: bool, processes: bool, keep: bool,
           directory: Path | None) -> None:
    """Bring up a complete deedmesh deployment on this machine and settle a job's epochs."""
    if threshold > oracles:
        raise click.UsageError(f"--threshold {threshold} is more than --oracles {oracles}")
    json_output = bool(ctx.find_root().params.get("json_output"))
    console = Console(stderr=True, quiet=json_output)
    shape = DevnetShape(nodes=nodes, oracles=oracles, threshold=threshold, epochs=epochs, epoch_seconds=epoch_seconds,
                        kill=kill)
    if processes and chain_kind == "embedded" and not rpc:
        chain_kind = "anvil"  # processes need a chain they can reach: the embedded one lives in this process
    with _chain_for(chain_kind, rpc) as chain, _work_dir(directory) as work:
        if len(chain.accounts) < 3:  # admin, CSP, and at least one operator (operators own several licenses)
            raise ChainError(f"{chain.url} has {len(chain.accounts)} unlocked accounts; a devnet needs 3")
        view = LiveView()

        def kept(partial: dict[str, Any]) -> None:
            if json_output:
                click.echo(json.dumps({"event": "kept", "api": partial["api"], "audit": partial["audit"]}), err=True)
            view.keep(partial["api"])

        with Live(view, console=console, refresh_per_second=4, transient=True):
            summary = run_devnet(chain, shape, Account.create, work, progress=view.progress, show=view.show,
                                 keep=kept if keep else None, processes=processes)
    if json_output:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(Console(), summary)
    if not (summary["conservation"]["balanced"] and summary["audit"]["balanced"]):
        ctx.exit(1)


@contextmanager
def _work_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="deedmesh-devnet-") as tmp:
        yield Path(tmp)


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    console.print(f"[bold]deedmesh devnet[/] on {s['chain']['backend']} (chain id {s['chain']['chain_id']}), "
                  f"{s['deployment']['epoch_seconds']}-second epochs")
    nodes = Table("license", "node", "owner", "API", title="nodes")
    for n in s["nodes"]:
        nodes.add_row(str(n["license_id"]), n["node"], n["owner"], n["api"])
    console.print(nodes)
    console.print(f"oracles (threshold {s['oracle_threshold']}): " + ", ".join(s["oracles"]))
    if s["engine"]:
        console.print(f"[yellow]{s['engine']}[/]")
    if s["killed"]:
        k = s["killed"]
        moved = (f"moved to {k['moved_to']} in {k['reallocation_s']} s" if "moved_to" in k
                 else "[red]not moved before the end[/]")
        console.print(f"killed node {k['node']} (license {k['license_id']}) in epoch {k['epoch']}: "
                      f"replica {k['replica']} {moved}; {s['reallocations']} reallocation(s) seen by the mesh")
    epochs = Table("epoch", "root on chain", title="epochs settled by the oracles")
    for epoch, root in s["settled"]:
        epochs.add_row(str(epoch), root if int(root, 16) else f"{root[:18]}… (no node pay yet)")
    console.print(epochs)
    if s["no_quorum"] or s["passed_over"]:
        console.print(f"epochs with no report: {', '.join(map(str, sorted({*s['no_quorum'], *s['passed_over']})))} "
                      "(no quorum, or a later epoch landed first: oracles abstain from an epoch they "
                      "came up in; a job epoch among them would stay locked)")
    money = Table("job", "kind", "name", "replicas", "epochs", "deposited", "released", "refunded", "burned",
                  "locked", "result", title="the jobs' money")
    for j in s["jobs"]:
        money.add_row(str(j["job_id"]), j["kind"], j["spec"], str(j["replicas"]),
                      f"{j['start_epoch']}-{j['start_epoch'] + j['epochs'] - 1}",
                      *(str(j[k]) for k in ("deposited", "released", "refunded", "burned", "locked")),
                      (j["result_digest"] or "-")[:18])
    console.print(money)
    paid = sum(p["amount"] for p in s["claimed"]["paid"])
    console.print(f"claimed for the node owners: {paid}; refund taken by the CSP: "
                  f"{sum(d['amount'] for d in s['refunded']['moved'])}; burned (by the oracles as each report "
                  f"landed, and by the devnet's burn call): {sum(j['burned'] for j in s['jobs'])}")
    console.print(f"the jobs' first epoch was on chain {s['first_job_epoch_settled_s']} s after the start, "
                  f"the last one {s['last_job_epoch_settled_s']} s after")
    a = s["audit"]
    verdict = "[green]balanced[/]" if a["balanced"] and s["conservation"]["balanced"] else "[red]NOT balanced[/]"
    console.print(f"audit over the chain and the oracles' reports: {verdict}")
    for line in a["discrepancies"]:
        console.print(f"  [red]{line}[/]")
