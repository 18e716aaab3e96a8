"""A mesh participant that runs no replica: an oracle's (or any watcher's) own node on libp2p.

It holds a key registered on chain (an oracle's, in the oracle registry), keeps the same license
view as a node (licensed nodes and registered oracles, refreshed from the chain, so a ban bites
within ``license_refresh_s``), syncs heartbeats, claims and jobs with its neighbours, and
advertises no capacity, so placement never picks it. ``node run`` wires the node's own pieces
itself (runners, API); this is the part both share with a participant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from contracts import Chain, Deployment

from ._identity import NodeIdentity
from ._license_view import ChainWorker, LicenseView, fetch_eligible, fetch_oracles
from ._membership import LivenessConfig
from ._node import Node, NodeConfig, open_node
from ._transport_libp2p import Libp2pConfig, open_libp2p_transport
from ._wire_capacity import Capacity, Resources

NO_RESOURCES = Resources(cpu_millis=0, memory_mb=0, gpus=0, disk_mb=0)


@dataclass(frozen=True)
class ParticipantSettings:
    listen: str = "/ip4/127.0.0.1/tcp/0"  # loopback unless the operator opens it
    bootstrap: tuple[str, ...] = ()
    heartbeat_interval_ms: int = 1_000  # as the nodes beat (NodeSettings)
    target_peers: int = 4
    license_refresh_s: float = 5.0


@asynccontextmanager
async def open_participant(identity: NodeIdentity, chain: Chain, deployment: Deployment, worker: ChainWorker,
                           settings: ParticipantSettings = ParticipantSettings(),
                           tags: tuple[str, ...] = ("oracle",)) -> AsyncIterator[Node]:
    """Join the mesh of ``deployment`` as ``identity`` until the block exits. Chain reads go
    through ``worker``: the caller's other chain calls share its one thread."""
    licenses, oracles = deployment.licenses(chain), deployment.oracles(chain)
    view = LicenseView(partial(fetch_eligible, licenses), worker, settings.license_refresh_s,
                       block=chain.block_number, fetch_oracles=partial(fetch_oracles, oracles))
    listen = Libp2pConfig(listen=settings.listen, pubsub=False)  # neighbour sync alone, as nodes gossip
    config = NodeConfig(liveness=LivenessConfig(heartbeat_interval_ms=settings.heartbeat_interval_ms),
                        target_peers=settings.target_peers)
    capacity = Capacity(version=1, total=NO_RESOURCES, free=NO_RESOURCES, tags=tags)
    escrow = (chain.chain_id, deployment.escrow(chain).address)
    async with open_libp2p_transport(identity, listen, settings.bootstrap) as transport, \
            trio.open_nursery() as nursery:
        await nursery.start(view.run)
        async with open_node(config, identity, transport, capacity, view.is_eligible, bootstrap=settings.bootstrap,
                             escrow=escrow, is_oracle=view.is_oracle) as node:
            yield node
        nursery.cancel_scope.cancel()
