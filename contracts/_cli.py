"""``deedmesh chain ...``: deploy the contract set and run a local anvil node."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._anvil import Anvil
from ._chain import EMBEDDED, Chain
from ._cli_admin import ADMIN_COMMANDS
from ._deploy import DeployConfig, deploy


@click.group()
def chain() -> None:
    """Deploy the contracts and run local chains; govern and bootstrap a deployment."""


for _command in ADMIN_COMMANDS:  # licenses, CSPs, dev tokens and gas, a job's accounts (_cli_admin)
    chain.add_command(_command)


@chain.command("deploy")
@click.option("--rpc", default=EMBEDDED, show_default=True,
              help="JSON-RPC URL of the chain, or 'eth-tester' for a throwaway embedded chain.")
@click.option("--preset", type=click.Choice(["devnet", "production"]), default="devnet", show_default=True,
              help="Epoch length, grace, relink cooldown, threshold and mock token (see DeployConfig).")
@click.option("--oracle", "oracles", multiple=True, required=True, help="An oracle address (repeat for each).")
@click.option("--threshold", type=int, help="Oracle signatures needed (default: the preset's).")
@click.option("--attester", required=True, help="Address that signs CSP admissions.")
@click.option("--admin-index", type=int, default=0, show_default=True,
              help="Which of the node's unlocked accounts deploys and governs.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the deployment record here.")
@click.pass_context
def deploy_command(ctx: click.Context, rpc: str, preset: str, oracles: tuple[str, ...], threshold: int | None,
                   attester: str, admin_index: int, out: Path | None) -> None:
    """Deploy LicenseRegistry, OracleRegistry, JobEscrow (and the mock stablecoin on devnet)."""
    config = DeployConfig.devnet() if preset == "devnet" else DeployConfig.production()
    if threshold is not None:
        config = DeployConfig(config.epoch_seconds, config.close_grace_epochs, config.relink_cooldown_s,
                              threshold, config.mock_token)
    if config.oracle_threshold > len(oracles):
        raise click.UsageError(f"threshold {config.oracle_threshold} needs at least that many --oracle addresses")
    c = Chain.connect(rpc)
    accounts = c.accounts
    if admin_index >= len(accounts):
        raise click.UsageError(f"the chain has {len(accounts)} unlocked accounts; --admin-index {admin_index}")
    dep = deploy(c, config, admin=accounts[admin_index], oracles=list(oracles), attester=attester)
    if out:
        out.write_text(dep.to_json() + "\n")
    if ctx.find_root().params.get("json_output"):
        click.echo(dep.to_json())
    else:
        for field, value in json.loads(dep.to_json()).items():
            click.echo(f"{field:18} {value}")


@chain.command("anvil")
@click.option("--port", type=int, default=8545, show_default=True, help="Port on 127.0.0.1.")
def anvil_command(port: int) -> None:
    """Run the pinned anvil on 127.0.0.1 until interrupted (Ctrl-C)."""
    with Anvil(port=port) as node:
        click.echo(f"anvil listening on {node.url} (hardfork pinned); Ctrl-C stops it")
        try:
            assert node.process is not None
            node.process.wait()
        except KeyboardInterrupt:
            click.echo("stopping anvil")
