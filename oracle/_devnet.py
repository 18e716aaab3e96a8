"""The devnet run: a whole deployment on one machine, settled by its own oracles.

1. **Chain**: deploy the contracts, license and link the nodes, register and fund the oracles,
   admit and fund a CSP (``prepare``: blocking, before anything runs).
2. **Mesh**: N nodes (``mesh.serve_node``, the code ``deedmesh node run`` runs, each with its API
   on a free 127.0.0.1 port) and K oracles (``mesh.open_participant`` + ``_service.Oracle``), all
   on real libp2p over 127.0.0.1, in one trio nursery. They share the chain and the one thread
   that talks to it (eth-tester is not thread-safe); on the embedded chain a task mines a block
   every second at the machine's time, so the chain's clock follows the real one.
3. **A job**: the CSP funds the CAR example (``examples/car-web.yaml``) for ``epochs`` epochs from
   the next one and hands its signed submission to a node. With no container engine reachable no
   node can run it, and the devnet says so: every slot-epoch is then refunded.
4. **Settlement**: the oracles watch the mesh and settle each epoch on chain (observations,
   agreement, a quorum-signed root); when the job's last epoch has landed, the node owners'
   pay is claimed with the published reports, the CSP takes its refund, due burns are executed,
   the job is stopped, and ``audit`` re-derives everything from the chain and the reports.

Keys come from ``new_key``; private keys are never printed or logged. The work directory holds
the deployment record, the nodes' files and the oracles' watch logs and reports.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from docker.errors import DockerException
from eth_account.signers.local import LocalAccount

from contracts import (
    EMBEDDED,
    Chain,
    DeployConfig,
    Deployment,
    Epoch,
    JobParams,
    LicenseId,
    SettlementPolicy,
    TokenUnits,
    csp_admission,
    deploy,
    free_port,
    sign,
)
from mesh import (
    CarRunner,
    ChainWorker,
    EngineUnavailable,
    JobSpec,
    NodeIdentity,
    NodeSettings,
    ParticipantSettings,
    TaskStatus,
    connect_engine,
    deploy_spec,
    load_spec,
    open_participant,
    serve_node,
    spec_hash,
)

from ._audit import AMOUNTS_NOT_VERIFIED, audit
from ._devnet_money import read_reports, settled_money, withheld_shares
from ._service import Oracle, OracleConfig
from ._settle import burn_round, claim_round, refund_round
from ._watch import EpochClock

log = logging.getLogger("deedmesh.devnet")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PRICE = TokenUnits(2_000_000)  # 2 mUSD per node-epoch
CSP_FUNDS = TokenUnits(1_000_000_000)
POLICY = SettlementPolicy(release_threshold=230, burn_floor=64, protocol_burn_bps=250)
GAS_ETH = 10**18  # for each oracle's submissions and the CSP's transactions


@dataclass(frozen=True)
class DevnetShape:
    nodes: int = 5
    oracles: int = 4
    threshold: int = 3
    epochs: int = 2  # the job's epochs: the devnet ends once they are all settled
    epoch_seconds: int = 10
    kill: bool = True  # stop one holder a quarter into the job's first epoch (needs 3 nodes or more)


@dataclass
class Setup:
    """The chain side, deployed (``prepare``)."""

    chain: Chain
    dep: Deployment
    record: Path
    admin: str
    csp: LocalAccount
    nodes: list[tuple[NodeIdentity, LicenseId, str]]  # (identity, license id, owner)
    oracle_keys: list[LocalAccount]
    events: list[dict[str, Any]] = field(default_factory=list)  # the oracles' epoch outcomes
    began: float = field(default_factory=time.monotonic)  # when the devnet started


def prepare(chain: Chain, shape: DevnetShape, new_key: Callable[[], LocalAccount], work: Path,
            progress: Callable[[str], object]) -> Setup:
    began = time.monotonic()
    accounts = chain.accounts
    admin, operators = accounts[0], accounts[2:]
    oracle_keys = sorted((new_key() for _ in range(shape.oracles)), key=lambda k: k.address)
    attester, csp = new_key(), new_key()
    progress("deploying contracts")
    config = DeployConfig(shape.epoch_seconds, 2, 5, shape.threshold, mock_token=True)
    dep = deploy(chain, config, admin=admin, oracles=[k.address for k in oracle_keys], attester=attester.address)
    record = work / "deployment.json"
    record.write_text(dep.to_json())
    licenses, escrow, token = dep.licenses(chain), dep.escrow(chain), dep.payment_token(chain)
    log.info("deployed", extra={"escrow": dep.job_escrow, "chain_id": dep.chain_id})

    progress("licensing and linking nodes")
    nodes = []
    for i in range(shape.nodes):
        identity, owner = NodeIdentity(new_key().key), operators[i % len(operators)]
        license_id = licenses.mint(owner, sender=admin)
        licenses.link_node(license_id, identity.address, sender=owner)
        nodes.append((identity, license_id, owner))

    progress("funding the oracles and admitting the CSP")
    for account in (*oracle_keys, csp):
        chain.send_value(admin, account.address, GAS_ETH)
        chain.add_signer(account)
    licenses.mint(csp.address, sender=admin)  # the deed a CSP must hold
    token.mint(csp.address, CSP_FUNDS, sender=admin)
    valid_until, kyc_ref = chain.now() + 30 * 24 * 3600, b"devnet-kyc".ljust(32, b"\0")
    admission = sign(csp_admission(escrow.domain(), csp.address, kyc_ref, valid_until, 1), attester.key)
    escrow.admit_csp(csp.address, kyc_ref, valid_until, 1, admission, sender=csp.address)
    return Setup(chain, dep, record, admin, csp, nodes, oracle_keys, began=began)


def engine_reachable() -> str | None:
    """None if a container engine answers, else why not (said in the summary)."""
    try:
        connect_engine().close()
    except EngineUnavailable as exc:
        return str(exc)
    return None


async def run_mesh(setup: Setup, shape: DevnetShape, work: Path, progress: Callable[[str], object],
                   show: Callable[[dict[str, Any]], object],
                   keep: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    chain, dep = setup.chain, setup.dep
    escrow = dep.escrow(chain)
    worker = ChainWorker()
    genesis, seconds, _ = await worker.run(escrow.epoch_clock)
    clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=seconds * 1000)
    round_s = max(2.0, shape.epoch_seconds / 2)  # the next leader's turn comes within the epoch
    config = OracleConfig(settle_s=1.0, round_s=round_s, request_s=round_s / 2, poll_s=0.5)
    no_engine = await trio.to_thread.run_sync(engine_reachable)
    summary: dict[str, Any] = {}

    def tick() -> None:
        chain.set_next_timestamp(max(chain.now() + 1, int(time.time())))
        chain.mine()

    async def chain_clock() -> None:  # the embedded chain mines on demand: keep its clock on the machine's
        while True:
            await worker.run(tick)
            await trio.sleep(1.0)

    scopes: dict[str, trio.CancelScope] = {}

    async def node(identity: NodeIdentity, bootstrap: tuple[str, ...],
                   task_status: TaskStatus[dict[str, Any]]) -> None:
        stem = work / f"node-{identity.address}"
        settings = NodeSettings(rpc=chain.url, deployment=setup.record, bootstrap=bootstrap, api_port=free_port(),
                                license_refresh_s=5.0)
        with trio.CancelScope() as scopes[identity.address]:
            await serve_node(identity, settings, stem.with_suffix(".token"), stem.with_suffix(".nonces.log"),
                             stem.with_suffix(".work"), chain=chain, worker=worker, on_ready=task_status.started)

    async def oracle(key: LocalAccount, bootstrap: tuple[str, ...], task_status: TaskStatus[Oracle]) -> None:
        participant = ParticipantSettings(bootstrap=bootstrap, license_refresh_s=5.0)
        async with open_participant(NodeIdentity(key.key), chain, dep, worker, participant) as watcher:
            running = Oracle(watcher, key.key, chain, dep, clock, work / f"oracle-{key.address}", worker, config,
                             on_event=setup.events.append)
            async with trio.open_nursery() as nursery:
                await nursery.start(running.run)
                task_status.started(running)

    async with trio.open_nursery() as nursery:
        if chain.kind == EMBEDDED:
            nursery.start_soon(chain_clock)
        progress(f"starting {shape.nodes} nodes on libp2p")
        ready: list[dict[str, Any]] = []
        for identity, _, _ in setup.nodes:
            bootstrap = tuple(ready[0]["addrs"][:1]) if ready else ()
            ready.append(await nursery.start(node, identity, bootstrap))
        progress(f"starting {shape.oracles} oracles")
        oracles = [await nursery.start(oracle, key, tuple(ready[0]["addrs"][:1])) for key in setup.oracle_keys]

        async def stop_node(address: str) -> None:
            scopes[address].cancel()

        summary = await drive(setup, shape, work, worker, clock, ready, [o.directory / "reports" for o in oracles],
                              stop_node, no_engine, nursery, progress, show, keep)
        nursery.cancel_scope.cancel()
    return summary


async def drive(setup: Setup, shape: DevnetShape, work: Path, worker: ChainWorker, clock: EpochClock,
                ready: list[dict[str, Any]], reports: list[Path], stop_node: Callable[[str], Awaitable[None]],
                no_engine: str | None, nursery: trio.Nursery, progress: Callable[[str], object],
                show: Callable[[dict[str, Any]], object],
                keep: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    """With the nodes (``ready``: their ready lines) and the oracles up, in this process or as
    processes: fund and deploy the examples, kill a holder (``stop_node``), wait for the oracles
    to settle every epoch of the jobs, claim, refund, burn, audit; the summary."""
    chain, dep = setup.chain, setup.dep
    escrow = dep.escrow(chain)
    genesis, seconds = clock.genesis_ms // 1000, clock.epoch_ms // 1000
    specs = await trio.to_thread.run_sync(example_specs, work, no_engine is None)
    progress("funding and deploying " + ", ".join(f"the {s.kind.upper()} example" for s in specs))
    now = max(await worker.run(chain.now), int(time.time()))
    start = Epoch((now - genesis) // seconds + 1)  # the next epoch, by the later clock
    token = dep.payment_token(chain)
    funded = [JobParams(spec_hash=spec_hash(spec), token=token.address, replicas=spec.replicas,
                        epochs=shape.epochs, start_epoch=start, price_per_node_epoch=PRICE, policy=POLICY)
              for spec in specs]
    total = sum(params.deposit for params in funded)
    await worker.run(lambda: token.approve(escrow.address, total, sender=setup.csp.address))
    job_ids = [await worker.run(partial(escrow.create_job, params, sender=setup.csp.address)) for params in funded]
    for job_id, spec in zip(job_ids, specs, strict=True):
        await trio.to_thread.run_sync(deploy_spec, ready[0]["api"], setup.csp.key, dep, job_id, spec)
    last = start + shape.epochs - 1
    killed: dict[str, Any] = {}
    if shape.kill and no_engine is None and len(setup.nodes) >= 3:  # a holder of the CAR job
        nursery.start_soon(kill_a_holder, setup, ready, stop_node, clock, job_ids[0], start, killed, progress)

    first_landed_s = None
    with trio.fail_after(seconds * (shape.epochs + 4) + 60):
        while (landed := await worker.run(escrow.next_epoch)) <= last:
            if landed > start and first_landed_s is None:  # the jobs' first epoch is on chain
                first_landed_s = round(time.monotonic() - setup.began, 1)
            epoch = clock.epoch_at(int(time.time() * 1000))
            progress(f"epoch {epoch}: jobs {', '.join(map(str, job_ids))} run in epochs {start}-{last}; "
                     f"waiting for the oracles to settle epoch {last}")
            show(await snapshot(setup, ready, job_ids, epoch, killed.get("node"), worker, reports))
            await trio.sleep(0.5)  # polling the chain for the last epoch's root

    progress("claiming the nodes' pay, taking the refund, executing burns")
    claimed = await worker.run(partial(claim_round, chain, dep, setup.admin, report_paths=reports,
                                       licenses=[lic for _, lic, _ in setup.nodes]))
    refunded = await worker.run(partial(refund_round, chain, dep, setup.csp.address, report_paths=reports))
    burned = await worker.run(partial(burn_round, chain, dep, setup.admin, report_paths=reports))

    progress("auditing the run")
    audited = await worker.run(partial(audit, chain, dep, reports=reports))
    finals = [await worker.run(escrow.get_job, job_id) for job_id in job_ids]
    withheld = [w for r in (await trio.to_thread.run_sync(read_reports, reports)).values()
                for w in withheld_shares(r) if w.job_id in job_ids]
    survivor = next(r["api"] for r in ready if r["address"] != killed.get("node"))
    seen = await trio.to_thread.run_sync(get_json, survivor, "/jobs")
    moves = [e for j in seen if j["job_id"] in job_ids for e in j["events"] if e["what"] == "moved"]
    results = {j["job_id"]: c["result_digest"] for j in seen for c in j["claims"] if c.get("result_digest")}
    summary = {
        "killed": killed or None,
        # seconds from the devnet's start until the jobs' first and last epochs were on chain
        "first_job_epoch_settled_s": first_landed_s or round(time.monotonic() - setup.began, 1),
        "last_job_epoch_settled_s": round(time.monotonic() - setup.began, 1),
        "reallocations": len(moves),
        # node shares refunded to the CSP because the holder's availability during its tenure was
        # below the job's release threshold (the killed holder's, while it was suspect yet held on)
        "withheld": [w.as_json() for w in sorted(withheld, key=lambda w: (w.epoch, w.job_id, w.replica))],
        "jobs": [{"job_id": job_id, "spec": spec.name, "kind": spec.kind, "replicas": spec.replicas,
                  "start_epoch": start, "epochs": shape.epochs, "result_digest": results.get(job_id),
                  **{k: int(v) for k, v in final.conservation().items()},
                  "withheld": sum(w.share for w in withheld if w.job_id == job_id)}
                 for job_id, spec, final in zip(job_ids, specs, finals, strict=True)],
        "engine": None if no_engine is None else f"no container engine: the job could not run ({no_engine})",
        "api": [r["api"] for r in ready],
        "settled": sorted({(e["epoch"], e["root"]) for e in setup.events if e["event"] == "settled"}),
        # given up by an oracle, and landed by none (one may give up while another still lands it)
        "no_quorum": sorted(_epochs(setup.events, "no-quorum") - _epochs(setup.events, "settled")),
        # no report of their own: a later epoch landed first (before the jobs: oracles that came up
        # mid-epoch abstain from it); a job epoch here would stay locked (SETTLEMENT.md)
        "passed_over": sorted(_epochs(setup.events, "passed-over") - _epochs(setup.events, "settled")),
        "claimed": claimed.as_json(), "refunded": refunded.as_json(), "burned": burned.as_json(),
        "audit": {"balanced": audited.ok and AMOUNTS_NOT_VERIFIED not in audited.not_verified,
                  "discrepancies": [f.line for f in audited.errors],
                  "not_verified": list(audited.not_verified)},
        "report_directories": [str(r) for r in reports],
    }
    if keep is not None:  # --keep: up until interrupted; the summary says how to reach the nodes
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            keep(summary)
            async for _ in signals:
                break
    for job_id in job_ids:  # stop them
        await trio.to_thread.run_sync(deploy_spec, survivor, setup.csp.key, dep, job_id, None)
    if no_engine is None:
        await remove_containers([i.address for i, _, _ in setup.nodes], progress)
    nursery.cancel_scope.cancel()
    return summary


async def snapshot(setup: Setup, ready: list[dict[str, Any]], job_ids: Sequence[int], epoch: int, killed: str | None,
                   worker: ChainWorker, reports: Sequence[Path]) -> dict[str, Any]:
    """What the live view shows: nodes, where each replica runs (as a live node sees it), the
    epochs landed, and the jobs' money as the reports settled it (``_devnet_money``)."""
    api = next(r["api"] for r in ready if r["address"] != killed)
    try:
        jobs = await trio.to_thread.run_sync(get_json, api, "/jobs")
    except OSError:  # a node busy or going away: the next look will do
        jobs = []
    escrow = setup.dep.escrow(setup.chain)
    onchain = [await worker.run(escrow.get_job, job_id) for job_id in job_ids]
    settled = await trio.to_thread.run_sync(read_reports, reports)
    held: dict[str, list[str]] = {}
    for j in jobs:
        if j["job_id"] in job_ids:
            for c in j["claims"]:
                held.setdefault(c["node"], []).append(f"{j['kind']} {j['job_id']}/{c['replica']} ({c['state']})")
    return {"epoch": epoch,
            "nodes": [{"node": i.address, "license_id": lic, "up": i.address != killed,
                       "replicas": sorted(held.get(i.address, []))} for i, lic, _ in setup.nodes],
            "settled": sorted({(e["epoch"], e["root"]) for e in setup.events if e["event"] == "settled"}),
            "money": settled_money(settled, {job.job_id: int(job.deposited) for job in onchain})}


def example_specs(work: Path, engine: bool) -> list[JobSpec]:
    """The jobs the CSP runs: the CAR example; with an engine (and git) also the WAR example, built
    from a repository made here from ``examples/war-site`` and served on a free port, and the
    ChainDist example (blocking)."""
    specs = [load_spec(EXAMPLES / "car-web.yaml")]
    if not engine or shutil.which("git") is None:
        return specs
    origin, checkout = work / "war-site.git", work / "war-site"
    git = ["git", "-c", "user.name=deedmesh devnet", "-c", "user.email=devnet@localhost"]
    subprocess.run([*git, "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run([*git, "clone", "-q", str(origin), str(checkout)], check=True, capture_output=True)
    for f in (EXAMPLES / "war-site").iterdir():
        shutil.copy(f, checkout / f.name)
    subprocess.run([*git, "-C", str(checkout), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(checkout), "commit", "-qm", "version 1"], check=True)
    subprocess.run([*git, "-C", str(checkout), "push", "-q", "origin", "main"], check=True, capture_output=True)
    text = (EXAMPLES / "war-site.yaml").read_text()
    ours = (("file:///tmp/deedmesh-war-site.git", origin.as_uri()), ("host: 18080", f"host: {free_port()}"))
    for fixed, here in ours:
        if fixed not in text:
            raise ValueError(f"examples/war-site.yaml no longer says {fixed!r}")
        text = text.replace(fixed, here)
    (work / "war-site.yaml").write_text(text)
    return [*specs, load_spec(work / "war-site.yaml"), load_spec(EXAMPLES / "chaindist-primes.yaml")]


def _epochs(events: list[dict[str, Any]], outcome: str) -> set[int]:
    """The epochs some oracle said ``outcome`` of (``settled``, ``no-quorum``, ``passed-over``)."""
    return {e["epoch"] for e in events if e["event"] == outcome}


def get_json(api: str, path: str) -> Any:
    """GET ``path`` from a node's API (blocking)."""
    with urllib.request.urlopen(api + path, timeout=10) as answer:
        return json.loads(answer.read())


async def kill_a_holder(setup: Setup, ready: list[dict[str, Any]], stop_node: Callable[[str], Awaitable[None]],
                        clock: EpochClock, job_id: int, start: int, killed: dict[str, Any],
                        progress: Callable[[str], object]) -> None:
    """A quarter into the job's first epoch, stop a node that holds one of its replicas (not the
    first node, whose API the devnet reads) as a machine is lost: the node and its containers go.
    Then wait for the mesh to run that replica elsewhere (``killed``: who, when, where it went).
    The node holds its replica, not beating, until it is declared dead: early in the epoch that is
    enough of its tenure for its availability to fall below the release threshold, so its share
    is withheld for the CSP (the summary's ``withheld``)."""
    api = ready[0]["api"]

    async def claims() -> list[dict[str, Any]]:
        jobs = await trio.to_thread.run_sync(get_json, api, "/jobs")
        return next((j["claims"] for j in jobs if j["job_id"] == job_id), [])

    begin, end = clock.bounds(start)
    await trio.sleep(max(0.0, (begin + (end - begin) // 4) / 1000 - time.time()))
    with trio.move_on_after((end - begin) / 1000):
        while not [c for c in await claims() if c["node"] != ready[0]["address"]  # noqa: ASYNC110
                   and c["state"] == "healthy"]:
            await trio.sleep(0.25)  # polling the node's API with a deadline
    victims = [c for c in await claims() if c["node"] != ready[0]["address"] and c["state"] == "healthy"]
    if not victims:
        progress("no replica held outside the first node: nothing to kill")
        return
    victim, replica = victims[0]["node"], victims[0]["replica"]
    license_id = next(lic for identity, lic, _ in setup.nodes if identity.address == victim)
    progress(f"killing node {victim} (license {license_id}), holder of replica {replica}")
    await stop_node(victim)
    await trio.to_thread.run_sync(remove_node_containers, victim)  # its machine is gone, containers too
    at = time.monotonic()
    now_ms = int(time.time() * 1000)
    killed.update({"node": victim, "license_id": license_id, "replica": replica, "epoch": clock.epoch_at(now_ms),
                   "into_epoch_s": round((now_ms - begin) / 1000, 2)})
    while True:
        moved = [c for c in await claims() if c["replica"] == replica and c["node"] != victim
                 and c["state"] == "healthy"]
        if moved:
            killed.update({"moved_to": moved[0]["node"], "reallocation_s": round(time.monotonic() - at, 2)})
            progress(f"replica {replica} moved to {moved[0]['node']} in {killed['reallocation_s']} s")
            return
        await trio.sleep(0.25)  # polling the node's API (the devnet's deadline bounds it)


def remove_node_containers(node: str) -> None:
    runner = CarRunner(connect_engine(), node)
    for c in runner.list_managed():
        runner.remove(c.container_id)


async def remove_containers(nodes: list[str], progress: Callable[[str], object]) -> None:
    """The job was stopped: its containers go as the nodes release it; what is still there when
    the devnet ends (it stops the nodes) is removed by id, as these nodes' own."""
    progress("removing the job's containers")

    def leftovers() -> list[tuple[CarRunner, str]]:
        client = connect_engine()
        return [(runner, c.container_id) for runner in (CarRunner(client, n) for n in nodes)
                for c in runner.list_managed()]

    try:
        with trio.move_on_after(20):
            while await trio.to_thread.run_sync(leftovers):  # noqa: ASYNC110 (the engine has no event to wait on)
                await trio.sleep(0.5)
        for runner, container in await trio.to_thread.run_sync(leftovers):
            await trio.to_thread.run_sync(runner.remove, container)
    except (EngineUnavailable, DockerException, OSError) as exc:
        # the engine went away during the run: the settlement and the audit are done, and its
        # containers (if it comes back) carry the nodes' labels; the summary still prints
        log.warning("could not remove the jobs' containers: the engine does not answer",
                    extra={"error": str(exc)[:300]})


def run_devnet(chain: Chain, shape: DevnetShape, new_key: Callable[[], LocalAccount], work: Path,
               progress: Callable[[str], object] = lambda _: None,
               show: Callable[[dict[str, Any]], object] = lambda _: None,
               keep: Callable[[dict[str, Any]], object] | None = None, processes: bool = False) -> dict[str, Any]:
    """Run the devnet on ``chain`` (module docstring); return a JSON-ready summary. ``progress``
    is told each step, ``show`` a snapshot of the mesh and the money twice a second (``snapshot``).
    With ``keep``, it is handed the run's summary (before the whole one is returned) and the nodes
    and oracles stay up until SIGINT or SIGTERM. With ``processes``, every node and oracle is an OS
    process (``_devnet_processes``; the chain must be a JSON-RPC one)."""
    if processes and chain.kind == EMBEDDED:
        raise ValueError("node and oracle processes need a JSON-RPC chain, not the embedded one")
    setup = prepare(chain, shape, new_key, work, progress)
    if processes:
        from ._devnet_processes import run_processes  # (it imports this module)
        mesh = trio.run(run_processes, setup, shape, work, progress, show, keep)
    else:
        mesh = trio.run(run_mesh, setup, shape, work, progress, show, keep)
    dep, escrow, token = setup.dep, setup.dep.escrow(chain), setup.dep.payment_token(chain)
    jobs = [escrow.get_job(j["job_id"]) for j in mesh["jobs"]]
    balance, holds = int(token.balance_of(escrow.address)), sum(int(j.held) for j in jobs)
    balanced = all(t["deposited"] == t["released"] + t["refunded"] + t["burned"] + t["locked"]
                   for t in (j.conservation() for j in jobs))
    return {
        "chain": {"backend": chain.kind, "url": chain.url, "chain_id": dep.chain_id},
        "processes": processes,
        "contracts": {"LicenseRegistry": dep.license_registry, "OracleRegistry": dep.oracle_registry,
                      "JobEscrow": dep.job_escrow, "MockStablecoin": dep.token},
        "deployment": {"block": dep.block, "genesis_time": dep.genesis_time, "epoch_seconds": dep.epoch_seconds,
                       "record": str(setup.record)},
        "nodes": [{"license_id": lic, "node": i.address, "owner": owner, "api": api}
                  for (i, lic, owner), api in zip(setup.nodes, mesh.pop("api"), strict=True)],
        "oracles": [k.address for k in setup.oracle_keys],
        "oracle_threshold": shape.threshold,
        "csp": setup.csp.address,
        "epochs_settled": len({epoch for epoch, _ in mesh["settled"]}),
        **mesh,
        # every job's terms add up, and the escrow holds exactly what the devnet's jobs still hold
        "conservation": {"balanced": balanced and balance == holds, "escrow_balance": balance,
                         "escrow_holds": holds},
    }
