"""WAR rollout benchmark: a commit is pushed to a job's repository; how long until the node's
front serves the new version. Writes ``benchmarks/war.json`` with ``rollout_s`` (p50, p99) over
trials, and the median of each phase of the rollout once the poll saw the commit.

One WAR replica (``mesh._runner_war.WarReplica``) on the real container engine
(``scripts/engine.sh``) follows a local bare repository of ``examples/war-site`` (busybox: the
build is a shell script, the app busybox httpd) with ``poll_s: 1``, the spec's smallest. Each
trial pushes a commit at a random phase of the poll and polls the front every 10 ms until it
serves the new page; a probe loop through the front counts failed requests across every rollout.
The reference system polls every 60 s and restarts the app (downtime while it starts).
Usage: ``python scripts/bench_war.py [--trials N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_baseline import percentile, project_engine, write_result

from mesh._jobspec import WarJob
from mesh._jobspec_load import parse_spec
from mesh._runner_car import CarRunner
from mesh._runner_war import WarReplica

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "war-site.yaml"
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.org", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
PHASES = ("fetch_s", "build_s", "start_s", "healthy_s", "total_s")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def push(work: Path, version: str) -> None:
    (work / "VERSION").write_text(version + "\n")
    git("commit", "-qam", f"version {version}", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)


async def page(port: int) -> str | None:
    """GET / through the front (HTTP/1.0): the body, or None on any failure."""
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if b" 200 " in head.split(b"\r\n")[0] else None


async def run(engine: Any, trials: int, tmp: Path) -> dict[str, Any]:
    bare, work = tmp / "site.git", tmp / "site"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp)
    git("clone", "-q", str(bare), str(work), cwd=tmp)
    for name in ("build.sh", "index.html.in", "VERSION"):
        shutil.copy(ROOT / "examples" / "war-site" / name, work / name)
    git("add", "-A", cwd=work)
    push(work, "0")
    # the example with this repository, the smallest poll, and a front port the OS picks
    text = (EXAMPLE.read_text().replace("file:///tmp/deedmesh-war-site.git", f"file://{bare}")
            .replace("poll_s: 5", "poll_s: 1").replace("    host: 18080", "    # host: OS-picked"))
    spec = parse_spec(text)
    assert isinstance(spec, WarJob)
    assert spec.war.poll_s == 1
    assert spec.ports[0].host is None
    runner = CarRunner(engine, f"0xbenchwar{os.getpid()}")
    war = WarReplica(runner, 1, 0, spec, tmp / "node", limiter=trio.CapacityLimiter(4), check_s=0.5)
    times: list[float] = []
    phases: list[dict[str, float]] = []
    probes, failures = 0, 0
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        await nursery.start(war.run)
        port = war.front_port(8080)
        assert port is not None
        with trio.fail_after(120):
            while (await page(port) or "").find("version 0") < 0:  # noqa: ASYNC110
                await trio.sleep(0.05)  # polling the front: what a client sees is the measure

        async def probe() -> None:
            nonlocal probes, failures
            while True:
                probes += 1
                failures += await page(port) is None
                await trio.sleep(0.02)

        nursery.start_soon(probe)
        for k in range(1, trials + 1):
            await trio.sleep(rng.uniform(0, 1))  # a random phase of the 1 s poll
            began = time.monotonic()
            await trio.to_thread.run_sync(push, work, str(k))
            with trio.fail_after(120):
                while (await page(port) or "").find(f"version {k}<") < 0:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # polling the front: what a client sees is the measure
            times.append(time.monotonic() - began)
            phases.append({p: float(war.last_rollout[p]) for p in PHASES if p in war.last_rollout})
            print(f"trial {k}: {times[-1]:.2f} s {war.last_rollout}", file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
    return {"rollout_s": {"p50": round(percentile(times, 50), 2), "p99": round(percentile(times, 99), 2),
                          "trials": [round(t, 2) for t in times]},
            "phases_median_s": {p: round(statistics.median(ph[p] for ph in phases), 3) for p in PHASES
                                if all(p in ph for ph in phases)},
            "probe_requests": probes, "probe_failures": failures,
            "settings": {"poll_s": 1, "app": "examples/war-site (busybox sh build, busybox httpd)",
                         "health": "http / every 2 s, checked from the node", "engine": "scripts/engine.sh",
                         "reference": "60 s poll, then a restart (downtime while the app starts)"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "war.json")
    args = parser.parse_args()
    with project_engine(ROOT) as engine, tempfile.TemporaryDirectory(prefix="deedmesh-bench-war-") as tmp:
        out = trio.run(run, engine, args.trials, Path(tmp))
    write_result(args.out, out)


if __name__ == "__main__":
    main()
