"""Node keys live in encrypted Ethereum keystores, 0600, and never show up in text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from eth_account import Account

from mesh._errors import KeystoreError
from mesh._identity import NodeIdentity, keystore_address, read_keystore, resolve_password, write_keystore

FAST = 2**10  # tests use a cheap scrypt cost; the default is geth's


def test_round_trip_is_0600_and_geth_compatible(tmp_path: Path) -> None:
    ident = NodeIdentity.generate()
    path = write_keystore(tmp_path / "node.json", ident, "s3cret", scrypt_n=FAST)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_keystore(path, "s3cret") == ident
    # any Ethereum tool reads it: eth-account decrypts the same file to the same key
    assert Account.decrypt(json.loads(path.read_text()), "s3cret") == ident.private_key
    assert keystore_address(path).lower() == ident.address.lower()


def test_the_key_is_never_in_repr_or_errors(tmp_path: Path) -> None:
    ident = NodeIdentity.generate()
    assert ident.private_key.hex() not in repr(ident)
    path = write_keystore(tmp_path / "k.json", ident, "right", scrypt_n=FAST)
    with pytest.raises(KeystoreError, match="wrong password") as info:
        read_keystore(path, "wrong")
    assert ident.private_key.hex() not in str(info.value)


def test_refusals(tmp_path: Path) -> None:
    ident = NodeIdentity.generate()
    path = write_keystore(tmp_path / "k.json", ident, "pw", scrypt_n=FAST)
    with pytest.raises(KeystoreError, match="already exists"):
        write_keystore(path, ident, "pw", scrypt_n=FAST)
    with pytest.raises(KeystoreError, match="empty password"):
        write_keystore(tmp_path / "other.json", ident, "", scrypt_n=FAST)
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match="too open"):
        read_keystore(path, "pw")
    with pytest.raises(KeystoreError, match="no such file"):
        read_keystore(tmp_path / "missing.json", "pw")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    bad.chmod(0o600)
    with pytest.raises(KeystoreError, match="not a JSON keystore"):
        read_keystore(bad, "pw")


def test_password_sources(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\nignored\n")
    assert resolve_password(password_file=pw_file) == "from-file"
    assert resolve_password(env={"DEEDMESH_KEY_PASSWORD": "from-env"}) == "from-env"
    assert resolve_password(env={}) is None  # the CLI prompts


def test_identity_is_the_ethereum_address() -> None:
    ident = NodeIdentity(bytes.fromhex("11" * 32))
    assert ident.address == Account.from_key(b"\x11" * 32).address
    assert len(ident.public_key_compressed) == 33
    with pytest.raises(ValueError, match="32 bytes"):
        NodeIdentity(b"\x01")
