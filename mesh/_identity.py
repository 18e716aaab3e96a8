"""A node's identity: one secp256k1 key that is both its Ethereum address (linked to a license on
chain) and its libp2p peer id; and the encrypted keystore files it lives in.

Keystores are the Ethereum "Web3 Secret Storage" JSON that geth and eth-account write (scrypt),
created 0600 and refused when readable by others. The private key never appears in a repr, a
log line or an error message.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_keys import keys

from ._errors import KeystoreError

PASSWORD_ENV = "DEEDMESH_KEY_PASSWORD"
# geth's standard scrypt cost: ~1.7 s to unlock on these machines, paid once at node start.
DEFAULT_SCRYPT_N = 2**18


@dataclass(frozen=True)
class NodeIdentity:
    """A node key. ``address`` is the checksummed Ethereum address."""

    private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise ValueError("a secp256k1 private key is 32 bytes")

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(bytes(Account.create().key))

    @property
    def address(self) -> str:
        return str(Account.from_key(self.private_key).address)

    @property
    def public_key_compressed(self) -> bytes:
        """The 33-byte compressed public key (what libp2p's secp256k1 peer ids are made of)."""
        return bytes(keys.PrivateKey(self.private_key).public_key.to_compressed_bytes())


def write_keystore(path: Path, identity: NodeIdentity, password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N,
                   overwrite: bool = False) -> Path:
    """Encrypt ``identity`` into a new keystore file at ``path`` (mode 0600)."""
    if path.exists() and not overwrite:
        raise KeystoreError(path, "already exists (refusing to overwrite a key)")
    if not password:
        raise KeystoreError(path, "an empty password is not allowed")
    data = Account.encrypt(identity.private_key, password, iterations=scrypt_n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by umask; make sure
    return path


def read_keystore(path: Path, password: str) -> NodeIdentity:
    """Decrypt the keystore at ``path``; refuse files others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeystoreError(path, "no such file") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeystoreError(path, f"permissions {oct(mode & 0o777)} are too open; chmod 600 it")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise KeystoreError(path, "not a JSON keystore") from exc
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        # eth-account says "MAC mismatch" for a wrong password; never echo key material
        raise KeystoreError(path, "wrong password or corrupted keystore") from exc
    except (KeyError, TypeError) as exc:
        raise KeystoreError(path, "malformed keystore") from exc
    return NodeIdentity(bytes(key))


def keystore_address(path: Path) -> str:
    """The address recorded in a keystore (no password needed)."""
    try:
        return "0x" + str(json.loads(path.read_text())["address"]).removeprefix("0x")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise KeystoreError(path, "unreadable keystore") from exc


def resolve_password(*, password_file: Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """A password from a file (first line) or ``$DEEDMESH_KEY_PASSWORD``; None means: prompt."""
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except FileNotFoundError as exc:
            raise KeystoreError(password_file, "password file not found") from exc
        return lines[0] if lines else ""
    source = os.environ if env is None else env
    return source.get(PASSWORD_ENV)
