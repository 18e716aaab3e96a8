#!/usr/bin/env python3
"""Devnet benchmark: ``deedmesh --json devnet`` on its embedded defaults (5 nodes, 4 oracles with
t = 3, 10-second epochs, the three examples with the container engine, a holder killed early in
the jobs' first epoch), run as a newcomer runs it; writes ``benchmarks/devnet.json``.

Figures (from the devnet's own JSON summary, plus the wall time of the whole command):
``first_job_epoch_settled_s`` (seconds from the start until the jobs' first epoch was on chain:
issue 7's target is 60 s on 2 cores), ``last_job_epoch_settled_s``, ``wall_s``, the killed
holder's reallocation time, the withheld shares, and whether the audit balanced.
Usage: ``python scripts/bench_devnet.py [--out PATH] [devnet options...]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import write_result

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "devnet.json")
    args, devnet_args = parser.parse_known_args()
    deedmesh = str(Path(sys.executable).with_name("deedmesh"))
    began = time.monotonic()
    done = subprocess.run([deedmesh, "--json", "devnet", *devnet_args], capture_output=True, text=True, check=False,
                          timeout=900)
    wall_s = round(time.monotonic() - began, 1)
    if done.returncode != 0:
        sys.exit(f"deedmesh devnet exited {done.returncode}:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    killed = summary["killed"] or {}
    write_result(args.out, {
        "first_job_epoch_settled_s": summary["first_job_epoch_settled_s"],
        "last_job_epoch_settled_s": summary["last_job_epoch_settled_s"],
        "wall_s": wall_s,
        "target": {"first_job_epoch_settled_s": 60},
        "epochs_settled": summary["epochs_settled"],
        "reallocations": summary["reallocations"],
        "killed": {k: killed.get(k) for k in ("into_epoch_s", "reallocation_s")},
        "withheld": summary["withheld"],
        "jobs": [{k: j[k] for k in ("kind", "released", "withheld", "refunded", "burned", "locked")}
                 for j in summary["jobs"]],
        "audit_balanced": summary["audit"]["balanced"],
        "engine": summary["engine"],
        "devnet_args": devnet_args,
    })


if __name__ == "__main__":
    main()
