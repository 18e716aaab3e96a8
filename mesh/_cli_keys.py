"""``deedmesh keys new|show|import``: node keys in Ethereum keystore files.

Passwords come from ``--password-file``, ``$DEEDMESH_KEY_PASSWORD`` or a prompt; private keys are
read from a file or standard input (never from the command line, which lands in shell history)
and never printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

import click

from ._errors import KeystoreError
from ._identity import NodeIdentity, keystore_address, read_keystore, resolve_password, write_keystore

_password_file = click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                              help="Read the password from this file's first line "
                                   "(default: $DEEDMESH_KEY_PASSWORD, else a prompt).")


def _password(password_file: Path | None, *, confirm: bool) -> str:
    found = resolve_password(password_file=password_file)
    if found is not None:
        return found
    if not sys.stdin.isatty():
        raise click.UsageError("no password: use --password-file or $DEEDMESH_KEY_PASSWORD (stdin is not a terminal)")
    return str(click.prompt("keystore password", hide_input=True, confirmation_prompt=confirm))


def _emit(ctx: click.Context, data: dict[str, str]) -> None:
    if ctx.find_root().params.get("json_output"):
        click.echo(json.dumps(data))
    else:
        for k, v in data.items():
            click.echo(f"{k:9} {v}")


@click.group()
def keys() -> None:
    """Create, import and inspect node keys (encrypted keystore files, mode 0600)."""


@keys.command("new")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Keystore file to create.")
@_password_file
@click.pass_context
def new(ctx: click.Context, out: Path, password_file: Path | None) -> None:
    """Generate a node key; its address is what you link to your license."""
    ident = NodeIdentity.generate()
    write_keystore(out, ident, _password(password_file, confirm=True))
    _emit(ctx, {"address": ident.address, "keystore": str(out)})


@keys.command("import")
@click.option("--private-key-file", type=click.File("r"), default="-", show_default=True,
              help="File holding the hex private key ('-' for standard input).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Keystore file to create.")
@_password_file
@click.pass_context
def import_(ctx: click.Context, private_key_file: TextIO, out: Path, password_file: Path | None) -> None:
    """Import an existing secp256k1 key into a keystore."""
    text = private_key_file.read().strip().removeprefix("0x")
    try:
        ident = NodeIdentity(bytes.fromhex(text))
    except ValueError:
        raise KeystoreError(out, "the private key must be 32 bytes of hex") from None
    write_keystore(out, ident, _password(password_file, confirm=True))
    _emit(ctx, {"address": ident.address, "keystore": str(out)})


@keys.command("show")
@click.argument("keystore", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verify", is_flag=True, help="Decrypt to prove the password and print the libp2p peer id.")
@_password_file
@click.pass_context
def show(ctx: click.Context, keystore: Path, verify: bool, password_file: Path | None) -> None:
    """Print a keystore's address (and, with --verify, its libp2p peer id)."""
    data = {"address": keystore_address(keystore)}
    if verify:
        from ._transport_libp2p import peer_id_of  # libp2p import cost only when asked

        ident = read_keystore(keystore, _password(password_file, confirm=False))
        data = {"address": ident.address, "peer_id": peer_id_of(ident)}
    _emit(ctx, data)
