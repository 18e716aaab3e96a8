"""The signed formats shared with the contracts: EIP-712 structs, the report totals hash and the
settlement Merkle leaf. Each is defined once here and once in Solidity, and JSON vectors in
``tests/vectors/`` pin both. Pure: no web3, no clock; keys are arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from ._types import JobTotals

ESCROW_DOMAIN_NAME = "deedmesh JobEscrow"
ESCROW_DOMAIN_VERSION = "1"
LEAF_RELEASE = 1

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]

TYPES: dict[str, list[dict[str, str]]] = {
    "CspAdmission": [
        {"name": "csp", "type": "address"},
        {"name": "kycRef", "type": "bytes32"},
        {"name": "validUntil", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ],
    "EpochReport": [
        {"name": "epoch", "type": "uint64"},
        {"name": "root", "type": "bytes32"},
        {"name": "totalsHash", "type": "bytes32"},
    ],
    "JobSubmission": [
        {"name": "jobId", "type": "uint256"},
        {"name": "specHash", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "expiry", "type": "uint64"},
    ],
}


def escrow_domain(chain_id: int, escrow: str) -> dict[str, Any]:
    """The JobEscrow's EIP-712 domain: binds name, version, chain id and the contract address."""
    return {"name": ESCROW_DOMAIN_NAME, "version": ESCROW_DOMAIN_VERSION, "chainId": chain_id,
            "verifyingContract": to_checksum_address(escrow)}


def typed_message(domain: dict[str, Any], primary_type: str, message: dict[str, Any]) -> dict[str, Any]:
    """A full EIP-712 message for one of ``TYPES``."""
    return {"types": {"EIP712Domain": _DOMAIN_TYPE, primary_type: TYPES[primary_type]},
            "domain": domain, "primaryType": primary_type, "message": message}


def digest(full_message: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest (what ``ecrecover`` sees)."""
    signable = encode_typed_data(full_message=full_message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign(full_message: dict[str, Any], private_key: bytes | str) -> bytes:
    """A 65-byte (r, s, v) signature with low s and v in {27, 28}, as the contracts require."""
    signed = Account.sign_message(encode_typed_data(full_message=full_message), private_key)
    return bytes(signed.signature)


def recover(full_message: dict[str, Any], signature: bytes) -> str:
    """The address that signed ``full_message``."""
    return str(Account.recover_message(encode_typed_data(full_message=full_message), signature=signature))


def epoch_report(domain: dict[str, Any], epoch: int, root: bytes, totals_hash_: bytes) -> dict[str, Any]:
    return typed_message(domain, "EpochReport", {"epoch": epoch, "root": root, "totalsHash": totals_hash_})


def csp_admission(domain: dict[str, Any], csp: str, kyc_ref: bytes, valid_until: int, nonce: int) -> dict[str, Any]:
    return typed_message(domain, "CspAdmission", {"csp": to_checksum_address(csp), "kycRef": kyc_ref,
                                                  "validUntil": valid_until, "nonce": nonce})


def job_submission(domain: dict[str, Any], job_id: int, spec_hash: bytes, nonce: int, expiry: int) -> dict[str, Any]:
    return typed_message(domain, "JobSubmission", {"jobId": job_id, "specHash": spec_hash,
                                                   "nonce": nonce, "expiry": expiry})


def totals_hash(totals: Sequence[JobTotals]) -> bytes:
    """``keccak256(abi.encode(JobTotals[]))`` as the escrow computes it."""
    return keccak(abi_encode(["(uint256,uint128,uint128,uint128)[]"], [[t.as_abi() for t in totals]]))


def release_leaf(job_id: int, license_id: int, cumulative: int) -> bytes:
    """The Merkle leaf of a (job, license) cumulative node pay: OpenZeppelin's double hash."""
    inner = keccak(abi_encode(["uint8", "uint256", "uint256", "uint256"],
                              [LEAF_RELEASE, job_id, license_id, cumulative]))
    return keccak(inner)
