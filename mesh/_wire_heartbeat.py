"""Record ``deedmesh/heartbeat/1``: a node's signed liveness beacon.

Small on purpose: liveness is the traffic that grows with N², so a beacon carries only what a
receiver needs to judge liveness (the interval the sender beats at, so every receiver applies the
sender's own deadline) and to notice that its copy of the sender's capacity is stale. Heartbeats
travel by neighbour sync (``_sync``), batched, never as one gossipsub message each.
"""

from __future__ import annotations

from pydantic import Field

from ._envelope import Payload

TOPIC = "deedmesh/heartbeat/1"
VERSION = 1


class Heartbeat(Payload):
    """I am alive, beating every ``interval_ms``; my capacity advertisement is at ``capacity_version``."""

    interval_ms: int = Field(ge=1, le=3_600_000)
    capacity_version: int = Field(ge=0)
    uptime_s: int = Field(ge=0)
