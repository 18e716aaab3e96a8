"""The signed formats shared with the contracts: EIP-712 structs and the settlement Merkle leaves
(a (job, license)'s node pay; a job's totals, and their tree). Each is defined once here and once
in Solidity, and JSON vectors in ``tests/vectors/`` pin both. Pure: no web3, no clock; keys are arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data

from ._keccak import keccak, to_checksum_address
from ._merkle import MerkleTree
from ._types import Epoch, JobTotals, TotalsProof

ESCROW_DOMAIN_NAME = "deedmesh JobEscrow"
ESCROW_DOMAIN_VERSION = "1"
LEAF_RELEASE = 1
LEAF_TOTALS = 2
NO_TOTALS = bytes(32)  # the totals root of a report with no job

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
        {"name": "totalsRoot", "type": "bytes32"},
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
    """The 32-byte EIP-712 digest (what ``ecrecover`` sees).

    Every struct here is flat (atomic fields and strings only), so the digest is computed directly:
    ``keccak(0x1901 || domainSeparator || hashStruct(message))`` with the type hashes and the domain
    separator memoized. eth_account's general encoder costs ~0.5 ms a message, and every node
    checks every job record it relays; a test holds this equal to eth_account's on random messages.
    """
    types = full_message["types"]
    domain_fields = _field_types(types["EIP712Domain"])
    primary = full_message["primaryType"]
    domain = full_message["domain"]
    separator = _domain_separator(domain_fields, tuple(domain[name] for name, _ in domain_fields))
    fields = _field_types(types[primary])
    message = full_message["message"]
    return keccak(b"\x19\x01" + separator + _hash_struct(primary, fields, tuple(message[n] for n, _ in fields)))


def _field_types(fields: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((f["name"], f["type"]) for f in fields)


@lru_cache(maxsize=64)
def _type_hash(name: str, fields: tuple[tuple[str, str], ...]) -> bytes:
    return keccak(f"{name}({','.join(f'{t} {n}' for n, t in fields)})".encode())


@lru_cache(maxsize=64)
def _domain_separator(fields: tuple[tuple[str, str], ...], values: tuple[Any, ...]) -> bytes:
    return _hash_struct("EIP712Domain", fields, values)


def _hash_struct(name: str, fields: tuple[tuple[str, str], ...], values: tuple[Any, ...]) -> bytes:
    return keccak(_type_hash(name, fields) + b"".join(_encode_atomic(t, v) for (_, t), v in zip(fields, values,
                                                                                                strict=True)))


def _encode_atomic(kind: str, value: Any) -> bytes:
    """One field's 32-byte encoding (EIP-712 ``encodeData`` for the field types used here)."""
    if kind == "string":
        return keccak(value.encode())
    if kind == "bytes32":
        raw = value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError(f"bytes32 value of {len(raw)} bytes")
        return raw
    if kind == "address":
        return bytes(12) + bytes.fromhex(to_checksum_address(value)[2:])
    if kind.startswith("uint"):
        bits = int(kind[4:])
        if not 0 <= value < 2**bits:
            raise ValueError(f"{value} does not fit {kind}")
        return int(value).to_bytes(32, "big")
    raise ValueError(f"EIP-712 field type {kind} is not one this project signs")


def sign(full_message: dict[str, Any], private_key: bytes | str) -> bytes:
    """A 65-byte (r, s, v) signature with low s and v in {27, 28}, as the contracts require."""
    signed = Account.sign_message(encode_typed_data(full_message=full_message), private_key)
    return bytes(signed.signature)


def recover(full_message: dict[str, Any], signature: bytes) -> str:
    """The address that signed ``full_message``."""
    return str(Account.recover_message(encode_typed_data(full_message=full_message), signature=signature))


def epoch_report(domain: dict[str, Any], epoch: int, root: bytes, totals_root_: bytes) -> dict[str, Any]:
    return typed_message(domain, "EpochReport", {"epoch": epoch, "root": root, "totalsRoot": totals_root_})


def csp_admission(domain: dict[str, Any], csp: str, kyc_ref: bytes, valid_until: int, nonce: int) -> dict[str, Any]:
    return typed_message(domain, "CspAdmission", {"csp": to_checksum_address(csp), "kycRef": kyc_ref,
                                                  "validUntil": valid_until, "nonce": nonce})


def job_submission(domain: dict[str, Any], job_id: int, spec_hash: bytes, nonce: int, expiry: int) -> dict[str, Any]:
    return typed_message(domain, "JobSubmission", {"jobId": job_id, "specHash": spec_hash,
                                                   "nonce": nonce, "expiry": expiry})


def totals_leaf(totals: JobTotals) -> bytes:
    """The Merkle leaf of a job's cumulative totals: OpenZeppelin's double hash."""
    inner = keccak(abi_encode(["uint8", "uint256", "uint128", "uint128", "uint128"],
                              [LEAF_TOTALS, totals.job_id, totals.release, totals.refund, totals.burn]))
    return keccak(inner)


def totals_tree(totals: Sequence[JobTotals]) -> MerkleTree | None:
    """The tree of a report's job totals (``None`` for none). One entry per job: a second entry
    for a job would let anyone apply whichever suits them."""
    if len({t.job_id for t in totals}) != len(totals):
        raise ValueError("a report has one totals entry per job")
    return MerkleTree(totals_leaf(t) for t in totals) if totals else None


def totals_root(totals: Sequence[JobTotals]) -> bytes:
    """The totals root a report signs (``EpochReport.totalsRoot``): ``NO_TOTALS`` for no job."""
    tree = totals_tree(totals)
    return NO_TOTALS if tree is None else tree.root


def totals_proofs(epoch: int, totals: Sequence[JobTotals], job_ids: Sequence[int] | None = None) -> list[TotalsProof]:
    """Proofs of the totals of ``job_ids`` (default: every job) against the root of ``totals``,
    the totals of the report of ``epoch``, in the order given; ``KeyError`` for a job not in it."""
    tree = totals_tree(totals)
    by_job: dict[int, JobTotals] = {t.job_id: t for t in totals}
    wanted = list(by_job) if job_ids is None else list(job_ids)
    out = []
    for job_id in wanted:
        t = by_job[job_id]
        assert tree is not None  # by_job is not empty
        out.append(TotalsProof(totals=t, epoch=Epoch(epoch), proof=tree.proof(totals_leaf(t))))
    return out


def release_leaf(job_id: int, license_id: int, cumulative: int) -> bytes:
    """The Merkle leaf of a (job, license) cumulative node pay: OpenZeppelin's double hash."""
    inner = keccak(abi_encode(["uint8", "uint256", "uint256", "uint256"],
                              [LEAF_RELEASE, job_id, license_id, cumulative]))
    return keccak(inner)
