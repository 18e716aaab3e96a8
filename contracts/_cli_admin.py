"""``deedmesh chain ...`` for governance and bootstrap: mint a license, link a node to it, set a
license's standing, admit a CSP on its attester's signature, and, on development chains, mint
payment tokens and send ether for gas; ``chain job`` reads a job's accounts on chain and can wait
for its epochs to settle. Each command is one transaction (or reads) through the typed clients.

Who sends: ``--key FILE``, a keystore whose key signs here and pays the gas; without it, one of
the chain node's unlocked accounts (``--admin-index``, default 0: the account ``chain deploy``
deploys from, which holds every governance role and owns the mock stablecoin).

Keystores are the Web3 Secret Storage files ``deedmesh keys`` writes, decrypted here with
eth_account: ``contracts`` may not import ``mesh`` (DESIGN.md's layering), where the node's own
keystore helpers live. The password comes from ``--password-file``, ``$DEEDMESH_KEY_PASSWORD`` or a
prompt, as everywhere in deedmesh.

Exit codes, as the rest of ``deedmesh``: 2 usage (a malformed address, no such unlocked account,
no such job), 3 chain unreachable, 4 bad deployment record (or no mock token to mint), 5 the
contract reverted (its custom error named), 6 transaction failed, 7 other chain error, 8 keystore
error, 14 ``chain job --wait-settled`` did not see every epoch settle in time.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import click
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address
from web3 import Web3
from web3.types import TxReceipt

from ._chain import Chain
from ._deploy import Deployment
from ._eip712 import csp_admission, sign
from ._errors import DeploymentError
from ._keccak import keccak, to_checksum_address
from ._types import JobStatus, LicenseStatus

PASSWORD_ENV = "DEEDMESH_KEY_PASSWORD"  # the same variable every deedmesh command reads
EXIT_KEYSTORE = 8
EXIT_TIMED_OUT = 14
# A settled root is looked for once a second: dev epochs last seconds, production ones an hour.
SETTLED_POLL_S = 1.0


# ------------------------------------------------------------------ shared options and plumbing


def _address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    if not is_address(value):
        raise click.BadParameter(f"{value!r} is not an address (0x and 40 hex digits)")
    return to_checksum_address(value)


def _options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


_on_chain = _options(
    click.option("--rpc", required=True, metavar="URL", help="JSON-RPC URL of the chain the deployment is on."),
    click.option("--deployment", "deployment_file", required=True,
                 type=click.Path(dir_okay=False, exists=True, path_type=Path),
                 help="Deployment record with the contract addresses (deedmesh chain deploy --out)."),
)
_sender = _options(
    click.option("--key", "keystore", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                 help="Send from this keystore's key (deedmesh keys new); it pays the gas.  "
                      "[default: an unlocked account of the chain node, --admin-index]"),
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="--key's password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt)."),
    click.option("--admin-index", type=click.IntRange(0), default=0, show_default=True,
                 help="Without --key: which of the chain node's unlocked accounts sends (dev chains; 0 is "
                      "the one chain deploy used, holding the governance roles)."),
)


class _KeystoreUnreadable(Exception):
    """A keystore that is missing, too open, malformed, or locked with another password."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def _unlock(path: Path, password_file: Path | None) -> LocalAccount:
    """The key in keystore ``path``; refused when others may read the file, as ``deedmesh keys`` does."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise _KeystoreUnreadable(path, "others may read it; chmod 600 it")
    if password_file is not None:
        try:
            password = next(iter(password_file.read_text().splitlines()), "")
        except OSError as exc:
            raise _KeystoreUnreadable(password_file, f"password file unreadable: {exc.strerror}") from exc
    else:
        password = os.environ.get(PASSWORD_ENV) or click.prompt(f"password of {path}", hide_input=True, err=True)
    try:
        return Account.from_key(Account.decrypt(json.loads(path.read_text()), password))
    except ValueError as exc:  # bad JSON, or eth-account's "MAC mismatch": never echo key material
        raise _KeystoreUnreadable(path, "not a keystore, or the wrong password") from exc
    except (KeyError, TypeError) as exc:
        raise _KeystoreUnreadable(path, "malformed keystore") from exc


@dataclass
class _Session:
    chain: Chain
    deployment: Deployment
    sender: str


def _open(ctx: click.Context, rpc: str, deployment_file: Path, keystore: Path | None = None,
          password_file: Path | None = None, admin_index: int = 0) -> _Session:
    """Connect, check the record is for this chain, and pick the sender."""
    record = Deployment.load(deployment_file)
    chain = Chain.connect(rpc)
    record.check_chain(chain)
    if keystore is not None:
        try:
            return _Session(chain, record, chain.add_signer(_unlock(keystore, password_file)))
        except _KeystoreUnreadable as exc:
            _exit(ctx, "KeystoreError", str(exc), EXIT_KEYSTORE)
    accounts = chain.accounts
    if admin_index >= len(accounts):
        raise click.UsageError(f"the chain node at {rpc} has {len(accounts)} unlocked accounts, so there is no "
                               f"--admin-index {admin_index}; send with --key FILE")
    return _Session(chain, record, accounts[admin_index])


def _as_json(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("json_output"))


def _emit(ctx: click.Context, data: dict[str, Any]) -> None:
    if _as_json(ctx):
        click.echo(json.dumps(data))
    else:
        for field, value in data.items():
            click.echo(f"{field:14} {value}")


def _exit(ctx: click.Context, error: str, message: str, code: int) -> NoReturn:
    """As the deedmesh group reports its errors: the error's name and message, then the exit code."""
    if _as_json(ctx):
        click.echo(json.dumps({"error": error, "message": message}))
    else:
        click.secho(f"error: {error}: {message}", fg="red", err=True)
    ctx.exit(code)


def _tx(receipt: TxReceipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


# ------------------------------------------------------------------ licenses


@click.command("mint-license")
@click.option("--to", "owner", required=True, callback=_address, metavar="ADDRESS",
              help="Who gets the license: an operator (paid for its node's work) or a CSP (the deed it must hold).")
@_on_chain
@_sender
@click.pass_context
def mint_license(ctx: click.Context, owner: str, rpc: str, deployment_file: Path, keystore: Path | None,
                 password_file: Path | None, admin_index: int) -> None:
    """Mint a license (an ERC-721 deed) to --to and print its id.

    The sender needs the registry's MINTER_ROLE (the deployer holds it); anyone else gets
    AccessControlUnauthorizedAccount (exit 5).
    """
    s = _open(ctx, rpc, deployment_file, keystore, password_file, admin_index)
    license_id = s.deployment.licenses(s.chain).mint(owner, sender=s.sender)
    _emit(ctx, {"license_id": license_id, "owner": owner})


@click.command("link-node")
@click.option("--license", "license_id", required=True, type=click.IntRange(1), metavar="ID",
              help="The license to link (its owner sends).")
@click.option("--node", required=True, callback=_address, metavar="ADDRESS",
              help="The node's address (deedmesh keys new prints it): its key is its libp2p identity.")
@_on_chain
@_sender
@click.pass_context
def link_node(ctx: click.Context, license_id: int, node: str, rpc: str, deployment_file: Path,
              keystore: Path | None, password_file: Path | None, admin_index: int) -> None:
    """Link a node address to a license, so that the node may join the mesh and be placed on.

    The license's owner sends it (--key owner.json). One node per license and one license per
    node; relinking waits out the registry's cooldown. A refusal names the registry's error
    (exit 5): LicenseRegistryNotLicenseOwner, ...NodeAlreadyLinked, ...RelinkCooldown, ...NodeBanned.
    """
    s = _open(ctx, rpc, deployment_file, keystore, password_file, admin_index)
    receipt = s.deployment.licenses(s.chain).link_node(license_id, node, sender=s.sender)
    _emit(ctx, {"license_id": license_id, "node": node, "owner": s.sender, "tx": _tx(receipt)})


@click.command("set-status")
@click.option("--license", "license_id", required=True, type=click.IntRange(1), metavar="ID", help="The license.")
@click.option("--status", "status_name", required=True, type=click.Choice([s.name.lower() for s in LicenseStatus]),
              help="active; frozen (no earning, reversible); suspended (no placement, pay withheld); "
                   "blacklisted (final: its node is banned and its unclaimed pay burned).")
@_on_chain
@_sender
@click.pass_context
def set_status(ctx: click.Context, license_id: int, status_name: str, rpc: str, deployment_file: Path,
               keystore: Path | None, password_file: Path | None, admin_index: int) -> None:
    """Set a license's standing (governance: the sender needs GOVERNANCE_ROLE).

    Nodes read the change from the chain within their license refresh and drop a banned peer's
    gossip; oracles leave restricted licenses out of their reports.
    """
    s = _open(ctx, rpc, deployment_file, keystore, password_file, admin_index)
    status = LicenseStatus[status_name.upper()]
    receipt = s.deployment.licenses(s.chain).set_status(license_id, status, sender=s.sender)
    _emit(ctx, {"license_id": license_id, "status": status_name, "tx": _tx(receipt)})


# ------------------------------------------------------------------ CSPs, tokens and gas


def _kyc_ref(_ctx: click.Context, _param: click.Parameter, value: str) -> bytes:
    """0x and 64 hex digits as they are; any other text, its keccak256."""
    if value.startswith("0x") and len(value) == 66:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    return keccak(value.encode())


@click.command("admit-csp")
@click.option("--csp", required=True, callback=_address, metavar="ADDRESS", help="The CSP's address.")
@click.option("--attester-key", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Keystore of the deployment's attester, which signs the admission (EIP-712).")
@click.option("--attester-password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Its password file (default: $DEEDMESH_KEY_PASSWORD, else a prompt).")
@click.option("--kyc-ref", default="", callback=_kyc_ref, metavar="REF",
              help="The attester's reference to its KYC/KYB record: 0x and 64 hex digits, or any text "
                   "(its keccak256 is signed).")
@click.option("--valid-for-days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="How long the admission lasts.")
@click.option("--nonce", type=click.IntRange(0), help="Admission nonce (each is used once per CSP).  "
                                                      "[default: this machine's clock in ms]")
@_on_chain
@_sender
@click.pass_context
def admit_csp(ctx: click.Context, csp: str, attester_key: Path, attester_password_file: Path | None, kyc_ref: bytes,
              valid_for_days: int, nonce: int | None, rpc: str, deployment_file: Path, keystore: Path | None,
              password_file: Path | None, admin_index: int) -> None:
    """Admit a CSP: the attester signs its admission, and the sender (the CSP, or anyone) submits it.

    The CSP must already hold a license (the deed requirement: chain mint-license --to CSP), else
    JobEscrowCspHoldsNoLicense; a key that is not the deployment's attester gets
    JobEscrowInvalidAttestation naming the signer (exit 5).
    """
    s = _open(ctx, rpc, deployment_file, keystore, password_file, admin_index)
    try:
        attester = _unlock(attester_key, attester_password_file)
    except _KeystoreUnreadable as exc:
        _exit(ctx, "KeystoreError", str(exc), EXIT_KEYSTORE)
    escrow = s.deployment.escrow(s.chain)
    # from the later of the chain's clock and this machine's: a quiet dev chain holds an old block
    valid_until = max(s.chain.now(), int(time.time())) + valid_for_days * 86_400
    nonce = time.time_ns() // 1_000_000 if nonce is None else nonce
    signature = sign(csp_admission(escrow.domain(), csp, kyc_ref, valid_until, nonce), attester.key)
    receipt = escrow.admit_csp(csp, kyc_ref, valid_until, nonce, signature, sender=s.sender)
    _emit(ctx, {"csp": csp, "admitted_until": valid_until, "attester": attester.address, "nonce": nonce,
                "tx": _tx(receipt)})


@click.command("mint-tokens")
@click.option("--to", "holder", required=True, callback=_address, metavar="ADDRESS", help="Who gets the tokens.")
@click.option("--amount", required=True, type=click.IntRange(1), metavar="UNITS",
              help="In the token's smallest units (the mock stablecoin has 6 decimals: 1000000 is 1 mUSD).")
@_on_chain
@_sender
@click.pass_context
def mint_tokens(ctx: click.Context, holder: str, amount: int, rpc: str, deployment_file: Path, keystore: Path | None,
                password_file: Path | None, admin_index: int) -> None:
    """Mint mock stablecoin to --to (deployments of the devnet preset only; the sender must own the
    token: the deployer). Prints the new balance."""
    s = _open(ctx, rpc, deployment_file, keystore, password_file, admin_index)
    if s.deployment.token is None:
        raise DeploymentError(f"{deployment_file} has no mock stablecoin to mint (chain deploy --preset devnet "
                              "deploys one; on a real chain, CSPs pay in a real token)")
    token = s.deployment.payment_token(s.chain)
    receipt = token.mint(holder, amount, sender=s.sender)
    _emit(ctx, {"to": holder, "amount": amount, "balance": token.balance_of(holder), "tx": _tx(receipt)})


def _ether(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        wei = Decimal(value) * 10**18
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if wei <= 0 or wei != wei.to_integral_value():
        raise click.BadParameter(f"{value} ether is not a positive whole number of wei")
    return int(wei)


@click.command("fund-eth")
@click.option("--to", "recipient", required=True, callback=_address, metavar="ADDRESS",
              help="Who gets the ether (a key that sends transactions: an operator, a CSP, an oracle).")
@click.option("--ether", "wei", default="1", show_default=True, callback=_ether, metavar="AMOUNT",
              help="How much, in ether (decimals allowed).")
@_on_chain
@click.option("--admin-index", type=click.IntRange(0), default=0, show_default=True,
              help="Which of the chain node's unlocked accounts pays.")
@click.pass_context
def fund_eth(ctx: click.Context, recipient: str, wei: int, rpc: str, deployment_file: Path, admin_index: int) -> None:
    """Send ether for gas from one of a development chain's unlocked accounts (anvil, eth-tester).
    On a real chain, fund keys from a wallet instead."""
    s = _open(ctx, rpc, deployment_file, admin_index=admin_index)
    receipt = s.chain.send_value(s.sender, recipient, wei)
    balance = int(s.chain.w3.eth.get_balance(Web3.to_checksum_address(recipient)))
    _emit(ctx, {"to": recipient, "wei": wei, "balance_wei": balance, "tx": _tx(receipt)})


# ------------------------------------------------------------------ a job's accounts


@click.command("job")
@click.argument("job_id", type=click.IntRange(1))
@_on_chain
@click.option("--wait-settled", is_flag=True,
              help="Wait until every epoch of the job has its report's root on chain (then claims and refunds pay "
                   "all of it).")
@click.option("--timeout-s", type=click.FloatRange(0, min_open=True), default=300.0, show_default=True,
              metavar="SECONDS", help="With --wait-settled: give up (exit 14) after this long.")
@click.pass_context
def job_accounts(ctx: click.Context, job_id: int, rpc: str, deployment_file: Path, wait_settled: bool,
                 timeout_s: float) -> None:
    """A job as the escrow holds it: its shape, which of its epochs are settled, and its money
    (deposited = released + refunded + burned + locked, in token units).

    A settled epoch's totals reach the job's accounts with the first claim, refund or burn that
    proves them (applied_through: the last epoch they cover), so right after settlement the
    money may still show as locked.

    An epoch whose oracles reached no quorum stays unsettled (its share stays locked until the
    CSP closes the job after the grace period), so --wait-settled then times out (exit 14).
    """
    s = _open(ctx, rpc, deployment_file)
    escrow = s.deployment.escrow(s.chain)
    deadline = time.monotonic() + timeout_s
    while True:
        job = escrow.get_job(job_id)
        if job.status == JobStatus.NONE:
            raise click.BadParameter(f"the escrow has no job {job_id}", param_hint="JOB_ID")
        epochs = range(job.start_epoch, job.start_epoch + job.epochs)
        pending = [e for e in epochs if not any(escrow.root_of(e))]
        if not wait_settled or not pending or time.monotonic() >= deadline:
            break
        time.sleep(SETTLED_POLL_S)
    applied = escrow.settled_until(job_id)  # 1 + the last epoch whose totals are in the accounts (0: none)
    out = {"job_id": job_id, "csp": job.csp, "status": job.status.name.lower(), "replicas": job.replicas,
           "price_per_node_epoch": job.price_per_node_epoch, "epochs": [epochs.start, epochs.stop - 1],
           "current_epoch": escrow.current_epoch(), "settled": [e for e in epochs if e not in pending],
           "pending": pending, "applied_through": applied - 1 if applied else None, **job.conservation()}
    if not (wait_settled and pending):
        _emit(ctx, out)
        return
    message = f"epochs {pending} of job {job_id} not settled within {timeout_s:g} s"
    if _as_json(ctx):  # one JSON object, the job and the error
        click.echo(json.dumps({**out, "error": "TimedOut", "message": message}))
        ctx.exit(EXIT_TIMED_OUT)
    _emit(ctx, out)
    _exit(ctx, "TimedOut", message, EXIT_TIMED_OUT)


ADMIN_COMMANDS = [mint_license, link_node, set_status, admit_csp, mint_tokens, fund_eth, job_accounts]
