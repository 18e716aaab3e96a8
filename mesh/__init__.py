"""deedmesh's node: identity, wire messages, transport, membership, placement, runners, API, CLI.

May use the public API of ``contracts``; never imports ``oracle``. Everything public is listed in
``__all__``: the CLI, and what an oracle needs to take part in the mesh and read its placement.
"""

from ._cli import EXIT_CODES, main
from ._cli_job import deploy_spec
from ._engine import EngineUnavailable, connect_engine
from ._errors import KeystoreError, MeshError, TransportError
from ._identity import NodeIdentity, read_keystore, resolve_password, write_keystore
from ._jobspec import JobSpec, spec_hash
from ._jobspec_load import load_spec
from ._license_view import ChainWorker
from ._membership import PeerState
from ._node import Node, NodeConfig, open_node
from ._participant import ParticipantSettings, open_participant
from ._process import NodeSettings, serve_node
from ._runner_car import CarRunner
from ._scheduler import assignment, assignments, placeable_jobs
from ._transport import Message
from ._transport_libp2p import Libp2pConfig, open_libp2p_transport, peer_id_of, request_once
from ._trio_types import TaskStatus

# what oracles use: a mesh participant of their own (``open_participant``, or its parts), the
# placement every node computes, one chain thread, and one-shot requests to a peer; what the
# devnet uses: whole nodes in its own process (``serve_node``) and a CSP's signed deployment
__all__ = ["CarRunner", "ChainWorker", "EXIT_CODES", "EngineUnavailable", "JobSpec", "KeystoreError", "Libp2pConfig",
           "MeshError", "Message", "Node", "NodeConfig", "NodeIdentity", "NodeSettings", "ParticipantSettings",
           "PeerState", "TaskStatus", "TransportError", "assignment", "assignments", "connect_engine", "deploy_spec",
           "load_spec", "main", "open_libp2p_transport", "open_node", "open_participant", "peer_id_of",
           "placeable_jobs", "read_keystore", "request_once", "resolve_password", "serve_node", "spec_hash",
           "write_keystore"]
