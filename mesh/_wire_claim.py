"""Record ``deedmesh/claims/1``: every replica a node claims, in one signed record per node.

One record per node rather than one message per claim: a node re-signs its whole claim set when
it changes and when a lease passes half-time, so the mesh carries one signature per node per
change however many replicas it runs (the claimant is the envelope's origin); each entry also says
how the replica is doing there (state, restarts), re-signed when that changes. Rules for who may
claim what are ``_placement``'s; a release is the claim with its lease ended (or its absence).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ._envelope import Payload
from ._placement import Claim

TOPIC = "deedmesh/claims/1"
MAX_CLAIMS = 128  # a record stays well under the 16 KiB envelope limit (~90 bytes a claim)


# "oom-killed": the container exited, killed for going over its memory limit (a sizing problem the
# CSP must see, where "exited" would look like the workload's own fault)
ReplicaState = Literal["claimed", "starting", "running", "healthy", "unhealthy", "exited", "oom-killed"]


class ClaimEntry(Payload):
    job_id: int = Field(ge=1, lt=2**256)
    replica: int = Field(ge=0, lt=64)
    generation: int = Field(ge=1, lt=2**63)
    lease_until_ms: int = Field(ge=0, lt=2**63)
    # how the replica is doing on its node, so ``job status`` from any node shows it
    state: ReplicaState = "claimed"
    restarts: int = Field(default=0, ge=0, lt=2**31)


class Claims(Payload):
    claims: tuple[ClaimEntry, ...] = Field(max_length=MAX_CLAIMS)

    @model_validator(mode="after")
    def _one_entry_per_replica(self) -> Claims:
        keys = [(c.job_id, c.replica) for c in self.claims]
        if len(set(keys)) != len(keys):
            raise ValueError("two entries for one replica")
        return self

    def as_claims(self, node: str) -> list[Claim]:
        """The entries as placement claims by ``node`` (the record's origin)."""
        return [Claim(c.job_id, c.replica, node, c.generation, c.lease_until_ms) for c in self.claims]
