#!/usr/bin/env python3
"""Gas of on-chain settlement, measured from receipts (gasUsed) on anvil at the pinned hardfork.

Writes JSON (default benchmarks/gas.json):
  submit_root_gas      {t: gas} for a steady-state epoch report (one job's totals) with t = 3, 5, 7
                       oracle signatures; report_gas_per_job: what each further job's totals add
  claim_gas            {"1_epoch": gas, "30_epochs": gas}: one node claiming one job's cumulative pay
  scale_job_gas        {"up": gas, "down": gas}: a running 10-replica, 30-epoch job's first scaleJob, to 11
                       replicas (pulls from the CSP) or to 9 (refunds it and first writes its reclaimed amount)
  gas_per_node_epoch   amortized gas per node-epoch for NODES nodes over EPOCHS epochs: every report,
                       plus every node claiming once; "individual" (each node its own transaction) and
                       "batched" (a keeper claims for BATCH licenses per transaction)
Usage: scripts/bench_gas.py [--out PATH] [--nodes N] [--epochs E] [--jobs J] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from eth_account import Account

from contracts import (
    Anvil,
    Chain,
    Claim,
    DeployConfig,
    Epoch,
    JobId,
    JobParams,
    JobTotals,
    SettlementPolicy,
    TokenUnits,
    deploy,
    epoch_report,
    release_leaf,
    sign,
    totals_hash,
)
from oracle import MerkleTree

PRICE = 1_000_000
EPOCH_S = 100


def _key(n: int) -> Account:
    return Account.from_key((0xBE7C << 16 | n).to_bytes(32, "big"))


class Bench:
    def __init__(self, chain: Chain, oracle_count: int, threshold: int, nodes: int) -> None:
        self.chain = chain
        a = chain.accounts
        self.admin, self.csp, self.keeper = a[0], a[1], a[2]
        self.oracle_keys = sorted((_key(100 + i) for i in range(oracle_count)), key=lambda k: k.address)
        attester = _key(99)
        cfg = DeployConfig(epoch_seconds=EPOCH_S, close_grace_epochs=2, relink_cooldown_s=0,
                           oracle_threshold=threshold, mock_token=True)
        self.dep = deploy(chain, cfg, admin=self.admin, oracles=[k.address for k in self.oracle_keys],
                          attester=attester.address)
        self.licenses = self.dep.licenses(chain)
        self.escrow = self.dep.escrow(chain)
        self.token = self.dep.payment_token(chain)
        self.threshold = threshold
        # distinct fresh owners, so every payout lands on an empty token balance (the honest worst case)
        self.owners = [_key(10_000 + i).address for i in range(nodes)]
        self.license_ids = [self.licenses.mint(o, sender=self.admin) for o in self.owners]
        self.licenses.mint(self.csp, sender=self.admin)
        self.token.mint(self.csp, 10**15, sender=self.admin)
        self.token.approve(self.escrow.address, 10**15, sender=self.csp)
        from contracts import csp_admission
        valid = chain.now() + 10**7
        sig = sign(csp_admission(self.escrow.domain(), self.csp, b"\x00" * 32, valid, 1), attester.key)
        self.escrow.admit_csp(self.csp, b"\x00" * 32, valid, 1, sig, sender=self.csp)

    def create_jobs(self, jobs: int, replicas: int, epochs: int) -> list[JobId]:
        start = self.escrow.current_epoch()
        ids = []
        for n in range(jobs):
            params = JobParams(spec_hash=n.to_bytes(32, "big"), token=self.token.address, replicas=replicas,
                               epochs=epochs, start_epoch=Epoch(start), price_per_node_epoch=TokenUnits(PRICE),
                               policy=SettlementPolicy(200, 0, 100))
            ids.append(self.escrow.create_job(params, sender=self.csp))
        return ids

    def report(self, epoch: int, pay: dict[tuple[int, int], int], totals: list[JobTotals]) -> tuple[MerkleTree, int]:
        tree = MerkleTree(release_leaf(j, lic, amt) for (j, lic), amt in pay.items())
        msg = epoch_report(self.escrow.domain(), epoch, tree.root, totals_hash(totals))
        sigs = [sign(msg, k.key) for k in self.oracle_keys[: self.threshold]]
        target = self.dep.genesis_time + (epoch + 1) * EPOCH_S
        if self.chain.now() < target:
            self.chain.advance_time(target - self.chain.now())
        receipt = self.escrow.submit_report(epoch, tree.root, totals, sigs, sender=self.keeper)
        return tree, int(receipt["gasUsed"])

    def claims(self, tree: MerkleTree, epoch: int, pay: dict[tuple[int, int], int]) -> list[Claim]:
        return [Claim(JobId(j), lic, Epoch(epoch), TokenUnits(amt), tree.proof(release_leaf(j, lic, amt)))
                for (j, lic), amt in pay.items()]


def settle(bench: Bench, jobs: list[JobId], replicas: int, epochs: int, nodes: int,
           ) -> tuple[list[int], MerkleTree, dict[tuple[int, int], int], int]:
    """Run ``epochs`` reports over ``nodes`` nodes spread across ``jobs``; return report gas, last tree."""
    assignment = {(jobs[i // replicas], bench.license_ids[i]) for i in range(nodes)}
    start = bench.escrow.get_job(jobs[0]).start_epoch
    report_gas, tree, pay = [], None, {}
    for e in range(epochs):
        epoch = start + e
        served = e + 1
        # 97 % of the price released, 1 % protocol burn; the rest is the CSP's (SETTLEMENT.md)
        pay = {k: served * PRICE * 97 // 100 for k in assignment}
        totals = [JobTotals(j, TokenUnits(served * replicas * PRICE * 97 // 100),
                            TokenUnits(served * replicas * PRICE * 2 // 100),
                            TokenUnits(served * replicas * PRICE // 100)) for j in jobs]
        tree, gas = bench.report(epoch, pay, totals)
        report_gas.append(gas)
    assert tree is not None
    return report_gas, tree, pay, start + epochs - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gas.json"))
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, object] = {"backend": "anvil 1.7.1, hardfork prague", "source": "receipt gasUsed"}

    with Anvil() as node:
        # -- report gas by threshold, in steady state (the second report: a job's first allocation
        # writes fresh slots once); the root's size does not matter, the number of jobs does
        submit: dict[str, int] = {}
        for t in (3, 5, 7):
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=t, nodes=10)
            jobs = bench.create_jobs(1, 10, 2)
            gas, _, _, _ = settle(bench, jobs, 10, 2, 10)
            submit[str(t)] = gas[1]
            chain.revert_to(snap)
            if t == 5:
                bench = Bench(chain, oracle_count=7, threshold=t, nodes=10)
                jobs = bench.create_jobs(10, 1, 2)
                gas10, _, _, _ = settle(bench, jobs, 1, 2, 10)
                result["report_gas_per_job"] = round((gas10[1] - submit["5"]) / 9)
                result["first_report_gas_per_job"] = round((gas10[0] - gas10[1]) / 10)
                chain.revert_to(snap)
        result["submit_root_gas"] = submit

        # -- one claim covering 1 epoch and 30 epochs (cumulative amounts: the same transaction)
        claim_gas: dict[str, int] = {}
        for covered in (1, 30):
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=5, nodes=100)
            jobs = bench.create_jobs(1, 100, covered)
            _, tree, pay, last = settle(bench, jobs, 100, covered, 100)
            claims = bench.claims(tree, last, pay)
            gases = [int(bench.escrow.claim([c], sender=bench.keeper)["gasUsed"]) for c in claims[:20]]
            claim_gas[f"{covered}_epoch{'s' if covered > 1 else ''}"] = int(statistics.median(gases))
            chain.revert_to(snap)
        result["claim_gas"] = claim_gas

        # -- scaleJob by one replica, up and down, each the first scale of a job in its first epoch
        chain = Chain.connect(node.url)
        snap = chain.snapshot()
        bench = Bench(chain, oracle_count=7, threshold=5, nodes=1)
        up, down = bench.create_jobs(2, 10, 30)
        result["scale_job_gas"] = {
            "up": int(bench.escrow.scale_job(up, 11, b"\x5c" * 32, sender=bench.csp)["gasUsed"]),
            "down": int(bench.escrow.scale_job(down, 9, b"\x5c" * 32, sender=bench.csp)["gasUsed"]),
        }
        chain.revert_to(snap)

        # -- the whole settlement of NODES nodes over EPOCHS epochs, t = 5 of 7
        per: dict[str, object] = {"nodes": args.nodes, "epochs": args.epochs, "jobs": args.jobs, "threshold": 5}
        for mode in ("individual", "batched"):
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=5, nodes=args.nodes)
            replicas = args.nodes // args.jobs
            jobs = bench.create_jobs(args.jobs, replicas, args.epochs)
            report_gas, tree, pay, last = settle(bench, jobs, replicas, args.epochs, args.nodes)
            claims = bench.claims(tree, last, pay)
            size = 1 if mode == "individual" else args.batch
            claim_total = 0
            for i in range(0, len(claims), size):
                claim_total += int(bench.escrow.claim(claims[i:i + size], sender=bench.keeper)["gasUsed"])
            node_epochs = args.nodes * args.epochs
            per[mode] = {
                "reports_gas": sum(report_gas),
                "claims_gas": claim_total,
                "gas_per_node_epoch": round((sum(report_gas) + claim_total) / node_epochs),
                "claim_transactions": -(-len(claims) // size),
            }
            chain.revert_to(snap)
        result["gas_per_node_epoch"] = per
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
