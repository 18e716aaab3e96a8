"""The signed formats exist twice, in Solidity and in Python; these vectors pin both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
    totals_hash,
    typed_message,
)

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
    assert vector_escrow.epoch_report_digest(r["epoch"], r["root"], r["totalsHash"]).hex() == s["EpochReport"][
        "digest"][2:]
    c = _message("CspAdmission")["message"]
    assert vector_escrow.csp_admission_digest(c["csp"], c["kycRef"], c["validUntil"], c["nonce"]).hex() == s[
        "CspAdmission"]["digest"][2:]
    j = _message("JobSubmission")["message"]
    assert vector_escrow.job_submission_digest(j["jobId"], j["specHash"], j["nonce"], j["expiry"]).hex() == s[
        "JobSubmission"]["digest"][2:]


def test_totals_hash_and_leaf_on_both_sides(vector_escrow: JobEscrowClient) -> None:
    totals = [JobTotals(*t) for t in VECTORS["totals"]["value"]]
    expected = bytes.fromhex(VECTORS["totals"]["hash"][2:])
    assert totals_hash(totals) == expected
    assert vector_escrow.totals_hash(totals) == expected
    leaf = VECTORS["release_leaf"]
    args = (leaf["job_id"], leaf["license_id"], leaf["cumulative"])
    assert release_leaf(*args).hex() == leaf["leaf"][2:]
    assert vector_escrow.release_leaf(*args).hex() == leaf["leaf"][2:]


def test_a_changed_field_changes_the_digest() -> None:
    m = _message("EpochReport")
    m["message"]["epoch"] += 1
    assert "0x" + digest(m).hex() != VECTORS["structs"]["EpochReport"]["digest"]
