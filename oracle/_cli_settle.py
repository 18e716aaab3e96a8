"""``deedmesh claim``, ``deedmesh refund`` and ``deedmesh burn``: a license owner claims node pay,
a CSP takes its refunds, anyone executes due burns, each in one transaction signed locally with a
keystore key (``_settle`` does the work; this module is the command line).

Output follows the other commands: a table on stdout (or one JSON object per line with
``--json``), progress on stderr. "Nothing to claim" (or refund, or burn) is a success.

Exit codes: 0 done, or nothing was due; 2 usage, including a ``--job`` or ``--license`` that
cannot be settled (unknown; for ``refund``, another CSP's job), checked before anything is sent;
3 chain unreachable, 4 bad deployment record, 5 the escrow reverted (named), 6 transaction failed,
7 other chain error, 8 keystore error; ``claim`` only: 9 no source served the latest settled
epoch's report (every ``--oracle`` unreachable or without it, no such file), 16 every report found
for it was refused because it does not match the root on chain (nothing was sent), 130
``--every`` interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from eth_account import Account
from rich import box
from rich.console import Console
from rich.table import Table

from contracts import Chain, Deployment
from mesh import read_keystore, resolve_password

from ._fetch import SettleError, TargetRefused
from ._settle import ClaimOutcome, DueOutcome, Progress, burn_round, claim_round, refund_round

log = logging.getLogger("deedmesh.settle")

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
_PIPE_WIDTH = 240  # a table's columns side by side, as long as full addresses make them
_sleep: Callable[[float], None] = time.sleep  # replaced by the tests: a fake clock, no waiting


def _options(key_help: str) -> Callable[[Any], Any]:
    """The options every settlement command shares (``key_help``: whose key it is)."""
    options = [
        click.option("--key", "keystore", required=True,
                     type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help=key_help + " It signs the transaction and pays its gas (deedmesh keys new)."),
        click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Keystore password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt)."),
        click.option("--rpc", required=True, metavar="URL", help="JSON-RPC URL of the chain holding the escrow."),
        click.option("--deployment", "deployment_file", required=True,
                     type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Deployment record with the contract addresses (deedmesh chain deploy --out)."),
        click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON on stdout."),
    ]

    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _sources(purpose: str) -> Callable[[Any], Any]:
    """Where the latest settled report comes from (``purpose``: what it is used for)."""
    options = [
        click.option("--oracle", "oracles", multiple=True, metavar="MULTIADDR",
                     help=f"An oracle to fetch the report {purpose} from over libp2p "
                          "(/ip4/.../tcp/.../p2p/<peer id>); repeat for more, asked in turn."),
        click.option("--reports", "report_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
                     help="A directory of settled reports (an oracle's <dir>/reports) or one report file; repeat "
                          "for more. Read before any --oracle is asked."),
        click.option("--timeout-s", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
                     metavar="SECONDS", help="How long one oracle may take to send the report."),
    ]

    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


class _Signer:
    """The key, unlocked once, and a chain connection sending from it (made again after a failure)."""

    def __init__(self, keystore: Path, password_file: Path | None, rpc: str, deployment_file: Path) -> None:
        password = resolve_password(password_file=password_file)
        if password is None:
            password = click.prompt("keystore password", hide_input=True, err=True)
        self.account = Account.from_key(read_keystore(keystore, password).private_key)
        self.rpc = rpc
        self.deployment = Deployment.load(deployment_file)
        self._chain: Chain | None = None

    @property
    def address(self) -> str:
        return str(self.account.address)

    def chain(self) -> Chain:
        if self._chain is None:
            chain = Chain.connect(self.rpc)
            self.deployment.check_chain(chain)
            chain.add_signer(self.account)
            self._chain = chain
        return self._chain

    def forget(self) -> None:
        self._chain = None


def _as_json(ctx: click.Context, local: bool) -> bool:
    return local or bool(ctx.find_root().params.get("json_output"))


@contextmanager
def _progress(as_json: bool) -> Iterator[Progress]:
    console = Console(stderr=True, quiet=as_json or not sys.stderr.isatty())
    with console.status("connecting to the chain") as status:
        yield lambda text: status.update(text)


def _fail(ctx: click.Context, exc: SettleError, as_json: bool) -> NoReturn:
    """As the deedmesh group reports its errors: the error's name and message, then its exit code."""
    if isinstance(exc, TargetRefused):
        raise click.BadParameter(str(exc), param_hint=f"--{exc.kind}") from exc
    if as_json:
        click.echo(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        click.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
    ctx.exit(exc.exit_code)


# ------------------------------------------------------------------ claim


@click.command("claim")
@_options("Keystore of the license owner (any key may send claims: pay always goes to the owner).")
@_sources("to claim against (required)")
@click.option("--license", "licenses", multiple=True, type=click.IntRange(1), metavar="ID",
              help="Claim for this license only; repeat for more.  [default: every license the key owns]")
@click.option("--every", "every_s", type=click.FloatRange(1), metavar="SECONDS",
              help="Claim again every this many seconds until interrupted; a failed round is logged and retried.")
@click.pass_context
def claim_command(ctx: click.Context, keystore: Path, password_file: Path | None, rpc: str, deployment_file: Path,
                  json_output: bool, oracles: tuple[str, ...], report_paths: tuple[Path, ...], timeout_s: float,
                  licenses: tuple[int, ...], every_s: float | None) -> None:
    """Claim the node pay of the latest settled epoch, in one transaction.

    Finds the latest settled epoch on chain, reads its report (from --reports, else from the
    --oracle nodes), and refuses it unless its pay and its job totals hash to the roots the escrow
    holds for that epoch. Then, for every license the key owns (or each --license), claims each job's cumulative
    amount where it exceeds what was claimed: that pays everything earned so far and not yet paid.
    The jobs' totals in the report are applied in the same transaction where the escrow has older
    ones. Pay goes to each license's owner, whoever sends the claim; a --license of another owner is
    claimed for that owner (the table says whose it is). Restricted licenses are left out, with
    the reason (a claim for one would revert the whole transaction).

    Prints job, license, owner, epoch and the amount paid now (token units); "nothing to claim"
    exits 0.

    \b
    Exit codes: 0 claimed, or nothing to claim; 2 usage (an unknown --license);
    3 chain unreachable; 4 bad deployment record; 5 the escrow reverted (named);
    6 transaction failed; 7 other chain error; 8 keystore error; 9 no source
    served the epoch's report (oracles unreachable or without it, no such file);
    16 every report found was refused: it does not match the chain's root
    (nothing was sent); 130 --every was interrupted.
    """
    if not oracles and not report_paths:
        raise click.UsageError("name where the report comes from: --oracle MULTIADDR or --reports DIR_OR_FILE")
    as_json = _as_json(ctx, json_output)
    signer = _Signer(keystore, password_file, rpc, deployment_file)

    def one_round() -> ClaimOutcome:
        with _progress(as_json) as progress:
            return claim_round(signer.chain(), signer.deployment, signer.address, report_paths=report_paths,
                               oracles=oracles, licenses=licenses, timeout_s=timeout_s, progress=progress)

    if every_s is None:
        try:
            _print_claims(one_round(), as_json)
        except SettleError as exc:
            _fail(ctx, exc, as_json)
        return
    rounds = 0
    try:
        while True:
            started = time.monotonic()
            rounds += 1
            try:
                _print_claims(one_round(), as_json)
            except TargetRefused as exc:  # the command line is wrong: every round would fail alike
                _fail(ctx, exc, as_json)
            except Exception as exc:  # a keeper outlives any one failure (a web3 error too): the next round retries
                signer.forget()
                log.warning("claim round %d failed, retrying in %.0f s: %s: %s", rounds, every_s,
                            type(exc).__name__, exc, extra={"round": rounds, "error": type(exc).__name__})
            _sleep(max(0.0, every_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        click.echo(f"stopped after {rounds} rounds", err=True)
        ctx.exit(EXIT_INTERRUPTED)


def _print_claims(outcome: ClaimOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(outcome.as_json()))
        return
    if outcome.paid:
        click.echo(f"epoch {outcome.epoch}: report from {outcome.source}")
        table = _table("job", "license", "owner", "epoch", "paid now")
        for p in outcome.paid:
            table.add_row(str(p.job_id), str(p.license_id), p.owner, str(p.epoch), str(p.amount))
        _print_table(table)
        for token, total in outcome.as_json()["totals"].items():
            click.echo(f"paid {total} units of token {token} in transaction {outcome.tx}")
        for owner in sorted({p.owner for p in outcome.paid if p.owner.lower() != outcome.sender.lower()}):
            licenses = sorted({p.license_id for p in outcome.paid if p.owner == owner})
            click.echo(f"license {', '.join(map(str, licenses))} belongs to {owner}: its pay went to that owner, "
                       f"not to {outcome.sender}")
    else:
        click.echo(outcome.note)
    for s in outcome.skipped:
        job = f"job {s.job_id}, " if s.job_id is not None else ""
        click.echo(f"not claimed: {job}license {s.license_id}: {s.reason}")


def _table(*columns: str) -> Table:
    """Rows of full addresses: no vertical rules, and a column too narrow folds, never truncates."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _print_table(table: Table) -> None:
    console = Console()
    if not console.is_terminal:  # a pipe or a file has no width to fit: rows stay whole
        console = Console(width=_PIPE_WIDTH)
    console.print(table)


# ------------------------------------------------------------------ refund and burn


@click.command("refund")
@_options("Keystore of the CSP whose refunds to take.")
@_sources("whose totals to apply first")
@click.option("--job", "job_ids", multiple=True, type=click.IntRange(1), metavar="ID",
              help="Take this job's refund only; repeat for more.  [default: every job the key's CSP created]")
@click.pass_context
def refund_command(ctx: click.Context, keystore: Path, password_file: Path | None, rpc: str, deployment_file: Path,
                   json_output: bool, oracles: tuple[str, ...], report_paths: tuple[Path, ...], timeout_s: float,
                   job_ids: tuple[int, ...]) -> None:
    """Take the refunds due to a CSP, in one transaction.

    A job's refund is what the settled reports allocated to its CSP (time nobody served, pay
    withheld from nodes below the release threshold, rounding) and was not taken yet. With
    --oracle or --reports, the latest settled report's totals are applied in the same transaction
    (checked against the chain's roots as `claim` does); without, only totals already applied on
    chain (by a claim, say) count. Prints each job's amount (token units); "nothing to refund"
    exits 0. A --job of another CSP is refused before anything is sent.

    \b
    Exit codes: 0 refunded, or nothing due; 2 usage (an unknown --job, or one
    of another CSP); 3 chain unreachable; 4 bad deployment record; 5 the escrow
    reverted (named); 6 transaction failed; 7 other chain error; 8 keystore error;
    9 no source served the report; 16 every report found was refused.
    """
    _due(ctx, refund_round, _Signer(keystore, password_file, rpc, deployment_file), json_output, job_ids,
         "refunded", report_paths=report_paths, oracles=oracles, timeout_s=timeout_s)


@click.command("burn")
@_options("Any funded keystore: burns go to the burn address, not to the sender.")
@_sources("whose totals to apply first")
@click.option("--job", "job_ids", multiple=True, type=click.IntRange(1), metavar="ID",
              help="Burn for this job only; repeat for more.  [default: every job]")
@click.pass_context
def burn_command(ctx: click.Context, keystore: Path, password_file: Path | None, rpc: str, deployment_file: Path,
                 json_output: bool, oracles: tuple[str, ...], report_paths: tuple[Path, ...], timeout_s: float,
                 job_ids: tuple[int, ...]) -> None:
    """Execute the burns due, in one transaction.

    A job's burn is what the settled reports allocated to burning (the protocol's share of every
    release, pay of nodes below the burn floor or blacklisted) and was not burned yet; it goes to
    the burn address 0x000000000000000000000000000000000000dEaD. Anyone may execute it; the
    oracles do not (a burn per report would cost gas for every job every epoch). With --oracle or
    --reports, the latest settled report's totals are applied first, in the same transaction.
    Prints each job's amount (token units); "nothing to burn" exits 0.

    \b
    Exit codes: 0 burned, or nothing due; 2 usage (an unknown --job); 3 chain
    unreachable; 4 bad deployment record; 5 the escrow reverted (named);
    6 transaction failed; 7 other chain error; 8 keystore error; 9 no source
    served the report; 16 every report found was refused.
    """
    _due(ctx, burn_round, _Signer(keystore, password_file, rpc, deployment_file), json_output, job_ids,
         "burned", report_paths=report_paths, oracles=oracles, timeout_s=timeout_s)


def _due(ctx: click.Context, settle: Callable[..., DueOutcome], signer: _Signer, json_output: bool,
         job_ids: tuple[int, ...], verb: str, **sources: Any) -> None:
    """One ``refund_round`` or ``burn_round`` for the key, printed (shared by ``refund`` and ``burn``)."""
    as_json = _as_json(ctx, json_output)
    try:
        with _progress(as_json) as progress:
            outcome = settle(signer.chain(), signer.deployment, signer.address, job_ids=job_ids, progress=progress,
                             **sources)
    except SettleError as exc:
        _fail(ctx, exc, as_json)
    _print_due(outcome, as_json, verb)


def _print_due(outcome: DueOutcome, as_json: bool, verb: str) -> None:
    if as_json:
        click.echo(json.dumps(outcome.as_json()))
        return
    if not outcome.moved:
        click.echo(outcome.note)
        return
    table = _table("job", "token", "to", verb)
    for d in outcome.moved:
        table.add_row(str(d.job_id), d.token, d.to, str(d.amount))
    _print_table(table)
    for token, total in outcome.as_json()["totals"].items():
        click.echo(f"{verb} {total} units of token {token} in transaction {outcome.tx}")
