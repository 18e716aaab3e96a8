"""deedmesh's node: identity, wire messages, transport, membership, placement, runners, API, CLI.

May use the public API of ``contracts``; never imports ``oracle``. Everything public is listed in
``__all__``: the CLI, and what an oracle needs to take part in the mesh and read its placement.
"""

from ._cli import EXIT_CODES, main
from ._errors import KeystoreError, MeshError, TransportError
from ._identity import NodeIdentity, read_keystore, resolve_password
from ._license_view import ChainWorker
from ._membership import PeerState
from ._node import Node, NodeConfig, open_node
from ._participant import ParticipantSettings, open_participant
from ._scheduler import assignment, placeable_jobs
from ._transport import Message
from ._transport_libp2p import Libp2pConfig, open_libp2p_transport, peer_id_of, request_once
from ._trio_types import TaskStatus

# what oracles use: a mesh participant of their own (``open_participant``, or its parts), the
# placement every node computes, one chain thread, and one-shot requests to a peer
__all__ = ["EXIT_CODES", "ChainWorker", "KeystoreError", "Libp2pConfig", "MeshError", "Message", "Node",
           "NodeConfig", "NodeIdentity", "ParticipantSettings", "PeerState", "TaskStatus", "TransportError",
           "assignment", "main", "open_libp2p_transport", "open_node", "open_participant", "peer_id_of",
           "placeable_jobs", "read_keystore", "request_once", "resolve_password"]
