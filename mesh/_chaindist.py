"""ChainDist's rules, pure: which input a shard gets, which workers a shard goes to and in what
order, the coordinator's book of a run, and the digest of its result.

A ChainDist job fans ``shards`` shards of its work out to worker nodes and aggregates their
outputs. Its one replica's holder (the placement rule) **coordinates**; each shard goes to the
first worker of its own rendezvous order (``rank_workers``: the same keccak weights as placement,
over (job, shard)) that is alive, eligible and was given it least often, so any node can
recompute where a shard should run. A worker that fails, dies or stays silent loses its shard to
the next one; a shard tried ``MAX_ATTEMPTS`` times without an output fails the run. The first output of a
shard is kept; a later one (a worker thought lost that answers after all) is a duplicate and is
ignored. The result is the aggregate's output over the shards' outputs in shard order, and its
digest binds the job id, every shard's output and the aggregate (``result_digest``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from contracts import keccak

MAX_ATTEMPTS = 3  # workers tried per shard before the run fails
MAX_OUTPUT_BYTES = 1 << 20  # a shard's output (its stdout), and the aggregate's


def shard_input(text: str, shard: int, shards: int) -> str:
    """Shard ``shard``'s part of the job's input: every ``shards``-th line from line ``shard`` on."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return "".join(line for i, line in enumerate(text.splitlines(keepends=True)) if i % shards == shard)


def compute_shard_weight(job_id: int, shard: int, address: str) -> int:
    """A worker's rendezvous weight for one shard (placement's weight, keyed by the shard too)."""
    return int.from_bytes(keccak(b"deedmesh/shard" + job_id.to_bytes(32, "big") + shard.to_bytes(4, "big")
                                 + bytes.fromhex(address.removeprefix("0x").lower())), "big")


def rank_workers(job_id: int, shard: int, workers: Iterable[str]) -> list[str]:
    """``workers`` in the order shard ``shard`` of ``job_id`` tries them: heaviest weight first."""
    return sorted(set(workers), key=lambda a: (compute_shard_weight(job_id, shard, a), a.lower()), reverse=True)


def result_digest(job_id: int, outputs: Iterable[bytes], aggregate: bytes) -> str:
    """sha256 over the job id, each shard's output's sha256 in shard order, and the aggregate's
    sha256: what a CSP or an oracle recomputes from the outputs to check a stored result."""
    h = hashlib.sha256(b"deedmesh/chaindist/1" + job_id.to_bytes(32, "big"))
    for output in outputs:
        h.update(hashlib.sha256(output).digest())
    h.update(hashlib.sha256(aggregate).digest())
    return h.hexdigest()


@dataclass
class ShardBook:
    """The coordinator's book of one run (module docstring): pure, the I/O is the runner's."""

    job_id: int
    shards: int
    max_attempts: int = MAX_ATTEMPTS
    tried: dict[int, list[str]] = field(default_factory=dict)  # shard -> workers given it, in order
    running: dict[int, str] = field(default_factory=dict)  # shard -> the worker it runs on now
    outputs: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # shard -> (worker, output)
    failures: dict[int, list[str]] = field(default_factory=dict)  # shard -> why each attempt failed
    duplicates: int = 0  # outputs that came after the shard's first

    def next_worker(self, shard: int, workers: Iterable[str]) -> str | None:
        """The worker to give ``shard`` to now: the first of its order among ``workers`` that was
        given it least often (so every live worker is tried before one is tried again), or None:
        it has its output, runs, was tried too often, or there is no worker."""
        if shard in self.outputs or shard in self.running or self.exhausted(shard):
            return None
        tried = self.tried.get(shard, [])
        ranked = rank_workers(self.job_id, shard, workers)
        return min(ranked, key=lambda w: (tried.count(w), ranked.index(w)), default=None)

    def start(self, shard: int, worker: str) -> None:
        if shard in self.running:
            raise ValueError(f"shard {shard} already runs on {self.running[shard]}")
        self.tried.setdefault(shard, []).append(worker)
        self.running[shard] = worker

    def fail(self, shard: int, worker: str, reason: str) -> None:
        """``worker``'s attempt at ``shard`` ended without an output (it failed, died or went silent)."""
        if self.running.get(shard) == worker:
            del self.running[shard]
        self.failures.setdefault(shard, []).append(f"{worker}: {reason}")

    def accept(self, shard: int, worker: str, output: bytes) -> bool:
        """Keep ``worker``'s output of ``shard`` if it is the first; False for a duplicate, or an
        output from a worker never given the shard."""
        if worker not in self.tried.get(shard, []):
            return False
        if self.running.get(shard) == worker:
            del self.running[shard]
        if shard in self.outputs:
            self.duplicates += 1
            return False
        self.outputs[shard] = (worker, output)
        return True

    def exhausted(self, shard: int) -> bool:
        return shard not in self.outputs and len(self.failures.get(shard, [])) >= self.max_attempts

    @property
    def done(self) -> bool:
        return len(self.outputs) == self.shards

    @property
    def failed(self) -> list[int]:
        """Shards that ran out of attempts."""
        return [s for s in range(self.shards) if self.exhausted(s)]

    def ordered_outputs(self) -> list[bytes]:
        if not self.done:
            raise ValueError("not every shard has its output")
        return [self.outputs[s][1] for s in range(self.shards)]
