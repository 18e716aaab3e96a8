"""deedmesh's node: identity, wire messages, transport, membership, placement, runners, API, CLI.

May use the public API of ``contracts``; never imports ``oracle``. Everything public is listed in
``__all__``: the CLI, and what an oracle needs to take part in the mesh and read its placement.
"""

from ._cli import EXIT_CODES, main
from ._membership import PeerState
from ._node import Node, NodeConfig, open_node
from ._scheduler import assignment, placeable_jobs
from ._transport import Message
from ._trio_types import TaskStatus

# what oracles use: a mesh participant of their own, and the placement every node computes
__all__ = ["EXIT_CODES", "Message", "Node", "NodeConfig", "PeerState", "TaskStatus", "assignment", "main",
           "open_node", "placeable_jobs"]
