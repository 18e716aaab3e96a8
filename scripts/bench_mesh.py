"""Mesh benchmark: deedmesh's node (liveness and capacity by neighbour sync, capacity changes on
gossipsub) against the baseline of raw py-libp2p gossipsub with the same host settings and the
naive liveness design (every node floods a heartbeat every interval), measured in the same run.

Writes ``benchmarks/mesh.json``::

    propagation_ms  time for a published message to reach all N nodes, p50/p99:
                    {"inprocess": {"10": {...}, "20": ..., "50": ...}, "processes": {"10": ...}}
    detection_s     time until every node marks a SIGKILLed / SIGSTOPped node dead (processes)
    idle_cpu        CPU (fraction of one core) and RSS of N nodes in one process, idle
    baseline        the same keys for raw gossipsub

For deedmesh a "published message" is a capacity change (signed, validated at every hop, flooded
by neighbour sync without the wave's batching delay); its arrival time is the node's own record
of when the new version reached it. Liveness keeps running while propagation is measured (that is the
real system); the baseline's propagation runs without heartbeats. Processes use anvil for the
license registry. Usage: ``python scripts/bench_mesh.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_baseline
from _bench_baseline import (
    _host_stack,
    _rss_mb,
    detection_processes,
    dial_plan,
    idle_inprocess,
    node_identity,
    percentile,
    propagation_inprocess,
    propagation_processes,
    quiet_libp2p_logs,
    spawn_node,
)

from contracts import Anvil, Chain, DeployConfig, deploy
from contracts._anvil import stop_process
from mesh._membership import LivenessConfig, PeerState
from mesh._node import Node, NodeConfig, open_node
from mesh._transport_libp2p import Libp2pTransport, open_libp2p_transport
from mesh._wire_capacity import Capacity, Resources

ROOT = Path(__file__).resolve().parent.parent
DEEDMESH = str(Path(sys.executable).parent / "deedmesh")
PASSWORD = "bench-password"
DIALS = 3  # each deedmesh node dials 3 others (i-1 and two at random); its discovery tops up to 6
BASELINE_DIALS = 4  # raw py-libp2p has no discovery: each host dials 4 so gossipsub can reach D_lo = 4


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def capacity(version: int) -> Capacity:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=0, disk_mb=10_000)
    free = Resources(cpu_millis=version % 4000, memory_mb=4096, gpus=0, disk_mb=5000)
    return Capacity(version=version, total=total, free=free)


def stats(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1), "samples": len(values)}


async def wait_until(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    with trio.move_on_after(deadline_s):
        while not predicate():  # noqa: ASYNC110 (a benchmark polls the nodes it drives)
            await trio.sleep(0.05)
        return
    raise TimeoutError(f"{what} within {deadline_s} s")


# --------------------------------------------------------------------------------------------
# deedmesh in one process


async def ours_inprocess(n: int, interval_ms: int, messages: int, rate_per_s: float, warmup_s: float,
                         measure_s: float, seed: int, dials: int | None = None) -> dict[str, Any]:
    """Idle CPU/RSS, then propagation of capacity changes, then detection of a closed node."""
    quiet_libp2p_logs()
    rss_before = _rss_mb()
    idents = [node_identity(seed, i) for i in range(n)]
    eligible = {i.address for i in idents}
    config = NodeConfig(liveness=LivenessConfig(heartbeat_interval_ms=interval_ms))
    nodes: dict[int, Node] = {}
    scopes = [trio.CancelScope() for _ in range(n)]
    async with _host_stack() as stack:
        transports: list[Libp2pTransport] = [await stack.enter_async_context(open_libp2p_transport(i))
                                             for i in idents]
        async with trio.open_nursery() as dialing:
            for i, targets in enumerate(dial_plan(n, random.Random(seed), dials)):
                for j in targets:
                    dialing.start_soon(transports[i].connect, transports[j].addrs()[0])

        async def run(i: int) -> None:
            with scopes[i]:
                async with open_node(config, idents[i], transports[i], capacity(1), eligible.__contains__) as node:
                    nodes[i] = node
                    await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            start = time.monotonic()
            for i in range(n):
                nursery.start_soon(run, i)
            await wait_until(lambda: len(nodes) == n and all(len(x.membership.alive()) == n - 1
                                                             for x in nodes.values()), 60 + n, "all alive")
            up_s = time.monotonic() - start
            # idle: liveness only
            await trio.sleep(warmup_s)
            transitions_before = sum(len(x.transitions) for x in nodes.values())
            cpu0, t0 = time.process_time(), time.monotonic()
            await trio.sleep(measure_s)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
            false_dead = sum(len(x.transitions) for x in nodes.values()) - transitions_before
            rss = _rss_mb()
            frames = sum(x.gossip.counters[("deedmesh/heartbeat/1", "ACCEPT", "ok")] for x in nodes.values())
            # propagation of capacity changes
            rng = random.Random(seed + 1)
            full: list[float] = []
            lost = 0
            for k in range(messages):
                sender = rng.randrange(n)
                version = 100 + k
                sent = wall_ms()
                nodes[sender].set_capacity(capacity(version))
                others = [x for i, x in nodes.items() if i != sender]
                addr = idents[sender].address
                try:
                    await wait_until(lambda: all(x.capacities.get(addr) is not None  # noqa: B023
                                                 and x.capacities[addr].version >= version  # noqa: B023
                                                 for x in others), 10, "propagation")  # noqa: B023
                    full.append(max(x.capacity_received_ms[addr] for x in others) - sent)
                except TimeoutError:
                    lost += 1
                await trio.sleep(max(0.0, 1 / rate_per_s - (wall_ms() - sent) / 1000))
            # detection: one node stops (its host closes, as after SIGKILL)
            victim = n - 1
            gone = idents[victim].address
            scopes[victim].cancel()
            stopped = wall_ms()
            survivors = [x for i, x in nodes.items() if i != victim]
            await wait_until(lambda: all(x.state_of(gone) is PeerState.DEAD for x in survivors), 120, "detection")
            detection = (max(x.state_since_ms[gone] for x in survivors) - stopped) / 1000
            nursery.cancel_scope.cancel()
    return {"n": n, "interval_s": interval_ms / 1000, "up_s": round(up_s, 1),
            "idle": {"cpu_core_fraction": round(cpu, 3), "rss_mb": round(rss, 1),
                     "rss_mb_per_node": round((rss - rss_before) / n, 2), "false_transitions": false_dead,
                     "heartbeats_accepted_per_node": frames // n},
            "propagation_ms": stats(full) | {"lost": lost},
            "detection_close_s": round(detection, 2)}


# --------------------------------------------------------------------------------------------
# deedmesh as processes (deedmesh node run), against anvil


def http(url: str, body: bytes | None = None, token: str | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def poll(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)  # polling other processes' HTTP APIs with a deadline
    raise TimeoutError(f"{what} within {deadline_s} s")


def ours_processes(n: int, interval_ms: int, messages: int, rate_per_s: float, seed: int,
                   workdir: Path) -> dict[str, Any]:
    idents = [node_identity(seed + 7, i) for i in range(n)]
    procs: list[subprocess.Popen[str]] = []
    with Anvil() as anvil:
        chain = Chain.connect(anvil.url)
        a = chain.accounts
        dep = deploy(chain, DeployConfig.devnet(), admin=a[0], oracles=[a[1], a[2], a[3]], attester=a[4])
        licenses = dep.licenses(chain)
        for ident in idents:
            lic = licenses.mint(a[5], sender=a[0])
            licenses.link_node(lic, ident.address, sender=a[5])
        record = workdir / "deployment.json"
        record.write_text(dep.to_json())
        ready: list[dict[str, Any]] = []
        try:
            start = time.monotonic()
            for i, ident in enumerate(idents):
                procs.append(spawn_node(i, ident, workdir, anvil.url, record, ready,
                                        ["--heartbeat-interval-ms", str(interval_ms)]))
            apis = [r["api"] for r in ready]

            def states(i: int) -> dict[str, Any]:
                return {p["address"]: p for p in http(f"{apis[i]}/peers")}

            poll(lambda: all(sum(p["state"] == "alive" for p in states(i).values()) == n - 1 for i in range(n)),
                 60 + 2 * n, "all alive")
            up_s = time.monotonic() - start
            time.sleep(3)  # let gossipsub meshes settle after the last join (a benchmark, not a test)
            rng = random.Random(seed)
            full: list[float] = []
            for k in range(messages):
                sender = rng.randrange(n)
                version = 100 + k
                token = Path(ready[sender]["operator_token_file"]).read_text().strip()
                sent = wall_ms()
                http(f"{apis[sender]}/admin/capacity", capacity(version).model_dump_json().encode(), token)
                addr = ready[sender]["address"]
                arrivals: dict[int, int] = {}

                def arrived(addr: str = addr, version: int = version, sender: int = sender,
                            arrivals: dict[int, int] = arrivals) -> bool:
                    for i in range(n):
                        if i != sender and i not in arrivals:
                            p = states(i).get(addr)
                            if p and p["capacity"] and p["capacity"]["version"] >= version:
                                arrivals[i] = p["capacity_received_ms"]
                    return len(arrivals) == n - 1

                poll(arrived, 15, "propagation")
                full.append(max(arrivals.values()) - sent)
                time.sleep(max(0.0, 1 / rate_per_s - (wall_ms() - sent) / 1000))
            detection: dict[str, float] = {}
            survivors = list(range(n))
            for label, sig, victim in (("sigstop", signal.SIGSTOP, n - 1), ("sigkill", signal.SIGKILL, n - 2)):
                addr = ready[victim]["address"]
                survivors.remove(victim)
                procs[victim].send_signal(sig)
                hit = wall_ms()
                poll(lambda addr=addr, survivors=tuple(survivors): all(  # type: ignore[misc]
                    states(i)[addr]["state"] == "dead" for i in survivors), 60, f"{label} detection")
                detection[label] = round((max(states(i)[addr]["state_since_ms"] for i in survivors) - hit) / 1000, 2)
            return {"n": n, "interval_s": interval_ms / 1000, "up_s": round(up_s, 1),
                    "propagation_ms": stats(full), "detection_s": detection}
        finally:
            for proc in procs:
                stop_process(proc)
                if proc.stdout:
                    proc.stdout.close()


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mesh.json")
    args = parser.parse_args()
    seed = 1
    _bench_baseline.MAX_DIALS = BASELINE_DIALS
    sizes = [5] if args.quick else [10, 20, 50]
    proc_n = 4 if args.quick else 10
    # bigger meshes beat slower: the liveness interval grows with N (detection <= 15 s at N = 50)
    interval_for = {5: 1000, 10: 1000, 20: 2000, 50: 5000}
    rate_for = {5: 2.0, 10: 2.0, 20: 2.0, 50: 0.5}
    messages = 6 if args.quick else 20
    warmup, measure = (2.0, 3.0) if args.quick else (20.0, 15.0)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]},
                           "settings": {"interval_ms_by_n": interval_for, "rate_per_s_by_n": rate_for,
                                        "messages": messages, "warmup_s": warmup, "measure_s": measure,
                                        "dials_per_node": DIALS, "baseline_dials_per_node": BASELINE_DIALS},
                           "propagation_ms": {"inprocess": {}, "processes": {}}, "detection_s": {}, "idle_cpu": {},
                           "baseline": {"propagation_ms": {"inprocess": {}, "processes": {}}, "detection_s": {},
                                        "idle_cpu": {}}}
    base = out["baseline"]

    def log(what: str, value: Any) -> None:
        print(f"{what}: {json.dumps(value)}", file=sys.stderr, flush=True)

    for n in sizes:
        interval = interval_for[n]
        ours = trio.run(ours_inprocess, n, interval, messages, rate_for[n], warmup, measure, seed, DIALS)
        log(f"deedmesh in-process n={n}", ours)
        out["propagation_ms"]["inprocess"][str(n)] = ours["propagation_ms"]
        out["idle_cpu"][str(n)] = ours["idle"] | {"interval_s": interval / 1000,
                                                 "detection_close_s": ours["detection_close_s"]}
        raw = trio.run(propagation_inprocess, n, messages, rate_for[n], seed)
        log(f"baseline propagation n={n}", raw)
        base["propagation_ms"]["inprocess"][str(n)] = raw
        idle = trio.run(idle_inprocess, n, interval / 1000, warmup, measure, seed)
        log(f"baseline idle n={n}", idle)
        base["idle_cpu"][str(n)] = idle | {"interval_s": interval / 1000}
    with tempfile.TemporaryDirectory(prefix="deedmesh-bench-") as work:  # keystores, deployment record
        ours_p = ours_processes(proc_n, 1000, messages // 2, 1.0, seed, Path(work))
    log(f"deedmesh processes n={proc_n}", ours_p)
    out["propagation_ms"]["processes"][str(proc_n)] = ours_p["propagation_ms"]
    out["detection_s"] = ours_p["detection_s"] | {"n": proc_n, "interval_s": 1.0}
    raw_p = propagation_processes(proc_n, messages // 2, 1.0, seed)
    log(f"baseline propagation processes n={proc_n}", raw_p)
    base["propagation_ms"]["processes"][str(proc_n)] = raw_p
    raw_d = detection_processes(proc_n, 1.0, seed)
    log(f"baseline detection n={proc_n}", raw_d)
    base["detection_s"] = raw_d | {"n": proc_n, "interval_s": 1.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
