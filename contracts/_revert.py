"""Turning revert data from any backend into ``ContractRevert`` subclasses named after the error.

eth-tester raises ``TransactionFailed("execution reverted: b'...'")`` with the revert bytes only
as a Python bytes literal (or an already-decoded ``Error(string)`` text); JSON-RPC nodes raise
web3's ``ContractCustomError``/``ContractLogicError`` with ``.data`` as hex. Both are normalized to
raw bytes here and decoded against the ``error`` entries of every committed ABI.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from ._artifacts import artifact_names, load_artifact
from ._errors import ContractRevert
from ._keccak import to_checksum_address

_BUILTIN_ERRORS: list[dict[str, Any]] = [
    {"type": "error", "name": "Error", "inputs": [{"name": "message", "type": "string"}]},
    {"type": "error", "name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
]


def _abi_type(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){t[len('tuple'):]}"
    return t


@cache
def _errors_by_selector() -> dict[bytes, tuple[type[ContractRevert], list[str], list[str]]]:
    table: dict[bytes, tuple[type[ContractRevert], list[str], list[str]]] = {}
    entries = list(_BUILTIN_ERRORS)
    for name in artifact_names():
        entries += [e for e in load_artifact(name).abi if e.get("type") == "error"]
    for entry in entries:
        types = [_abi_type(i) for i in entry["inputs"]]
        selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
        if selector not in table:
            names = [i["name"] or f"arg{n}" for n, i in enumerate(entry["inputs"])]
            table[selector] = (revert_class(entry["name"]), types, names)
    return table


@cache
def revert_class(name: str) -> type[ContractRevert]:
    """The ``ContractRevert`` subclass for the custom error ``name`` (created once per name)."""
    return type(name, (ContractRevert,), {"name": name, "__module__": "contracts.reverts"})


def decode_revert_data(data: bytes) -> ContractRevert | None:
    """Decode raw revert bytes into an exception instance, or None if the selector is unknown."""
    if len(data) < 4:
        return None
    found = _errors_by_selector().get(data[:4])
    if found is None:
        return None
    cls, types, names = found
    try:
        values = abi_decode(types, data[4:])
    except Exception:  # malformed payload: not one of ours after all
        return None
    normalized = [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)]
    return cls(dict(zip(names, normalized, strict=True)))


_TESTER_BYTES = re.compile(r"execution reverted: (b(['\"]).*\2)$", re.DOTALL)
_TESTER_TEXT = re.compile(r"execution reverted: (.*)$", re.DOTALL)


def revert_bytes_of(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a backend exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    message = str(exc.args[0]) if exc.args else ""
    m = _TESTER_BYTES.search(message)
    if m:
        literal = ast.literal_eval(m.group(1))
        if isinstance(literal, bytes):
            return literal
    return None


def as_contract_revert(exc: BaseException) -> ContractRevert | None:
    """The decoded ``ContractRevert`` for a backend exception, or None if it is not a revert."""
    raw = revert_bytes_of(exc)
    if raw is not None:
        return decode_revert_data(raw)
    message = str(exc.args[0]) if exc.args else ""
    m = _TESTER_TEXT.search(message)
    if m and type(exc).__name__ in {"TransactionFailed", "ContractLogicError"}:
        return revert_class("Error")({"message": m.group(1)})
    return None
