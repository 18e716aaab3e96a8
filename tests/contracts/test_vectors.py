"""The signed formats exist twice, in Solidity and in Python; these vectors pin both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    Chain,
    DeployConfig,
    JobEscrowClient,
    JobTotals,
    deploy,
    digest,
    escrow_domain,
    recover,
    release_leaf,
    totals_leaf,
    totals_proofs,
    totals_root,
    typed_message,
)
from contracts._eip712 import TYPES

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "eip712.json").read_text())


def _message(name: str) -> dict[str, Any]:
    d = VECTORS["domain"]
    fields = {k: bytes.fromhex(v[2:]) if isinstance(v, str) and v.startswith("0x") and len(v) == 66 else v
              for k, v in VECTORS["structs"][name]["message"].items()}
    return typed_message(escrow_domain(d["chainId"], d["verifyingContract"]), name, fields)


@pytest.fixture(scope="module")
def vector_escrow() -> JobEscrowClient:
    """The escrow deployed exactly as scripts/make_vectors.py does, at the vectors' address."""
    chain = Chain.embedded()
    a = chain.accounts
    dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=a[4],
                 genesis_time=1_800_000_000)
    assert dep.chain_id == VECTORS["domain"]["chainId"]
    assert dep.job_escrow == VECTORS["domain"]["verifyingContract"]
    return dep.escrow(chain)


@pytest.mark.parametrize("name", ["EpochReport", "CspAdmission", "JobSubmission"])
def test_python_reproduces_digest_and_signature(name: str) -> None:
    m = _message(name)
    assert "0x" + digest(m).hex() == VECTORS["structs"][name]["digest"]
    assert recover(m, bytes.fromhex(VECTORS["structs"][name]["signature"][2:])) == VECTORS["signer"]


def test_solidity_reproduces_digests(vector_escrow: JobEscrowClient) -> None:
    s = VECTORS["structs"]
    r = _message("EpochReport")["message"]
    assert vector_escrow.epoch_report_digest(r["epoch"], r["root"], r["totalsRoot"]).hex() == s["EpochReport"][
        "digest"][2:]
    c = _message("CspAdmission")["message"]
    assert vector_escrow.csp_admission_digest(c["csp"], c["kycRef"], c["validUntil"], c["nonce"]).hex() == s[
        "CspAdmission"]["digest"][2:]
    j = _message("JobSubmission")["message"]
    assert vector_escrow.job_submission_digest(j["jobId"], j["specHash"], j["nonce"], j["expiry"]).hex() == s[
        "JobSubmission"]["digest"][2:]


def test_totals_leaves_root_and_proofs_on_both_sides(vector_escrow: JobEscrowClient) -> None:
    v = VECTORS["totals"]
    totals = [JobTotals(*t) for t in v["value"]]
    leaves = [bytes.fromhex(h[2:]) for h in v["leaves"]]
    root = bytes.fromhex(v["root"][2:])
    assert [totals_leaf(t) for t in totals] == leaves
    assert [vector_escrow.totals_leaf(t) for t in totals] == leaves  # the contract's view
    assert totals_root(totals) == root
    assert totals_root([]).hex() == v["empty_root"][2:] == "00" * 32
    # the root is the one the EpochReport vector signs
    assert _message("EpochReport")["message"]["totalsRoot"] == root
    proofs = totals_proofs(v["epoch"], totals)
    assert [["0x" + h.hex() for h in p.proof] for p in proofs] == v["proofs"]
    for leaf, proof in zip(leaves, v["proofs"], strict=True):
        # OpenZeppelin's processProof, written out: hash sorted pairs up to the root
        node = leaf
        for sibling in (bytes.fromhex(h[2:]) for h in proof):
            node = keccak(b"".join(sorted((node, sibling))))
        assert node == root


def test_release_leaf_on_both_sides(vector_escrow: JobEscrowClient) -> None:
    leaf = VECTORS["release_leaf"]
    args = (leaf["job_id"], leaf["license_id"], leaf["cumulative"])
    assert release_leaf(*args).hex() == leaf["leaf"][2:]
    assert vector_escrow.release_leaf(*args).hex() == leaf["leaf"][2:]


def test_a_changed_field_changes_the_digest() -> None:
    m = _message("EpochReport")
    m["message"]["epoch"] += 1
    assert "0x" + digest(m).hex() != VECTORS["structs"]["EpochReport"]["digest"]


_UINT = {"uint256": 2**256 - 1, "uint64": 2**64 - 1}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(TYPES)), chain_id=st.integers(1, 2**64),
       contract=st.binary(min_size=20, max_size=20))
def test_the_direct_digest_equals_eth_accounts_encoder(data: st.DataObject, name: str, chain_id: int,
                                                       contract: bytes) -> None:
    # ``digest`` hashes the flat structs itself (speed); eth_account's general encoder is the reference
    draw = {"address": lambda: to_checksum_address(data.draw(st.binary(min_size=20, max_size=20))),
            "bytes32": lambda: data.draw(st.binary(min_size=32, max_size=32))}
    message = {f["name"]: draw[f["type"]]() if f["type"] in draw else data.draw(st.integers(0, _UINT[f["type"]]))
               for f in TYPES[name]}
    full = typed_message(escrow_domain(chain_id, "0x" + contract.hex()), name, message)
    signable = encode_typed_data(full_message=full)
    assert digest(full) == keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_a_value_outside_its_field_type_is_refused() -> None:
    m = _message("JobSubmission")
    m["message"]["expiry"] = 2**64  # a uint64
    with pytest.raises(ValueError, match="does not fit uint64"):
        digest(m)
