"""``deedmesh devnet``: a whole deployment on one machine, on the embedded defaults.

Today it brings up the chain side: a chain (embedded eth-tester, anvil, or a URL), the contracts,
licensed and linked node identities, registered oracles and an admitted, funded CSP; then it
settles one epoch end to end (a job, a quorum-signed report, a claim, a refund and a burn) and
checks conservation. Nodes and oracles as running processes join it as the mesh is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from eth_account import Account
from rich.console import Console
from rich.table import Table

from contracts import EMBEDDED, Anvil, Chain, ChainError, DeployConfig

from ._devnet import DevnetShape, run_devnet


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
@click.pass_context
def devnet(ctx: click.Context, chain_kind: str, rpc: str | None, nodes: int, oracles: int, threshold: int) -> None:
    """Bring up a complete deedmesh deployment on this machine and settle an epoch."""
    if threshold > oracles:
        raise click.UsageError(f"--threshold {threshold} is more than --oracles {oracles}")
    json_output = bool(ctx.find_root().params.get("json_output"))
    console = Console(stderr=True, quiet=json_output)
    shape = DevnetShape(nodes=nodes, oracles=oracles, threshold=threshold)
    with _chain_for(chain_kind, rpc) as chain:
        if len(chain.accounts) < 3:  # admin, CSP, and at least one operator (operators own several licenses)
            raise ChainError(f"{chain.url} has {len(chain.accounts)} unlocked accounts; a devnet needs 3")
        with console.status("devnet") as status:
            summary = run_devnet(chain, shape, DeployConfig.devnet(), Account.create,
                                 progress=lambda step: status.update(step))
    if json_output:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(Console(), summary)
    if not summary["conservation"]["balanced"]:
        ctx.exit(1)


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    console.print(f"[bold]deedmesh devnet[/] on {s['chain']['backend']} (chain id {s['chain']['chain_id']})")
    contracts = Table("contract", "address", title="contracts")
    for name, address in s["contracts"].items():
        contracts.add_row(name, str(address))
    console.print(contracts)
    nodes = Table("license", "node", "owner", "eligible", title="nodes")
    for n in s["nodes"]:
        nodes.add_row(str(n["license_id"]), n["node"], n["owner"], "yes" if n["eligible"] else "no")
    console.print(nodes)
    oracle_table = Table("oracle", title=f"oracles (threshold {s['oracle_threshold']})")
    for o in s["oracles"]:
        oracle_table.add_row(o)
    console.print(oracle_table)
    j = s["job"]
    money = Table("deposited", "released", "refunded", "burned", "locked", title=f"job {j['job_id']} settlement")
    money.add_row(*(str(j[k]) for k in ("deposited", "released", "refunded", "burned", "locked")))
    console.print(money)
    verdict = "[green]balanced[/]" if s["conservation"]["balanced"] else "[red]NOT balanced[/]"
    console.print(f"epoch {s['settled_epoch']} settled with {s['report_signers']} oracle signatures; "
                  f"conservation {verdict}")
