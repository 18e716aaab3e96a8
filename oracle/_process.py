"""``deedmesh oracle run``: one oracle as an OS process — its key, the chain, its own mesh
participant on libp2p (``mesh.open_participant``) and the agreement (``_service.Oracle``), all in
one trio nursery.

When up it prints one JSON line on stdout, ``{"event": "ready", "address", "peer_id", "addrs",
"directory"}``, then one line per epoch it saw through: ``{"event": "settled", "epoch", "root",
"rounds", "led"}`` once the epoch's root is on chain (``led``: the outcomes of the rounds this
oracle led), ``{"event": "no-quorum", ...}`` when it gave the epoch up, or ``{"event":
"passed-over", ...}`` when a later epoch's report landed before this one had any (either way
SETTLEMENT.md: its amounts stay locked). Supervisors and tests read these lines.

The work directory keeps the watch logs (observations survive a restart: an oracle restarted
mid-epoch observes what it saw and says so) and the settled reports, content-addressed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_account import Account

from contracts import Chain, Deployment
from mesh import ChainWorker, MeshError, NodeIdentity, ParticipantSettings, open_participant, peer_id_of

from ._service import Oracle, OracleConfig
from ._watch import EpochClock


class NotAnOracle(MeshError):
    """The key is not in the deployment's oracle registry: nothing it signs would count."""


@dataclass(frozen=True)
class OracleSettings:
    rpc: str
    deployment: Path
    participant: ParticipantSettings = field(default_factory=ParticipantSettings)
    config: OracleConfig = field(default_factory=OracleConfig)


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


async def serve_oracle(identity: NodeIdentity, settings: OracleSettings, directory: Path) -> None:
    chain = await trio.to_thread.run_sync(Chain.connect, settings.rpc)
    deployment = Deployment.load(settings.deployment)
    deployment.check_chain(chain)
    gate = ChainWorker()  # every chain call of this process, one at a time
    members = await gate.run(deployment.oracles(chain).oracles)
    if identity.address.lower() not in {m.lower() for m in members}:
        raise NotAnOracle(f"{identity.address} is not a registered oracle of the deployment's oracle registry "
                          f"{deployment.oracle_registry}")
    chain.add_signer(Account.from_key(identity.private_key))  # it signs its own submitReport and burns
    genesis, seconds, _ = await gate.run(deployment.escrow(chain).epoch_clock)
    clock = EpochClock(genesis_ms=genesis * 1000, epoch_ms=seconds * 1000)
    async with open_participant(identity, chain, deployment, gate, settings.participant) as node:
        oracle = Oracle(node, identity.private_key, chain, deployment, clock, directory, gate, settings.config,
                        on_event=emit)
        async with trio.open_nursery() as nursery:
            await nursery.start(oracle.run)
            emit({"event": "ready", "address": identity.address, "peer_id": peer_id_of(identity),
                  "addrs": node.transport.addrs(), "directory": str(directory),
                  "epoch_seconds": seconds})


def run(identity: NodeIdentity, settings: OracleSettings, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # its own: watch logs, reports
    try:
        trio.run(serve_oracle, identity, settings, directory)
    except KeyboardInterrupt:
        print(json.dumps({"event": "stopped"}), file=sys.stderr)
