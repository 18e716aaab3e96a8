"""``deedmesh node run``: one node as an OS process — keystore, chain-backed license gate,
libp2p transport, the gossip node and its HTTP API, all in one trio nursery.

When everything is up it prints one JSON line on stdout (``{"event": "ready", ...}``) with the API
URL and the libp2p addresses to bootstrap from; supervisors and tests wait for that line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from eth_utils import is_address
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from contracts import (
    Chain,
    CspStatus,
    Deployment,
    DeploymentError,
    JobEscrowClient,
    JobStatus,
    LicenseRegistryClient,
    to_checksum_address,
)

from ._api import API_PROTOCOL, API_TIMEOUT_S, MAX_API_REQUEST_BYTES, NodeApi
from ._engine import EngineUnavailable, connect_engine
from ._gc import settle, tune_for_service
from ._identity import NodeIdentity
from ._job_check import JobCheck
from ._job_desk import JobDesk
from ._job_events import JobEvents
from ._license_view import ChainWorker, LicenseView, fetch_eligible, fetch_oracles
from ._logs import PROTOCOL as LOGS_PROTOCOL
from ._logs import LogDesk
from ._membership import LivenessConfig
from ._node import NodeConfig, open_node
from ._nonces import NonceBook
from ._rollout import Rollouts
from ._runner_car import CarRunner
from ._runner_native import NativeRunner
from ._runners import NativeRunners, Runners
from ._scheduler import run_scheduler, runner_tag
from ._submission import ChainFacts
from ._transport_libp2p import Libp2pConfig, open_libp2p_transport, peer_id_of
from ._wire_capacity import Capacity, Resources

log = logging.getLogger("deedmesh.node")


@dataclass(frozen=True)
class NodeSettings:
    """Everything ``node run`` needs besides the key."""

    rpc: str
    deployment: Path | None = None  # the contract addresses (deedmesh chain deploy --out) ...
    license_registry: str | None = None  # ... or the license registry's address alone
    listen: str = "/ip4/127.0.0.1/tcp/0"  # loopback unless the operator opens it
    bootstrap: tuple[str, ...] = ()
    api_host: str = "127.0.0.1"  # the API is local by default; it is not meant for the internet
    api_port: int = 8700
    tags: tuple[str, ...] = ()
    operator_token_file: Path | None = None
    license_refresh_s: float = 5.0  # a ban on chain bites within this
    heartbeat_interval_ms: int = 1_000  # small meshes; larger ones beat slower (BENCHMARKS.md)
    target_peers: int = 4  # see NodeConfig
    engine: str = "auto"  # the container engine: "auto" (detect; none found = run no CAR replica), "none", a URL
    # with no engine, run WAR replicas as plain processes (``_runner_native``): opt-in, since an app
    # then runs as the node's own user, limited by cgroups but not isolated (README)
    native_war: bool = False


def detect_capacity(tags: tuple[str, ...]) -> Capacity:
    """This machine's resources (all free at start; runners reserve from them)."""
    cpus = (os.cpu_count() or 1) * 1000
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    disk_mb = shutil.disk_usage("/").free // 2**20
    total = Resources(cpu_millis=cpus, memory_mb=memory_mb, gpus=0, disk_mb=disk_mb)
    return Capacity(version=1, total=total, free=total, tags=tags)


def operator_token(path: Path) -> str:
    """The operator's API token: read from ``path``, or created there (0600) on first run."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def license_registry(chain: Chain, settings: NodeSettings) -> LicenseRegistryClient:
    """The license registry named by the deployment record, else by its address; checked to be a
    contract on the connected chain (a wrong chain or address is refused, not read as "no
    licenses")."""
    if settings.deployment is not None:
        deployment = Deployment.load(settings.deployment)
        deployment.check_chain(chain)
        return deployment.licenses(chain)
    address = settings.license_registry or ""
    if not is_address(address):
        raise DeploymentError(f"license registry {address!r} is not an address")
    if chain.w3.eth.get_code(to_checksum_address(address)) in (b"", None):
        raise DeploymentError(f"no contract at {address} on chain {chain.chain_id}")
    return LicenseRegistryClient(chain, to_checksum_address(address))


MAX_CACHED_CSPS = 1024  # above this, expired admissions are dropped from the desk's cache


class EscrowFacts:
    """What the escrow says about jobs and their CSPs (blocking: call it in the chain worker).

    Jobs are read on every call; a CSP's admission is kept ``csp_ttl_s`` (a suspension or an
    expired admission takes effect within that, as a license ban does within the license
    refresh), which saves two of three chain calls when a CSP submits many jobs at once. A call
    for many jobs is one trip to the chain (``Chain.read_many``).
    """

    def __init__(self, escrow: JobEscrowClient, csp_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.escrow = escrow
        self.csp_ttl_s = csp_ttl_s
        self._clock = clock
        self._csps: dict[str, tuple[float, int, CspStatus]] = {}  # csp -> (read at, admitted until, status)

    def __call__(self, job_id: int, csp: str) -> ChainFacts:
        return self.many([(job_id, csp)])[0]

    def many(self, pairs: Sequence[tuple[int, str]]) -> list[ChainFacts]:
        """The facts of each (job id, CSP), in order, read in one trip."""
        now = self._clock()
        stale = sorted({csp for _, csp in pairs if now - self._csps.get(csp, (-math.inf,))[0] >= self.csp_ttl_s})
        calls = [self.escrow.job_call(job_id) for job_id, _ in pairs]
        for csp in stale:
            calls += [self.escrow.admitted_until_call(csp), self.escrow.csp_status_call(csp)]
        read = self.escrow.chain.read_many(calls)
        jobs, standing = read[:len(pairs)], read[len(pairs):]
        if stale and len(self._csps) + len(stale) > MAX_CACHED_CSPS:  # signers of many keys: keep fresh entries
            self._csps = {k: v for k, v in self._csps.items() if now - v[0] < self.csp_ttl_s}
        for i, csp in enumerate(stale):
            self._csps[csp] = (now, standing[2 * i], standing[2 * i + 1])
        chain_id = self.escrow.chain.chain_id
        return [ChainFacts(chain_id=chain_id, escrow=self.escrow.address,
                           job=None if job.status is JobStatus.NONE else job,
                           csp_admitted_until=self._csps[csp][1], csp_status=self._csps[csp][2])
                for (_, csp), job in zip(pairs, jobs, strict=True)]


async def car_runner(identity: NodeIdentity, engine: str) -> CarRunner | None:
    """The container runner on the configured engine; with "auto" and no engine answering, None
    (the node then advertises no CAR runner and never claims a CAR replica)."""
    if engine == "none":
        return None
    try:
        client = await trio.to_thread.run_sync(connect_engine, None if engine == "auto" else engine)
    except EngineUnavailable as exc:
        if engine != "auto":
            raise
        log.warning("no container engine: this node runs no CAR replica", extra={"error": str(exc)})
        return None
    return CarRunner(client, identity.address)


def print_ready(ready: dict[str, Any]) -> None:
    print(json.dumps(ready), flush=True)


async def serve_node(identity: NodeIdentity, settings: NodeSettings, token_file: Path, nonce_file: Path,
                     work_dir: Path, *, chain: Chain | None = None, worker: ChainWorker | None = None,
                     on_ready: Callable[[dict[str, Any]], None] = print_ready) -> None:
    """Run the node until cancelled. ``chain`` and ``worker``: a chain already connected and the
    one thread that talks to it, when several nodes share them in one process (the devnet's
    embedded chain); by default the node connects to ``settings.rpc`` and has its own."""
    # one thread at a time talks to the chain, for the license view, the job desk and the checks
    worker = worker or ChainWorker()
    if chain is None:
        chain = await trio.to_thread.run_sync(Chain.connect, settings.rpc)
    licenses = await worker.run(license_registry, chain, settings)
    # with a deployment record, the oracle registry's oracles may take part too (they watch the mesh)
    oracles = None if settings.deployment is None else Deployment.load(settings.deployment).oracles(chain)
    view = LicenseView(lambda: fetch_eligible(licenses), worker, settings.license_refresh_s, block=chain.block_number,
                       fetch_oracles=None if oracles is None else partial(fetch_oracles, oracles))
    # jobs need the escrow: only a node started with a deployment record accepts and relays them
    escrow = None if settings.deployment is None else Deployment.load(settings.deployment).escrow(chain)
    token = operator_token(token_file)
    listen = Libp2pConfig(listen=settings.listen, pubsub=False)  # the node gossips by neighbour sync alone
    runner = None if escrow is None else await car_runner(identity, settings.engine)
    # with an engine, this node runs CAR replicas, and WAR ones if git is here too; with none, WAR
    # replicas as processes if the operator asked for it
    git = shutil.which("git") is not None
    native = escrow is not None and runner is None and settings.native_war and git
    kinds: tuple[str, ...] = ("war",) if native else ()
    if runner is not None:
        kinds = ("car", "chaindist", "war") if git else ("car", "chaindist")
    tags = settings.tags + tuple(runner_tag(kind) for kind in kinds)
    async with open_libp2p_transport(identity, listen, settings.bootstrap) as transport, trio.open_nursery() as nursery:
        await nursery.start(view.run)
        gossip = NodeConfig(liveness=LivenessConfig(heartbeat_interval_ms=settings.heartbeat_interval_ms),
                            target_peers=settings.target_peers)
        async with open_node(gossip, identity, transport, detect_capacity(tags), view.is_eligible,
                             bootstrap=settings.bootstrap, is_oracle=view.is_oracle,
                             escrow=None if escrow is None else (chain.chain_id, escrow.address)) as node:
            desk, logs, events = None, None, JobEvents()
            runners: Runners | NativeRunners | None = None  # (they need the escrow's jobs)
            if escrow is not None:
                facts = EscrowFacts(escrow)

                async def read_facts(job_id: int, csp: str) -> ChainFacts:
                    return await worker.run(partial(facts, job_id, csp))

                desk = JobDesk(node, chain.chain_id, escrow.address, read_facts, NonceBook(nonce_file),
                               now_s=lambda: int(time.time()))

                async def read_many(pairs: list[tuple[int, str]]) -> list[ChainFacts]:
                    return await worker.run(partial(facts.many, pairs))
                check = JobCheck(node, read_many)
                await nursery.start(check.run)
                node.chain_check = check  # relayed jobs are read on chain before this node claims them
                if runner is not None:
                    runners = Runners(node, runner, work_dir)
                elif native:
                    runtime = NativeRunner(work_dir / "native", identity.address)
                    runners = NativeRunners(runtime, work_dir, on_change=node.notify)
                    log.warning("no container engine: WAR replicas run as processes of this node's user",
                                extra={"limits": runtime.backend})
                logs = LogDesk(node, chain.chain_id, escrow.address, None if runners is None else runners.logs,
                               now_s=lambda: int(time.time()))
                transport.set_handler(LOGS_PROTOCOL, logs.serve, max_request_bytes=logs.config.max_request_bytes,
                                      timeout_s=logs.config.holder_timeout_s)
                if runners is None:
                    await nursery.start(partial(run_scheduler, node, events=events))
                else:
                    await nursery.start(runners.run)
                    await nursery.start(partial(run_scheduler, node, on_plan=runners.offer, states=runners.state_of,
                                                versions=runners.versions, results=runners.results, events=events,
                                                rollouts=Rollouts(node, runners.revision_of)))
            api = NodeApi(node, peer_id=peer_id_of(identity), addrs=transport.addrs, operator_token=token, desk=desk,
                          logs=logs, events=events, runner_metrics=None if runners is None else runners.metrics,
                          endpoints=None if runners is None else runners.endpoints)
            # CLI clients dialling in over libp2p get the same app (``--via /ip4/.../p2p/...``)
            transport.set_handler(API_PROTOCOL, api.answer, max_request_bytes=MAX_API_REQUEST_BYTES,
                                  timeout_s=API_TIMEOUT_S)
            config = HypercornConfig()
            config.bind = [f"{settings.api_host}:{settings.api_port}"]
            config.accesslog = None
            config.errorlog = logging.getLogger("deedmesh.api")  # our handlers and format, not its own
            await nursery.start(partial(serve, api, config, shutdown_trigger=trio.sleep_forever))  # type: ignore[arg-type]
            on_ready({"event": "ready", "address": identity.address, "peer_id": peer_id_of(identity),
                      "api": f"http://{settings.api_host}:{settings.api_port}", "addrs": transport.addrs(),
                      "operator_token_file": str(token_file)})
            settle()
            await trio.sleep_forever()


def run(identity: NodeIdentity, settings: NodeSettings, token_file: Path, nonce_file: Path, work_dir: Path) -> None:
    tune_for_service()
    try:
        trio.run(serve_node, identity, settings, token_file, nonce_file, work_dir)
    except KeyboardInterrupt:
        print(json.dumps({"event": "stopped"}), file=sys.stderr)
