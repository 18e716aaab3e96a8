"""Epoch report benchmark: an epoch of 10,000 nodes (5,000 jobs x 2 replicas) observed by 7
oracles; how long the leader takes to check the observations, build the report and every node's
Merkle proof, and a follower to check the report; and how much memory that takes. Writes
``benchmarks/report.json``.

Pure Python, one process, no chain and no mesh: the functions every oracle runs
(``oracle._observe``, ``oracle._observation``, ``oracle._report``). The epoch is 1 h. Every node
holds one replica; 10 % of the nodes are down for part of the epoch (each oracle sees the outage
start up to 2 s apart), 2 % of the replicas change hands mid-epoch, and one oracle lies (random
availability for every node, and a random time alive within every tenure: what shares are judged by).
The measured report builds on a previous one (epoch - 1), so it carries 10,000 cumulative pay
leaves forward as a running system does. Observations reach the leader as JSON (decoded and their
signatures checked, as from the mesh); the follower gets the report as JSON.

Each phase is timed ``--runs`` times (default 3) and the median is reported, with every run
listed. Memory: the peak of Python allocations (tracemalloc, in a separate untimed pass: tracing
slows the code down) while building the report and every proof, and the process's peak RSS.
Usage: ``python scripts/bench_report.py [--nodes 10000] [--replicas 2] [--oracles 7] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import write_result

from contracts import JobStatus, SettlementPolicy, escrow_domain
from oracle._observe import Observed, compute_observation
from oracle._report import (
    ChainInputs,
    EpochReport,
    JobInput,
    NodeInput,
    Observation,
    build_report,
    claim,
    select_observations,
    sign_observation,
    verify_report,
)
from oracle._settlement import Standing

ROOT = Path(__file__).resolve().parent.parent
EPOCH_MS = 3_600_000
EPOCH = 1_000
POLICY = SettlementPolicy(release_threshold=230, burn_floor=64, protocol_burn_bps=250)
PRICE = 2_000_000
DOMAIN = escrow_domain(31337, "0x" + "e5" * 20)


def oracle_keys(n: int) -> list[LocalAccount]:
    return [Account.from_key(hashlib.sha256(f"bench-oracle-{i}".encode()).digest()) for i in range(n)]


def node_addresses(n: int) -> list[str]:
    return ["0x" + hashlib.sha256(f"bench-node-{i}".encode()).hexdigest()[:40] for i in range(n)]


def inputs_for(epoch: int, nodes: list[str], replicas: int) -> ChainInputs:
    jobs = len(nodes) // replicas
    return ChainInputs(
        block=10_000 + epoch, block_hash="0x" + hashlib.sha256(str(epoch).encode()).hexdigest(),
        start_ms=epoch * EPOCH_MS, end_ms=(epoch + 1) * EPOCH_MS,
        jobs=tuple(JobInput(job_id=j + 1, price_per_node_epoch=PRICE, replicas=replicas, start_epoch=EPOCH - 10,
                            epochs=100, status=JobStatus.ACTIVE, policy=POLICY) for j in range(jobs)),
        nodes=tuple(sorted((NodeInput(node=n, license_id=i + 1, standing=Standing.ACTIVE)
                            for i, n in enumerate(nodes)), key=lambda n: n.node)))


def intervals(epoch: int, nodes: list[str], replicas: int, oracle: int, seed: int
              ) -> tuple[list[tuple[str, int, int]], list[tuple[int, int, str, int, int]]]:
    """What one oracle recorded: (alive, held) spans (module docstring). ``seed`` fixes the epoch's
    events; ``oracle`` only shifts when each oracle noticed them."""
    events, jitter = random.Random(seed * 1_000 + epoch), random.Random(seed * 1_000 + epoch + 7_919 * (oracle + 1))
    start, end = epoch * EPOCH_MS, (epoch + 1) * EPOCH_MS
    alive: list[tuple[str, int, int]] = []
    for node in nodes:
        if events.random() < 0.10:
            down = start + events.randrange(EPOCH_MS) + jitter.randrange(2_000)
            alive.append((node, start, min(down, end)))
        else:
            alive.append((node, start, end))
    held: list[tuple[int, int, str, int, int]] = []
    for i, node in enumerate(nodes):
        job, replica = i // replicas + 1, i % replicas
        if events.random() < 0.02:
            handover = start + events.randrange(EPOCH_MS) + jitter.randrange(2_000)
            held.append((job, replica, node, start, handover))
            held.append((job, replica, nodes[(i + 1) % len(nodes)], handover, end))
        else:
            held.append((job, replica, node, start, end))
    return alive, held


def observe(epoch: int, nodes: list[str], replicas: int, oracle: int, seed: int, liar: bool) -> Observed:
    alive, held = intervals(epoch, nodes, replicas, oracle, seed)
    start, end = epoch * EPOCH_MS, (epoch + 1) * EPOCH_MS
    observed = compute_observation(start, end, watched=[(start, end)], alive=alive, held=held)
    if liar:
        rng = random.Random(oracle)
        observed = Observed(observed.start_ms, observed.end_ms, observed.coverage_ms,
                            tuple((n, rng.randrange(256)) for n, _ in observed.availability),
                            tuple((job, replica, n, ms, rng.randrange(ms + 1))
                                  for job, replica, n, ms, _ in observed.tenure))
    return observed


def signed_round(epoch: int, nodes: list[str], replicas: int, keys: list[LocalAccount], seed: int) -> list[bytes]:
    """Every oracle's signed observation of ``epoch`` as it travels (JSON); the last oracle lies."""
    return [sign_observation(DOMAIN, epoch, observe(epoch, nodes, replicas, i, seed, liar=i == len(keys) - 1),
                             k.key).model_dump_json().encode() for i, k in enumerate(keys)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def oracle_round(inputs: ChainInputs, nodes: list[str], replicas: int, key: LocalAccount,
                 seed: int) -> dict[str, float]:
    """One oracle's own work at the end of the epoch: its observation from its spans, signed (s)."""
    alive, held = intervals(EPOCH, nodes, replicas, 0, seed)
    out: dict[str, float] = {}
    out["observe_one_oracle_s"], observed = timed(lambda: compute_observation(
        inputs.start_ms, inputs.end_ms, watched=[(inputs.start_ms, inputs.end_ms)], alive=alive, held=held))
    out["sign_one_observation_s"], _ = timed(lambda: sign_observation(DOMAIN, EPOCH, observed, key.key))
    return out


def leader_round(wire: list[bytes], inputs: ChainInputs, previous: EpochReport, oracles: list[str],
                 threshold: int) -> tuple[dict[str, float], EpochReport]:
    """The leader's work after the observations arrived, phase by phase (s)."""
    out: dict[str, float] = {}
    out["decode_observations_s"], received = timed(lambda: [Observation.model_validate_json(w) for w in wire])
    out["select_s"], selection = timed(lambda: select_observations(received, DOMAIN, oracles, EPOCH,
                                                                   inputs.start_ms, inputs.end_ms))
    out["build_s"], report = timed(lambda: build_report(EPOCH, selection.observations, inputs, previous, threshold))
    out["proofs_s"], claims = timed(lambda: [claim(report, j, lic) for j, lic, _ in report.pay])
    out["content_id_s"], _ = timed(report.content_id)
    if len(claims) != len(report.pay):
        raise RuntimeError("a claim is missing")
    return out, report


def follower_round(report_json: bytes, previous: EpochReport, oracles: list[str], threshold: int) -> dict[str, float]:
    """A follower's check of the report it received (s)."""
    out: dict[str, float] = {}
    out["decode_report_s"], report = timed(lambda: EpochReport.model_validate_json(report_json))
    out["verify_s"], _ = timed(lambda: verify_report(report, DOMAIN, oracles, threshold, previous))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--oracles", type=int, default=7)
    parser.add_argument("--threshold", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "report.json")
    args = parser.parse_args()
    rss_after_imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    keys = oracle_keys(args.oracles)
    oracles = [k.address for k in keys]
    nodes = node_addresses(args.nodes)
    print(f"setting up {args.nodes} nodes, {args.oracles} oracles", file=sys.stderr, flush=True)
    previous_inputs = inputs_for(EPOCH - 1, nodes, args.replicas)
    previous_wire = signed_round(EPOCH - 1, nodes, args.replicas, keys, args.seed)
    previous = build_report(EPOCH - 1, select_observations(
        [Observation.model_validate_json(w) for w in previous_wire], DOMAIN, oracles, EPOCH - 1,
        previous_inputs.start_ms, previous_inputs.end_ms).observations, previous_inputs, None, args.threshold)
    inputs = inputs_for(EPOCH, nodes, args.replicas)

    runs: list[dict[str, float]] = []
    for k in range(args.runs):
        run: dict[str, float] = {}
        run |= oracle_round(inputs, nodes, args.replicas, keys[0], args.seed)
        wire = signed_round(EPOCH, nodes, args.replicas, keys, args.seed)
        leader, report = leader_round(wire, inputs, previous, oracles, args.threshold)
        run |= leader
        run["leader_s"] = sum(leader[p] for p in ("decode_observations_s", "select_s", "build_s", "proofs_s",
                                                  "content_id_s"))
        report_json = report.model_dump_json().encode()
        follower = follower_round(report_json, previous, oracles, args.threshold)
        run |= follower
        run["follower_s"] = follower["decode_report_s"] + follower["verify_s"]
        run["report_json_mb"] = len(report_json) / 1e6
        run["observation_json_mb"] = statistics.mean(len(w) for w in wire) / 1e6
        runs.append(run)
        print(f"run {k}: leader {run['leader_s']:.2f} s (build {run['build_s']:.2f} s, proofs "
              f"{run['proofs_s']:.2f} s), follower {run['follower_s']:.2f} s", file=sys.stderr, flush=True)

    wire = signed_round(EPOCH, nodes, args.replicas, keys, args.seed)
    received = [Observation.model_validate_json(w) for w in wire]
    selection = select_observations(received, DOMAIN, oracles, EPOCH, inputs.start_ms, inputs.end_ms)
    tracemalloc.start()
    report = build_report(EPOCH, selection.observations, inputs, previous, args.threshold)
    claims = [claim(report, j, lic) for j, lic, _ in report.pay]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    medians = {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}
    out: dict[str, Any] = {
        "nodes": args.nodes, "jobs": args.nodes // args.replicas, "replicas": args.replicas,
        "oracles": args.oracles, "threshold": args.threshold, "lying_oracles": 1, "runs": args.runs,
        "leaves": len(report.pay), "claims": len(claims),
        **medians,
        "build_and_proofs_peak_mb": round(peak / 2**20, 1),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(rss_after_imports_mb, 1),
        "all_runs": [{key: round(v, 4) for key, v in r.items()} for r in runs],
    }
    write_result(args.out, out)


if __name__ == "__main__":
    main()
