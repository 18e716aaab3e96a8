"""Whether a job the mesh relayed may run here: the chain, read by the node that would run it.

A relayed job record proves that the CSP signed the submission and the spec (``_wire_job``), but
only the node that accepted it read the escrow. A licensed node could relay a submission its CSP
signed for a job that was never funded, or that another CSP owns. So before a node *claims* a
replica it reads the escrow for that (job, CSP, nonce) itself and runs the same chain checks as
the desk (``check_chain_facts``): the job exists, is active and funded, the signer owns it, the
spec hash and replica count are the funded ones, the CSP is admitted. Only candidates read: a
node asks for the jobs its plan would claim, so a job costs about R reads across the mesh, not N.

Every honest node reads the same chain, so every candidate refuses an unfunded job alike and no
node claims it; a job id that two CSPs name (one record is forged) is placed by every node once
the chain tells which CSP owns it: those records are read by every node (``placeable_jobs``).

Verdicts are kept per (job, CSP, nonce). A refusal is read again after ``REFUSAL_TTL_S`` (the
node's RPC endpoint may lag the one the accepting node used); a chain that cannot be reached
leaves the job unverified and is tried again after ``RETRY_S``. A granted verdict lasts as long as
that action: ending a running job on chain (completion, cancellation) is settlement's part.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from contracts import ChainError

from ._envelope import to_checksum_address
from ._node import KnownJob, Node
from ._submission import ChainFacts, Rejected, check_chain_facts
from ._trio_types import TaskStatus
from ._wire_job import TOPIC as JOBS_TOPIC

log = logging.getLogger("deedmesh.jobs")

REFUSAL_TTL_S = 10.0
RETRY_S = 2.0
BATCH = 8  # reads per trip to the chain worker: a submission's read waits behind one batch at most

Key = tuple[int, str, int]  # (job id, CSP lower-case, nonce)
ReadFacts = Callable[[list[tuple[int, str]]], Awaitable[list[ChainFacts]]]  # (job, csp) pairs -> facts, in order


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "" when ok; a ``Rejected`` reason otherwise
    at: float  # trio time of the read


class JobCheck:
    """Verdicts of the chain on relayed jobs, read on demand (module docstring)."""

    def __init__(self, node: Node, read_facts: ReadFacts, now_s: Callable[[], int] = lambda: int(time.time())) -> None:
        self.node = node
        self._read_facts = read_facts
        self._now_s = now_s
        self.verdicts: dict[Key, Verdict] = {}
        self._wanted: dict[Key, KnownJob] = {}
        self._failed_at: dict[Key, float] = {}
        self._asked = trio.Event()

    def verdict(self, known: KnownJob) -> bool | None:
        """True: the chain backs this action; False: it does not; None: not read yet."""
        found = self.verdicts.get(_key(known))
        return None if found is None else found.ok

    def want(self, jobs: Iterable[KnownJob]) -> None:
        """Read these jobs' facts soon (those without a fresh verdict)."""
        now = trio.current_time()
        for known in jobs:
            key = _key(known)
            found = self.verdicts.get(key)
            if found is not None and (found.ok or now - found.at < REFUSAL_TTL_S):
                continue
            if now - self._failed_at.get(key, -math.inf) < RETRY_S:
                continue
            self._wanted[key] = known
        if self._wanted:
            self._asked.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._asked.wait()
            self._asked = trio.Event()
            while self._wanted:
                batch = [self._wanted.pop(key) for key in list(self._wanted)[:BATCH]]
                await self._read(batch)
            self._forget_gone()
            self.node.notify()  # the next plan claims what was granted

    async def _read(self, batch: list[KnownJob]) -> None:
        try:
            facts = await self._read_facts([(known.job_id, to_checksum_address(known.record.csp)) for known in batch])
        except ChainError as exc:
            now = trio.current_time()
            for known in batch:
                self._failed_at[_key(known)] = now
            log.warning("cannot read the escrow for relayed jobs", extra={"jobs": len(batch), "error": str(exc)})
            return
        now_s, now = self._now_s(), trio.current_time()
        for known, fact in zip(batch, facts, strict=True):
            key = _key(known)
            self._failed_at.pop(key, None)
            sub, spec = known.record.submission, known.spec
            try:
                check_chain_facts(sub, known.record.csp, fact, replicas=None if spec is None else spec.replicas,
                                  now_s=now_s)
            except Rejected as bad:
                self.verdicts[key] = Verdict(False, bad.reason, now)
                self.node.gossip.counters[(JOBS_TOPIC, "REJECT", f"chain-{bad.reason}")] += 1
                log.warning("a relayed job is not backed by the chain: not run here",
                            extra={"job": sub.job_id, "csp": known.record.csp, "reason": bad.reason})
            else:
                self.verdicts[key] = Verdict(True, "", now)

    def _forget_gone(self) -> None:
        """Drop verdicts of actions the node no longer knows (superseded by a newer nonce, forgotten)."""
        current = {_key(known) for known in self.node.jobs.values()}
        for gone in set(self.verdicts) - current:
            del self.verdicts[gone]
        for gone in set(self._failed_at) - current:
            del self._failed_at[gone]


def _key(known: KnownJob) -> Key:
    return (known.job_id, known.record.csp, known.nonce)
