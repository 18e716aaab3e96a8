#!/usr/bin/env python3
"""Gas of on-chain settlement, measured from receipts (gasUsed) on anvil at the pinned hardfork.

Writes JSON (default benchmarks/gas.json):
  submit_root_gas      {t: gas} for a steady-state epoch report (two roots, no per-job work) with t = 3, 5, 7
                       oracle signatures; report_gas_per_job: what each further job adds to a report (~0)
  apply_totals_gas     applyTotals of one job's totals: "first" (its first application writes fresh slots),
                       "steady" (a later one), and the same per job when 9 jobs' totals are applied in one
                       transaction
  claim_gas            {"1_epoch": gas, "30_epochs": gas}: one node claiming one job's cumulative pay (totals
                       applied before); "1_epoch_applying_its_totals": the same claim applying them (multicall)
  scale_job_gas        {"up": gas, "down": gas}: a running 10-replica, 30-epoch job's first scaleJob, to 11
                       replicas (pulls from the CSP) or to 9 (refunds it and first writes its reclaimed amount)
  gas_per_node_epoch   per shape ("<jobs>x<replicas>": --jobs x --nodes/--jobs, and 50 x 2 on 100 nodes), the
                       gas per node-epoch over EPOCHS epochs of every report plus a keeper claiming every node's
                       pay every 1, 10, 24 or EPOCHS epochs, BATCH claims per transaction, each transaction applying
                       the totals of the jobs it claims from (once per round), then executing the jobs'
                       burns and taking the CSP's refunds (one transaction each per round; in claims_gas).
                       With one claim round (every EPOCHS) each claim pays first-time costs: the (job,
                       license) claimed slot, the fresh owner's token balance, each job's first applyTotals.
                       Hence also, from one run of 2 x EPOCHS epochs claiming every EPOCHS epochs (jobs
                       created for 2 x EPOCHS epochs):
    every_<E>_first_window   reports of epochs 1..E + the first claim round (first-time writes), per
                             node-epoch of that window (nodes x E): gas_per_node_epoch, reports_gas, claims_gas,
                             reports_per_node_epoch, claim_transactions
    every_<E>_steady_window  the same for reports of epochs E+1..2E + the second claim round, which rewrites
                             nonzero slots (claimed amounts, owner balances, the jobs' applied totals)
    claim_round_gas_first / claim_round_gas_steady   total gas of each claim round (claim transactions
                             with the totals they apply); *_per_node: that divided by the nodes
Usage: scripts/bench_gas.py [--out PATH] [--nodes N] [--jobs J] [--epochs E] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from contracts import (
    Anvil,
    Chain,
    Claim,
    DeployConfig,
    Epoch,
    JobId,
    JobParams,
    JobTotals,
    LicenseId,
    MerkleTree,
    SettlementPolicy,
    TokenUnits,
    deploy,
    epoch_report,
    release_leaf,
    sign,
    totals_proofs,
    totals_root,
)

PRICE = 1_000_000
EPOCH_S = 100


def _key(n: int) -> LocalAccount:
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
        msg = epoch_report(self.escrow.domain(), epoch, tree.root, totals_root(totals))
        sigs = [sign(msg, k.key) for k in self.oracle_keys[: self.threshold]]
        target = self.dep.genesis_time + (epoch + 1) * EPOCH_S
        if self.chain.now() < target:
            self.chain.advance_time(target - self.chain.now())
        receipt = self.escrow.submit_report(epoch, tree.root, totals_root(totals), sigs, sender=self.keeper)
        return tree, int(receipt["gasUsed"])

    def claim_round(self, tree: MerkleTree, epoch: int, pay: dict[tuple[int, int], int], totals: list[JobTotals],
                    batch: int) -> list[int]:
        """A keeper claims every leaf of the report of ``epoch``, ``batch`` per transaction; each
        transaction applies, in the same call, the totals of the jobs no earlier one of the round
        applied. Then the keeper executes the jobs' burns and the CSP takes their refunds (one
        transaction each, every job of the round: the money settled, not only the nodes' pay).
        Returns each transaction's gas."""
        claims = self.claims(tree, epoch, pay)
        claims.sort(key=lambda c: (c.job_id, c.license_id))
        applied: set[int] = set()
        gas = []
        for i in range(0, len(claims), batch):
            chunk = claims[i:i + batch]
            fresh = sorted({c.job_id for c in chunk} - applied)
            applied.update(fresh)
            proofs = totals_proofs(epoch, totals, fresh) if fresh else []
            gas.append(int(self.escrow.claim(chunk, sender=self.keeper, totals=proofs)["gasUsed"]))
        jobs = sorted(applied)
        gas.append(int(self.escrow.execute_burn(jobs, sender=self.keeper)["gasUsed"]))
        gas.append(int(self.escrow.take_refund(jobs, sender=self.csp)["gasUsed"]))
        return gas

    def claims(self, tree: MerkleTree, epoch: int, pay: dict[tuple[int, int], int]) -> list[Claim]:
        return [Claim(JobId(j), LicenseId(lic), Epoch(epoch), TokenUnits(amt), tree.proof(release_leaf(j, lic, amt)))
                for (j, lic), amt in pay.items()]


@dataclass
class Run:
    report_gas: list[int]  # each report's
    claim_gas: list[int]  # each claim transaction's (with the totals it applies)
    claim_rounds: list[list[int]]  # the same, grouped by claim round
    tree: MerkleTree  # of the last report
    pay: dict[tuple[int, int], int]
    totals: list[JobTotals]
    last: int  # its epoch


def settle(bench: Bench, jobs: list[JobId], replicas: int, epochs: int, nodes: int, *, claim_every: int = 0,
           batch: int = 50) -> Run:
    """Run ``epochs`` reports over ``nodes`` nodes spread across ``jobs`` (``replicas`` each). With
    ``claim_every`` = k, a keeper claims every node's pay every k epochs and after the last report,
    ``batch`` claims per transaction, each transaction first applying the totals of the jobs it is
    the first of the round to claim from (``multicall``). Returns the gas of each part."""
    assignment = {(jobs[i // replicas], bench.license_ids[i]) for i in range(nodes)}
    start = bench.escrow.get_job(jobs[0]).start_epoch
    report_gas: list[int] = []
    claim_gas: list[int] = []
    claim_rounds: list[list[int]] = []
    tree: MerkleTree | None = None
    pay: dict[tuple[int, int], int] = {}
    totals: list[JobTotals] = []
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
        if claim_every and (served % claim_every == 0 or served == epochs):
            claim_rounds.append(bench.claim_round(tree, epoch, pay, totals, batch))
            claim_gas.extend(claim_rounds[-1])
    assert tree is not None
    return Run(report_gas, claim_gas, claim_rounds, tree, pay, totals, start + epochs - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gas.json"))
    parser.add_argument("--nodes", type=int, default=1000, help="nodes of the first shape")
    parser.add_argument("--jobs", type=int, default=10, help="jobs of the first shape")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs settled (the foundation issue's shape: 1,000 nodes over 30 epochs)")
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, object] = {"backend": "anvil 1.7.1, hardfork prague", "source": "receipt gasUsed"}

    with Anvil() as node:
        # -- report gas by threshold, in steady state (the second report); it no longer depends on
        # the number of jobs (report_gas_per_job: (10-job report - 1-job report) / 9)
        submit: dict[str, int] = {}
        for t in (3, 5, 7):
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=t, nodes=10)
            jobs = bench.create_jobs(1, 10, 2)
            submit[str(t)] = settle(bench, jobs, 10, 2, 10).report_gas[1]
            chain.revert_to(snap)
            if t == 5:
                bench = Bench(chain, oracle_count=7, threshold=t, nodes=10)
                jobs = bench.create_jobs(10, 1, 2)
                gas10 = settle(bench, jobs, 1, 2, 10).report_gas
                result["report_gas_per_job"] = round((gas10[1] - submit["5"]) / 9)
                chain.revert_to(snap)
        result["submit_root_gas"] = submit

        # -- applyTotals: one job's totals alone (its first application writes fresh slots; later
        # ones rewrite them), and per job when 10 jobs' totals are applied in one transaction
        chain = Chain.connect(node.url)
        snap = chain.snapshot()
        bench = Bench(chain, oracle_count=7, threshold=5, nodes=10)
        jobs = bench.create_jobs(10, 1, 3)
        start = bench.escrow.get_job(jobs[0]).start_epoch
        apply_gas: dict[str, int] = {}
        for e in range(3):
            totals = [JobTotals(j, TokenUnits((e + 1) * PRICE * 97 // 100), TokenUnits((e + 1) * PRICE * 2 // 100),
                                TokenUnits((e + 1) * PRICE // 100)) for j in jobs]
            bench.report(start + e, {(jobs[0], bench.license_ids[0]): 1}, totals)
            if e < 2:  # job 0 alone: its first application, then a later one
                receipt = bench.escrow.apply_totals(totals_proofs(start + e, totals, jobs[:1]), sender=bench.keeper)
                apply_gas["first" if e == 0 else "steady"] = int(receipt["gasUsed"])
            if e > 0:  # the 9 others in one transaction: their first application, then a later one
                receipt = bench.escrow.apply_totals(totals_proofs(start + e, totals, jobs[1:]), sender=bench.keeper)
                kind = "first" if e == 1 else "steady"
                apply_gas[f"per_job_in_a_batch_of_9_{kind}"] = round(int(receipt["gasUsed"]) / 9)
        chain.revert_to(snap)
        result["apply_totals_gas"] = apply_gas

        # -- one claim covering 1 epoch and 30 epochs (cumulative amounts: the same transaction),
        # its job's totals applied beforehand; and one claim applying them in the same transaction
        claim_gas: dict[str, int] = {}
        for covered in (1, 30):
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=5, nodes=100)
            jobs = bench.create_jobs(1, 100, covered)
            run = settle(bench, jobs, 100, covered, 100)
            claims = bench.claims(run.tree, run.last, run.pay)
            with_totals = int(bench.escrow.claim(claims[:1], sender=bench.keeper,
                                                 totals=totals_proofs(run.last, run.totals))["gasUsed"])
            gases = [int(bench.escrow.claim([c], sender=bench.keeper)["gasUsed"]) for c in claims[1:21]]
            claim_gas[f"{covered}_epoch{'s' if covered > 1 else ''}"] = int(statistics.median(gases))
            if covered == 1:
                claim_gas["1_epoch_applying_its_totals"] = with_totals
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

        # -- the whole settlement over EPOCHS epochs, t = 5 of 7, for two shapes, with a keeper
        # claiming every node's pay every 1, 10, 24 or EPOCHS epochs (and after the last report)
        per: dict[str, object] = {}
        for nodes, job_count in ((args.nodes, args.jobs), (100, 50)):
            replicas = nodes // job_count
            shape: dict[str, object] = {"nodes": nodes, "jobs": job_count, "replicas": replicas,
                                        "epochs": args.epochs, "threshold": 5, "batch": args.batch}
            for every in sorted({c for c in (1, 10, 24) if c < args.epochs} | {args.epochs}):
                chain = Chain.connect(node.url)
                snap = chain.snapshot()
                bench = Bench(chain, oracle_count=7, threshold=5, nodes=nodes)
                jobs = bench.create_jobs(job_count, replicas, args.epochs)
                run = settle(bench, jobs, replicas, args.epochs, nodes, claim_every=every, batch=args.batch)
                reports, claimed = sum(run.report_gas), sum(run.claim_gas)
                node_epochs = nodes * args.epochs
                shape[f"claim_every_{every}"] = {
                    "reports_gas": reports,
                    "claims_gas": claimed,  # with the totals each claim transaction applies, the burns and refunds
                    "gas_per_node_epoch": round((reports + claimed) / node_epochs),
                    "reports_per_node_epoch": round(reports / node_epochs),
                    "claim_transactions": len(run.claim_gas),  # with one burn and one refund per round
                }
                chain.revert_to(snap)
            # first claim round vs a later one: 2 x EPOCHS epochs, claiming every EPOCHS epochs
            epochs = args.epochs
            chain = Chain.connect(node.url)
            snap = chain.snapshot()
            bench = Bench(chain, oracle_count=7, threshold=5, nodes=nodes)
            jobs = bench.create_jobs(job_count, replicas, 2 * epochs)
            run = settle(bench, jobs, replicas, 2 * epochs, nodes, claim_every=epochs, batch=args.batch)
            assert len(run.report_gas) == 2 * epochs
            assert len(run.claim_rounds) == 2
            node_epochs = nodes * epochs
            for w, kind in enumerate(("first", "steady")):
                reports = sum(run.report_gas[w * epochs:(w + 1) * epochs])
                claimed = sum(run.claim_rounds[w])
                shape[f"every_{epochs}_{kind}_window"] = {
                    "epochs": f"{w * epochs + 1}-{(w + 1) * epochs}",
                    "reports_gas": reports,
                    "claims_gas": claimed,  # with the totals each claim transaction applies, the burns and refunds
                    "gas_per_node_epoch": round((reports + claimed) / node_epochs),
                    "reports_per_node_epoch": round(reports / node_epochs),
                    "claim_transactions": len(run.claim_rounds[w]),
                }
                shape[f"claim_round_gas_{kind}"] = claimed
                shape[f"claim_round_gas_{kind}_per_node"] = round(claimed / nodes)
            chain.revert_to(snap)
            per[f"{job_count}x{replicas}"] = shape
        result["gas_per_node_epoch"] = per
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
