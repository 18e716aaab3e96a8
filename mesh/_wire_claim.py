"""Record ``deedmesh/claims/1``: every replica a node claims, in one signed record per node.

One record per node rather than one message per claim: a node re-signs its whole claim set when
it changes and when a lease passes half-time, so the mesh carries one signature per node per
change however many replicas it runs (the claimant is the envelope's origin); each entry also says
how the replica is doing there (state, restarts), re-signed when that changes. Rules for who may
claim what are ``_placement``'s; a release is the claim with its lease ended (or its absence).

On the wire the set is compact: one lease for the whole set (a node renews every entry whenever
it re-signs, ``_scheduler.plan``) and each entry as ``[job id, replica, generation, state,
restarts]``. Every node checks every version of every node's set, and objects with named fields
cost about twice as much to encode, hash and validate (a 100-entry set: 11.4 KiB and 0.7 ms to
check as objects). ``claims`` gives the entries as ``ClaimEntry`` objects, built when first read.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ._envelope import Payload
from ._placement import Claim

TOPIC = "deedmesh/claims/1"
# entries per set: ~35 bytes each for escrow job ids (counters), so a full set stays well under
# the 16 KiB envelope; it also caps the replicas one node holds (a placement rule, _scheduler)
MAX_CLAIMS = 256


# "oom-killed": the container exited, killed for going over its memory limit (a sizing problem the
# CSP must see, where "exited" would look like the workload's own fault)
# "completed" / "failed": a ChainDist job's run is over, with its result (its digest below) or without
ReplicaState = Literal["claimed", "starting", "running", "healthy", "unhealthy", "exited", "oom-killed", "completed",
                       "failed"]

JobId = Annotated[int, Field(ge=1, lt=2**256)]
Replica = Annotated[int, Field(ge=0, lt=64)]
Generation = Annotated[int, Field(ge=1, lt=2**63)]
Restarts = Annotated[int, Field(ge=0, lt=2**31)]
Entry = tuple[JobId, Replica, Generation, ReplicaState, Restarts]
# a WAR replica's versions: the commit prefix it serves and the last one whose rollout failed ("": none)
Version = Annotated[str, Field(pattern=r"^[0-9a-f]{0,40}$")]
VersionEntry = tuple[JobId, Replica, Version, Version]
# a finished ChainDist run's result digest (sha256, _chaindist.result_digest)
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ResultEntry = tuple[JobId, Replica, Digest]
# a replica's spec revision during and after a rolling update (``_rollout``): the one it runs and
# one it failed to reach ("": none)
Revision = Annotated[str, Field(pattern=r"^([0-9a-f]{8})?$")]
RevisionEntry = tuple[JobId, Replica, Revision, Revision]


class ClaimEntry(Payload):
    job_id: JobId
    replica: Replica
    generation: Generation
    lease_until_ms: int = Field(ge=0, lt=2**63)
    # how the replica is doing on its node, so ``job status`` from any node shows it
    state: ReplicaState = "claimed"
    restarts: Restarts = 0


class Claims(Payload):
    """A node's claim set. Build it from entries with ``Claims.of`` (they must share one lease);
    it travels as ``lease_until_ms`` and compact ``entries``."""

    lease_until_ms: int = Field(default=0, ge=0, lt=2**63)
    entries: tuple[Entry, ...] = Field(default=(), max_length=MAX_CLAIMS)
    # [job id, replica, serving, failed] for the WAR replicas among the entries (absent: none)
    versions: tuple[VersionEntry, ...] = Field(default=(), max_length=MAX_CLAIMS)
    # [job id, replica, digest] for the ChainDist runs among the entries that completed
    results: tuple[ResultEntry, ...] = Field(default=(), max_length=MAX_CLAIMS)
    # [job id, replica, revision running, revision failed] for the replicas of updated jobs
    revisions: tuple[RevisionEntry, ...] = Field(default=(), max_length=MAX_CLAIMS)

    @model_validator(mode="before")
    @classmethod
    def _from_entries(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if isinstance(data.get("entries"), list):  # from JSON (this validator makes pydantic read it as Python)
            data = data | {"entries": tuple(tuple(e) if isinstance(e, list) else e for e in data["entries"])}
            for name in ("versions", "results", "revisions"):
                if isinstance(data.get(name), list):
                    data[name] = tuple(tuple(v) if isinstance(v, list) else v for v in data[name])
            return data
        if "claims" not in data:
            return data
        rest = {k: v for k, v in data.items() if k != "claims"}
        entries = tuple(data["claims"])
        leases = {e.lease_until_ms for e in entries}
        if len(leases) > 1:
            raise ValueError("the entries of one claim set share one lease")
        return rest | {"lease_until_ms": leases.pop() if leases else 0,
                       "entries": tuple((e.job_id, e.replica, e.generation, e.state, e.restarts) for e in entries)}

    @model_validator(mode="after")
    def _one_entry_per_replica(self) -> Claims:
        keys = {(e[0], e[1]) for e in self.entries}
        if len(keys) != len(self.entries):
            raise ValueError("two entries for one replica")
        for name, extra in (("versions", self.versions), ("results", self.results), ("revisions", self.revisions)):
            named = [(v[0], v[1]) for v in extra]
            if len(set(named)) != len(named) or not keys.issuperset(named):
                raise ValueError(f"{name} name each claimed replica at most once, and only claimed ones")
        return self

    @cached_property
    def results_of(self) -> dict[tuple[int, int], str]:
        """(job, replica) -> the result digest of a completed ChainDist run."""
        return {(j, r): digest for j, r, digest in self.results}

    @cached_property
    def revisions_of(self) -> dict[tuple[int, int], tuple[str, str]]:
        """(job, replica) -> (revision running, revision failed) for the replicas of updated jobs."""
        return {(j, r): (running, failed) for j, r, running, failed in self.revisions}

    @cached_property
    def states_of(self) -> dict[tuple[int, int], ReplicaState]:
        """(job, replica) -> the state its holder reports."""
        return {(e[0], e[1]): e[3] for e in self.entries}

    @cached_property
    def versions_of(self) -> dict[tuple[int, int], tuple[str, str]]:
        """(job, replica) -> (version serving, version whose rollout failed) for WAR replicas."""
        return {(j, r): (serving, failed) for j, r, serving, failed in self.versions}

    @classmethod
    def of(cls, entries: Iterable[ClaimEntry], versions: Iterable[tuple[int, int, str, str]] = (),
           results: Iterable[tuple[int, int, str]] = (), revisions: Iterable[tuple[int, int, str, str]] = ()) -> Claims:
        """The set of these entries (which share one lease), with the WAR replicas' ``versions``,
        the ChainDist runs' ``results`` and the updated jobs' ``revisions``."""
        return cls.model_validate({"claims": tuple(entries), "versions": tuple(versions), "results": tuple(results),
                                   "revisions": tuple(revisions)})

    @cached_property
    def claims(self) -> tuple[ClaimEntry, ...]:
        """The entries, each with the set's lease (validated already: built without a second pass)."""
        return tuple(ClaimEntry.model_construct(job_id=j, replica=r, generation=g, lease_until_ms=self.lease_until_ms,
                                                state=s, restarts=n) for j, r, g, s, n in self.entries)

    def as_claims(self, node: str) -> list[Claim]:
        """The entries as placement claims by ``node`` (the record's origin)."""
        return [Claim(j, r, node, g, self.lease_until_ms) for j, r, g, _, _ in self.entries]
