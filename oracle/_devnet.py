"""The devnet run: set up the chain side of a deployment and settle one epoch end to end.

Steps: deploy the contracts, license and link the nodes, register the oracles, admit and fund a
CSP, fund a job, let its epoch end, have a quorum sign the report, claim, refund, burn, and check
conservation. Keys come from the ``new_key`` argument; private keys are never printed or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from contracts import (
    Chain,
    Claim,
    DeployConfig,
    Epoch,
    JobId,
    JobParams,
    JobTotals,
    LicenseId,
    SettlementPolicy,
    TokenUnits,
    csp_admission,
    deploy,
    epoch_report,
    release_leaf,
    sign,
    totals_hash,
)

from ._merkle import MerkleTree
from ._settlement import compute_share_outcome

log = logging.getLogger("deedmesh.devnet")

PRICE = TokenUnits(2_000_000)  # 2 mUSD per node-epoch
CSP_FUNDS = TokenUnits(1_000_000_000)
POLICY = SettlementPolicy(release_threshold=230, burn_floor=64, protocol_burn_bps=250)


@dataclass(frozen=True)
class DevnetShape:
    nodes: int = 5
    oracles: int = 4
    threshold: int = 3


def run_devnet(chain: Chain, shape: DevnetShape, config: DeployConfig, new_key: Callable[[], LocalAccount],
               progress: Callable[[str], object] = lambda _: None) -> dict[str, Any]:
    """Run the devnet on ``chain``; return a JSON-ready summary."""
    accounts = chain.accounts
    admin, csp = accounts[0], accounts[1]
    operators = accounts[2:]
    node_keys = [new_key() for _ in range(shape.nodes)]
    oracle_keys = sorted((new_key() for _ in range(shape.oracles)), key=lambda k: k.address)
    attester = new_key()

    progress("deploying contracts")
    config = DeployConfig(config.epoch_seconds, config.close_grace_epochs, config.relink_cooldown_s,
                          shape.threshold, mock_token=True)
    dep = deploy(chain, config, admin=admin, oracles=[k.address for k in oracle_keys], attester=attester.address)
    licenses, escrow, token = dep.licenses(chain), dep.escrow(chain), dep.payment_token(chain)
    log.info("deployed", extra={"escrow": dep.job_escrow, "chain_id": dep.chain_id})

    progress("licensing and linking nodes")
    nodes: list[dict[str, Any]] = []
    for i, node in enumerate(node_keys):
        owner = operators[i % len(operators)]
        license_id = licenses.mint(owner, sender=admin)
        licenses.link_node(license_id, node.address, sender=owner)
        nodes.append({"license_id": license_id, "node": node.address, "owner": owner,
                      "eligible": licenses.is_node_eligible(node.address)})

    progress("admitting the CSP")
    licenses.mint(csp, sender=admin)
    token.mint(csp, CSP_FUNDS, sender=admin)
    valid_until = chain.now() + 30 * 24 * 3600
    kyc_ref = b"devnet-kyc".ljust(32, b"\0")
    admission = sign(csp_admission(escrow.domain(), csp, kyc_ref, valid_until, 1), attester.key)
    escrow.admit_csp(csp, kyc_ref, valid_until, 1, admission, sender=csp)

    progress("funding a job")
    replicas = min(3, shape.nodes)
    params = JobParams(spec_hash=b"devnet-demo".ljust(32, b"\0"), token=token.address, replicas=replicas, epochs=1,
                       start_epoch=Epoch(escrow.current_epoch() + 1), price_per_node_epoch=PRICE,
                       policy=POLICY)  # next epoch: a block mined across an epoch boundary must not find it past
    token.approve(escrow.address, params.deposit, sender=csp)
    job = escrow.create_job(params, sender=csp)
    epoch = params.start_epoch

    progress(f"waiting for epoch {epoch} to end")
    genesis, seconds, _ = escrow.epoch_clock()
    end = genesis + (epoch + 1) * seconds
    if chain.now() < end:
        chain.advance_time(end - chain.now())

    progress("signing and submitting the epoch report")
    # Until the oracles observe the mesh, availability is given: every replica's node was seen the
    # whole epoch except the last one, seen 60 % of it (withheld for the CSP by the policy).
    availability = [255] * (replicas - 1) + [153] if replicas > 1 else [255]
    pay: dict[tuple[int, int], int] = {}
    release = refund = burn = 0
    for n, a in zip(nodes[:replicas], availability, strict=True):
        outcome = compute_share_outcome(PRICE, a, POLICY)
        release, refund, burn = release + outcome.node, refund + outcome.refund, burn + outcome.burn
        if outcome.node:
            pay[(job, int(n["license_id"]))] = outcome.node
    totals = [JobTotals(job, TokenUnits(release), TokenUnits(refund), TokenUnits(burn))]
    tree = MerkleTree(release_leaf(j, lic, amount) for (j, lic), amount in pay.items())
    message = epoch_report(escrow.domain(), epoch, tree.root, totals_hash(totals))
    signatures = [sign(message, k.key) for k in oracle_keys[: shape.threshold]]
    escrow.submit_report(epoch, tree.root, totals, signatures, sender=admin)

    progress("claiming, refunding and burning")
    claims = [Claim(JobId(j), LicenseId(lic), Epoch(epoch), TokenUnits(amount),
                    tree.proof(release_leaf(j, lic, amount))) for (j, lic), amount in pay.items()]
    escrow.claim(claims, sender=admin)
    if refund:
        escrow.take_refund([job], sender=csp)
    if burn:
        escrow.execute_burn([job], sender=admin)

    final = escrow.get_job(job)
    terms = final.conservation()
    balanced = (terms["deposited"] == terms["released"] + terms["refunded"] + terms["burned"] + terms["locked"]
                and token.balance_of(escrow.address) == final.held)
    return {
        "chain": {"backend": chain.kind, "url": chain.url, "chain_id": dep.chain_id},
        "contracts": {"LicenseRegistry": dep.license_registry, "OracleRegistry": dep.oracle_registry,
                      "JobEscrow": dep.job_escrow, "MockStablecoin": dep.token},
        "deployment": {"block": dep.block, "genesis_time": dep.genesis_time, "epoch_seconds": dep.epoch_seconds},
        "nodes": nodes,
        "oracles": [k.address for k in oracle_keys],
        "oracle_threshold": shape.threshold,
        "csp": csp,
        "settled_epoch": epoch,
        "report_signers": len(signatures),
        "job": {"job_id": job, **{k: int(v) for k, v in terms.items()}},
        "epochs_settled": 1,
        "conservation": {"balanced": balanced, "escrow_balance": int(token.balance_of(escrow.address)),
                         "escrow_holds": int(final.held)},
    }
