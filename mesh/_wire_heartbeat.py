"""Topic ``deedmesh/heartbeat/1``: a node's signed liveness beacon.

Small on purpose: liveness is the traffic that scales with N², so a beacon carries only what a
receiver needs to judge liveness and to notice that its copy of the sender's capacity is stale.
"""

from __future__ import annotations

from pydantic import Field

from ._envelope import Payload

TOPIC = "deedmesh/heartbeat/1"
VERSION = 1


class Heartbeat(Payload):
    """I am alive; my capacity advertisement is at ``capacity_version``."""

    capacity_version: int = Field(ge=0)
    uptime_s: int = Field(ge=0)
