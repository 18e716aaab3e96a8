"""Reverts from either backend's exception shape decode into exceptions named after the error."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from contracts import ContractRevert, reverts
from contracts._revert import as_contract_revert, decode_revert_data


def _data(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(text=signature)[:4] + encode(types, values)


class EthTesterFailure(Exception):
    """The shape eth-tester raises: the bytes only as a Python literal inside the message."""


EthTesterFailure.__name__ = "TransactionFailed"


class RpcCustomError(Exception):
    """The shape web3 raises for JSON-RPC nodes: hex in ``.data``."""

    def __init__(self, data: str) -> None:
        super().__init__(data)
        self.data = data


def test_custom_error_from_eth_tester_message() -> None:
    raw = _data("JobEscrowNothingToClaim(uint256,uint256)", ["uint256", "uint256"], [3, 9])
    exc = as_contract_revert(EthTesterFailure(f"execution reverted: {raw!r}"))
    assert isinstance(exc, reverts.JobEscrowNothingToClaim)
    assert exc.args_by_name == {"jobId": 3, "licenseId": 9}
    assert exc.values == (3, 9)


def test_custom_error_from_rpc_hex_data() -> None:
    raw = _data("OracleRegistryQuorumNotReached(uint256,uint256)", ["uint256", "uint256"], [2, 3])
    exc = as_contract_revert(RpcCustomError("0x" + raw.hex()))
    assert isinstance(exc, reverts.OracleRegistryQuorumNotReached)
    assert exc.args_by_name == {"signers": 2, "threshold": 3}
    assert "OracleRegistryQuorumNotReached(signers=2, threshold=3)" in str(exc)


def test_error_string_and_panic() -> None:
    text = as_contract_revert(EthTesterFailure("execution reverted: frozen"))
    assert isinstance(text, reverts.Error)
    assert text.args_by_name == {"message": "frozen"}
    panic = decode_revert_data(_data("Panic(uint256)", ["uint256"], [0x11]))
    assert isinstance(panic, reverts.Panic)
    assert panic.values == (0x11,)


def test_unknown_selector_and_non_reverts_are_not_decoded() -> None:
    assert decode_revert_data(b"\xde\xad\xbe\xef" + b"\0" * 32) is None
    assert decode_revert_data(b"\x01") is None
    assert as_contract_revert(ValueError("something else")) is None


def test_openzeppelin_errors_are_known_by_name() -> None:
    assert issubclass(reverts.AccessControlUnauthorizedAccount, ContractRevert)
    assert issubclass(reverts.ReentrancyGuardReentrantCall, ContractRevert)
    with pytest.raises(AttributeError, match="no contract error named"):
        _ = reverts.NotAnError
