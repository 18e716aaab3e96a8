#!/usr/bin/env python3
"""Write tests/vectors/eip712.json: the signed formats computed by the Python side (EIP-712
structs, the node-pay leaf, and a report's job totals: leaves, Merkle root and proofs).

The vectors use the escrow address of a deterministic deployment on a fresh embedded chain, so
the contract test can deploy the same way and check that Solidity computes the same digests.
Regenerate only when a signed format changes on purpose (and then on both sides).
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account

from contracts import (
    Chain,
    DeployConfig,
    JobTotals,
    csp_admission,
    deploy,
    digest,
    epoch_report,
    escrow_domain,
    job_submission,
    release_leaf,
    sign,
    totals_leaf,
    totals_proofs,
    totals_root,
)

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "eip712.json"
SIGNER_KEY = "0x" + "11" * 32  # a published test key: never holds anything


def vector_deployment(chain: Chain) -> str:
    """Deploy deterministically (account 0, fresh chain); return the escrow address."""
    a = chain.accounts
    dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=a[4],
                 genesis_time=1_800_000_000)
    return dep.job_escrow


def main() -> None:
    chain = Chain.embedded()
    escrow = vector_deployment(chain)
    domain = escrow_domain(chain.chain_id, escrow)
    signer = Account.from_key(SIGNER_KEY)
    totals = [JobTotals(1, 970_000, 20_000, 10_000), JobTotals(7, 0, 5, 2**128 - 1),  # type: ignore[arg-type]
              JobTotals(2**256 - 1, 2**128 - 1, 0, 3)]  # type: ignore[arg-type]
    messages = {
        "EpochReport": epoch_report(domain, 42, bytes.fromhex("ab" * 32), totals_root(totals)),
        "CspAdmission": csp_admission(domain, chain.accounts[5], b"kyc".ljust(32, b"\0"), 1_900_000_000, 7),
        "JobSubmission": job_submission(domain, 3, bytes.fromhex("cd" * 32), 2**64 + 5, 1_850_000_000),
    }
    out = {
        "domain": domain,
        "signer": signer.address,
        "structs": {
            name: {
                "message": {k: ("0x" + v.hex()) if isinstance(v, bytes) else v for k, v in m["message"].items()},
                "digest": "0x" + digest(m).hex(),
                "signature": "0x" + sign(m, SIGNER_KEY).hex(),
            }
            for name, m in messages.items()
        },
        # a report's job totals: one Merkle leaf per job, the root EpochReport.totalsRoot signs, and
        # each job's proof (what applyTotals takes)
        "totals": {
            "epoch": 42,
            "value": [t.as_abi() for t in totals],
            "leaves": ["0x" + totals_leaf(t).hex() for t in totals],
            "root": "0x" + totals_root(totals).hex(),
            "proofs": [["0x" + h.hex() for h in p.proof] for p in totals_proofs(42, totals)],
            "empty_root": "0x" + totals_root([]).hex(),
        },
        "release_leaf": {"job_id": 3, "license_id": 9, "cumulative": 123_456_789,
                         "leaf": "0x" + release_leaf(3, 9, 123_456_789).hex()},
    }
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
