"""JobEscrow as a state machine: random sequences of everything the escrow does, against a Python model.

Hypothesis drives jobs (create, top up, scale up and down, cancel, close), the epoch clock, quorum-signed epoch reports
(valid ones with random cumulative node pay, refunds and burns, sometimes promising more node pay
than they allocate or carrying a job's totals no escrow would apply, and deliberately broken
ones), which land without touching any job; the application of their job totals (of any landed
report: newer, older, repeated, out of order, sometimes forged), alone or in the same transaction
(multicall) as claims by owners and keepers, forfeits, refunds, burns and closes; CSP admissions
and license sanctions, in random order. A model of every job's accounts
and of the token balances of every party (license owners, both CSPs, the burn address, the escrow)
predicts each call's outcome: its effect, or the named error it reverts with. After every step an
invariant checks SETTLEMENT.md's conservation on chain (``World.assert_conserved``), that the
chain's balances equal the model's (so a revert moved nothing), and the accounts of the jobs the
step touched.

Each example starts from a snapshot of the session's deployed world (``_deployed``) and reverts to
it in ``teardown``. The machine is bound to that world by a fixture that subclasses it; the test is
not a ``@given`` test, so hypothesis shares no function-scoped fixture between examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pytest
from eth_utils import is_address, to_checksum_address
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contracts import (
    BPS_DENOMINATOR,
    BURN_ADDRESS,
    EMBEDDED,
    Claim,
    ContractRevert,
    Epoch,
    JobId,
    JobParams,
    JobStatus,
    JobTotals,
    LicenseStatus,
    MerkleTree,
    SettlementPolicy,
    TokenUnits,
    TotalsProof,
    epoch_report,
    recover,
    reverts,
    totals_leaf,
    totals_proofs,
    totals_root,
    verify,
)

from .world import EPOCH_SECONDS, GRACE_EPOCHS, World

# 12 examples of 28 steps: ~35 s on anvil (the contract tests run there only); a full check costs ~0.1 s.
SETTINGS = settings(max_examples=12, stateful_step_count=28, deadline=None)
MAX_JOBS = 4  # per example: keeps the per-step conservation check (one getJob per job) cheap
MAX_BLACKLISTED = 2  # blacklisting is final; keep most of the five licenses usable
MAX_PRICE = 1_000_000
ADMISSION_REF = b"\x11" * 32
NO_TOTALS = b"\x00" * 32

Failure = tuple[type[ContractRevert], dict[str, Any]]


def chance(data: st.DataObject, one_in: int, label: str) -> bool:
    """True with probability 1/one_in (shrinks towards True: the rare branch)."""
    return data.draw(st.integers(0, one_in - 1), label=label) == 0


@dataclasses.dataclass
class ModelJob:
    """What the escrow should store for a job (the fields the model can predict)."""

    csp: str
    start_epoch: int
    epochs: int
    replicas: int
    price: int
    policy: tuple[int, int, int]  # release threshold, burn floor, protocol burn bps
    deposited: int
    status: JobStatus = JobStatus.ACTIVE
    alloc_release: int = 0
    release_spent: int = 0
    alloc_refund: int = 0
    refunded: int = 0
    alloc_burn: int = 0
    burned: int = 0
    reclaimed: int = 0
    forfeited: int = 0
    settled_until: int = 0  # 1 + the epoch of the totals applied last

    @property
    def allocated(self) -> int:
        return self.alloc_release + self.alloc_refund + self.alloc_burn

    @property
    def locked(self) -> int:
        return self.deposited - self.reclaimed - self.allocated

    @property
    def held(self) -> int:
        return self.deposited - self.release_spent - self.refunded - self.burned - self.reclaimed

    @property
    def closable_from(self) -> int:
        return self.start_epoch + self.epochs + GRACE_EPOCHS

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs

    def accounts(self) -> tuple[Any, ...]:
        """Everything the escrow stores about the job but its spec hash, in a fixed order."""
        return (self.csp, self.start_epoch, self.epochs, self.replicas, self.price, self.policy, self.status,
                self.deposited, self.alloc_release, self.release_spent, self.alloc_refund, self.refunded,
                self.alloc_burn, self.burned, self.reclaimed, self.forfeited, self.settled_until)


def chain_accounts(world: World, job_id: int) -> tuple[Any, ...]:
    """``ModelJob.accounts`` of the job as the escrow stores it."""
    j = world.escrow.get_job(job_id)
    policy = (j.policy.release_threshold, j.policy.burn_floor, j.policy.protocol_burn_bps)
    return (j.csp, j.start_epoch, j.epochs, j.replicas, j.price_per_node_epoch, policy, j.status, j.deposited,
            j.alloc_release, j.release_spent, j.alloc_refund, j.refunded, j.alloc_burn, j.burned, j.reclaimed,
            j.forfeited, world.escrow.settled_until(job_id))


def read_balances(world: World, accounts: Sequence[str]) -> dict[str, int]:
    """Token balances of ``accounts``: one JSON-RPC batch on a node, one call each on eth-tester
    (which has no batches)."""
    if world.chain.kind == EMBEDDED:
        return {a: world.token.balance_of(a) for a in accounts}
    balance_of = world.token.contract.functions.balanceOf
    with world.chain.w3.batch_requests() as batch:
        for a in accounts:
            batch.add(balance_of(a))
        return dict(zip(accounts, (int(b) for b in batch.execute()), strict=True))


@dataclasses.dataclass(frozen=True)
class PostedRoot:
    """A landed report: its node-pay tree and the (job, license) -> cumulative pay leaves it holds,
    its totals root and each job's totals with their proof."""

    tree: MerkleTree
    pay: dict[tuple[int, int], int]
    totals_root: bytes
    proofs: dict[int, TotalsProof]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The deployed world's state every example starts from (read once per test, restored by revert)."""

    block: int
    genesis: int
    now: int
    next_epoch: int
    last_job_id: int
    threshold: int
    statuses: dict[int, LicenseStatus]
    admitted_until: dict[str, int]
    balances: dict[str, int]

    @classmethod
    def read(cls, world: World) -> Baseline:
        genesis, epoch_seconds, grace = world.escrow.epoch_clock()
        assert (epoch_seconds, grace) == (EPOCH_SECONDS, GRACE_EPOCHS)
        accounts = [*world.owners, world.csp, world.csp2, BURN_ADDRESS, world.escrow.address]
        return cls(
            block=world.chain.block_number(), genesis=genesis, now=world.chain.now(),
            next_epoch=world.escrow.next_epoch(), last_job_id=world.escrow.last_job_id(),
            threshold=world.oracles.threshold(),
            statuses={lic: world.licenses.status_of(lic) for lic in world.license_ids},
            admitted_until={c: world.escrow.admitted_until(c) for c in (world.csp, world.csp2)},
            balances={a: world.token.balance_of(a) for a in accounts},
        )


class EscrowMachine(RuleBasedStateMachine):
    """The model and the rules; bound to a world by a subclass that sets ``world`` and ``base``."""

    world: ClassVar[World]
    base: ClassVar[Baseline]

    def __init__(self) -> None:
        super().__init__()
        w, base = self.world, self.base
        self.snapshot = w.chain.snapshot()
        assert w.chain.block_number() == base.block, "the previous example was not reverted"
        self.now = base.now  # a lower bound: every mined block adds a second or so on top
        self.next_epoch = base.next_epoch
        self.next_job_id = base.last_job_id + 1
        self.jobs: dict[int, ModelJob] = {}
        self.pay: dict[tuple[int, int], int] = {}  # latest signed cumulative node pay
        self.signed: dict[int, JobTotals] = {}  # latest honest cumulative totals signed per job
        self.claimed: dict[tuple[int, int], int] = {}
        self.roots: dict[int, PostedRoot] = {}
        self.owner_of = dict(zip(w.license_ids, w.owners, strict=True))
        self.status = dict(base.statuses)
        self.admitted_until = dict(base.admitted_until)
        self.balances = dict(base.balances)
        self.dirty_jobs: set[int] = set()
        self.dirty_claims: set[tuple[int, int]] = set()
        self.last_checked: tuple[bytes, Any] | None = None

    def teardown(self) -> None:
        self.world.chain.revert_to(self.snapshot)

    # ------------------------------------------------------------------ model helpers

    @property
    def epoch(self) -> int:
        return (self.now - self.base.genesis) // EPOCH_SECONDS

    def admitted(self, csp: str) -> bool:
        # admissions last 10**6 s (11.6 epochs) and the clock moves in whole epochs, so the expiry is
        # always hours away from `now`: the seconds blocks add never decide it
        return self.admitted_until[csp] > self.now

    def active_jobs(self) -> list[int]:
        return sorted(j for j, job in self.jobs.items() if job.status == JobStatus.ACTIVE)

    def move(self, source: str, target: str, amount: int) -> None:
        assert amount >= 0
        self.balances[source] -= amount
        self.balances[target] += amount

    def expect(self, failure: Failure, send: Callable[[], object]) -> None:
        """``send`` must revert with ``failure``'s error and arguments (the invariant then checks nothing moved)."""
        error, expected_args = failure
        with pytest.raises(error) as raised:
            send()
        got = {k: to_checksum_address(v) if isinstance(v, str) and is_address(v) else v
               for k, v in raised.value.args_by_name.items()}
        for name, value in expected_args.items():
            assert got[name] == value, (error.__name__, name, got)
        event(f"revert {error.__name__}")

    def draw_job_id(self, data: st.DataObject, prefer: Callable[[ModelJob], bool] = lambda job: True) -> int:
        """Usually a job ``prefer`` likes; else any job of this example, or (rarely) one that does not exist."""
        preferred = sorted(j for j, job in self.jobs.items() if prefer(job))
        if preferred and not chance(data, 4, "any job"):
            return data.draw(st.sampled_from(preferred), label="job")
        if not self.jobs or chance(data, 8, "unknown job"):
            return self.next_job_id
        return data.draw(st.sampled_from(sorted(self.jobs)), label="job")

    def due(self, job: ModelJob, kind: str) -> int:
        """What ``takeRefund`` (kind "refund") or ``executeBurn`` (kind "burn") would pay for ``job``."""
        return job.alloc_refund - job.refunded if kind == "refund" else job.alloc_burn - job.burned

    def ended(self, job: ModelJob) -> bool:
        return job.status == JobStatus.ACTIVE and self.epoch >= job.start_epoch + job.epochs

    def scale_from(self, job: ModelJob) -> int:
        """The first epoch a scale of ``job`` now would apply to."""
        return max(self.epoch + 1, job.start_epoch)

    def scalable(self, job: ModelJob) -> bool:
        return job.status == JobStatus.ACTIVE and self.scale_from(job) < job.start_epoch + job.epochs

    def at_or_before_start(self, job: ModelJob) -> bool:
        """Cancellable, or (in its start epoch) just no longer: the boundary cancel must get right."""
        return job.status == JobStatus.ACTIVE and self.epoch <= job.start_epoch and not job.allocated

    def admit(self, csp: str) -> None:
        valid_until, nonce, signature = self.world.admission(csp)
        self.world.escrow.admit_csp(csp, ADMISSION_REF, valid_until, nonce, signature, sender=csp)
        self.admitted_until[csp] = valid_until

    # ------------------------------------------------------------------ job totals

    def has_totals(self) -> bool:
        return any(r.proofs for r in self.roots.values())

    def scratch(self) -> dict[int, ModelJob]:
        """A copy of the jobs to simulate a transaction on (kept only if it succeeds)."""
        return {j: dataclasses.replace(job) for j, job in self.jobs.items()}

    def simulate_apply(self, proofs: Sequence[TotalsProof], jobs: dict[int, ModelJob],
                       ) -> Failure | list[tuple[int, int, int, int, int]]:
        """What ``applyTotals(proofs)`` does to ``jobs`` (in place), in order: the first failure, or
        each (job, epoch, release, refund, burn) applied (entries not newer than applied ones are skipped)."""
        applied: list[tuple[int, int, int, int, int]] = []
        for p in proofs:
            t = p.totals
            job = jobs.get(t.job_id)
            if job is None:
                return reverts.JobEscrowUnknownJob, {"jobId": t.job_id}
            if job.status != JobStatus.ACTIVE:
                return reverts.JobEscrowJobNotActive, {"jobId": t.job_id, "status": job.status}
            posted = self.roots.get(p.epoch)
            root = posted.totals_root if posted else NO_TOTALS
            if root == NO_TOTALS:
                return reverts.JobEscrowUnknownEpoch, {"epoch": p.epoch}
            if not verify(p.proof, root, totals_leaf(t)):
                return reverts.JobEscrowInvalidTotalsProof, {"jobId": t.job_id, "epoch": p.epoch}
            if p.epoch < job.settled_until:
                continue
            if t.release < job.alloc_release or t.refund < job.alloc_refund or t.burn < job.alloc_burn:
                return reverts.JobEscrowAllocationDecreased, {"jobId": t.job_id}
            allocated, available = t.release + t.refund + t.burn, job.deposited - job.reclaimed
            if allocated > available:
                return reverts.JobEscrowExceedsDeposit, {"jobId": t.job_id, "allocated": allocated,
                                                         "available": available}
            job.alloc_release, job.alloc_refund, job.alloc_burn = t.release, t.refund, t.burn
            job.settled_until = p.epoch + 1
            applied.append((t.job_id, p.epoch, t.release, t.refund, t.burn))
        return applied

    def draw_proofs(self, data: st.DataObject, hint: Sequence[int], *, optional: bool = True) -> list[TotalsProof]:
        """Totals proofs to apply (with ``optional``, often none): usually the newest landed totals of
        the ``hint`` jobs; else 1-3 entries of any landed reports (older, repeated, any order);
        sometimes one forged (wrong amount, another epoch, a job that does not exist)."""
        if not self.has_totals() or (optional and chance(data, 3, "without totals")):
            return []
        entries = [(e, j) for e in sorted(self.roots) for j in sorted(self.roots[e].proofs)]
        newest = {j: e for e, j in entries}
        useful = [(newest[j], j) for j in sorted(set(hint)) if j in newest]
        chosen = useful if useful and not chance(data, 3, "any totals") else data.draw(
            st.lists(st.sampled_from(entries), min_size=1, max_size=3), label="totals entries")
        proofs = [self.roots[e].proofs[j] for e, j in chosen]
        if chance(data, 8, "forged totals"):
            index = data.draw(st.integers(0, len(proofs) - 1), label="forged entry")
            p = proofs[index]
            how = data.draw(st.sampled_from(["amount", "epoch", "unknown job"]), label="forged how")
            if how == "amount":
                proofs[index] = dataclasses.replace(p, totals=dataclasses.replace(
                    p.totals, release=TokenUnits(p.totals.release + 1)))
            elif how == "epoch":
                proofs[index] = dataclasses.replace(p, epoch=Epoch(data.draw(st.integers(0, self.next_epoch + 1),
                                                                            label="forged epoch")))
            else:
                proofs[index] = dataclasses.replace(p, totals=dataclasses.replace(
                    p.totals, job_id=JobId(self.next_job_id)))
        return proofs

    def commit(self, jobs: dict[int, ModelJob], applied: Sequence[tuple[int, int, int, int, int]],
               receipt: Any) -> None:
        """Keep the simulated jobs of a transaction that succeeded, after checking its JobAllocated events."""
        got = [(e.args["jobId"], e.args["epoch"], e.args["release"], e.args["refund"], e.args["burn"])
               for e in self.world.escrow.events(receipt) if e.name == "JobAllocated"]
        assert got == list(applied)
        self.jobs = jobs
        self.dirty_jobs.update(a[0] for a in applied)
        if applied:
            event("totals applied" + (" in a multicall" if len(got) != len(self.world.escrow.events(receipt))
                                      else ""))

    @precondition(lambda self: self.has_totals())
    @rule(data=st.data())
    def apply_totals(self, data: st.DataObject) -> None:
        """Anyone applies landed totals (the newest of some jobs, or any, in any order)."""
        w = self.world
        proofs = self.draw_proofs(data, self.active_jobs(), optional=False)
        jobs = self.scratch()
        outcome = self.simulate_apply(proofs, jobs)
        if isinstance(outcome, tuple):
            self.expect(outcome, lambda: w.escrow.apply_totals(proofs, sender=w.outsider))
            return
        self.commit(jobs, outcome, w.escrow.apply_totals(proofs, sender=w.outsider))
        if not outcome:
            event("totals skipped (not newer)")

    # ------------------------------------------------------------------ CSPs and jobs

    @initialize(data=st.data())
    def first_job(self, data: st.DataObject) -> None:
        """Every example starts with a job, and often with a first report on it (claims need one)."""
        self.new_job(data, valid=True)
        if not chance(data, 2, "no first report"):
            self.submit_report(data)

    @precondition(lambda self: len(self.jobs) < MAX_JOBS)
    @rule(data=st.data())
    def create_job(self, data: st.DataObject) -> None:
        self.new_job(data, valid=False)

    def new_job(self, data: st.DataObject, *, valid: bool) -> None:
        """Create a job with random shape and policy; unless ``valid``, sometimes one the escrow rejects."""
        w = self.world
        csp = data.draw(st.sampled_from([w.csp, w.csp2]), label="csp")
        if not self.admitted(csp) and (valid or not chance(data, 4, "stay unadmitted")):
            self.admit(csp)
        replicas = data.draw(st.integers(1, 4), label="replicas")
        epochs = data.draw(st.integers(1, 3), label="epochs")
        price = data.draw(st.integers(1, MAX_PRICE), label="price")
        start = self.epoch + data.draw(st.integers(0, 2), label="starts in")
        threshold = data.draw(st.integers(0, 255), label="release threshold")
        floor = data.draw(st.integers(0, threshold), label="burn floor")
        bps = data.draw(st.integers(0, BPS_DENOMINATOR), label="protocol burn bps")
        defect = None if valid else data.draw(st.sampled_from([None] * 6 + ["zero shape", "bad policy", "past start"]),
                                              label="defect")
        failure: Failure | None = None
        if defect == "zero shape":
            replicas, epochs, price = data.draw(st.sampled_from([(0, epochs, price), (replicas, 0, price),
                                                                 (replicas, epochs, 0)]), label="zeroed")
            failure = (reverts.JobEscrowInvalidShape, {"replicas": replicas, "epochs": epochs,
                                                       "pricePerNodeEpoch": price})
        elif defect == "bad policy":
            if threshold < 255 and not chance(data, 2, "bps too high"):
                floor = data.draw(st.integers(threshold + 1, 255), label="floor above threshold")
            else:
                bps = data.draw(st.integers(BPS_DENOMINATOR + 1, 2**16 - 1), label="bps too high")
            failure = (reverts.JobEscrowInvalidPolicy, {"releaseThreshold": threshold, "burnFloor": floor,
                                                        "protocolBurnBps": bps})
        elif defect == "past start" and self.epoch > 0:
            start = data.draw(st.integers(0, self.epoch - 1), label="past start")
            failure = (reverts.JobEscrowStartInPast, {"startEpoch": start, "currentEpoch": self.epoch})
        if not self.admitted(csp):  # checked before the parameters
            failure = (reverts.JobEscrowCspNotAdmitted, {"csp": csp})
        params = JobParams(spec_hash=b"\x5e" * 32, token=w.token.address, replicas=replicas, epochs=epochs,
                           start_epoch=Epoch(start), price_per_node_epoch=TokenUnits(price),
                           policy=SettlementPolicy())
        abi = (*params.as_abi()[:6], threshold, floor, bps)  # the policy may be one SettlementPolicy rejects
        send = lambda: w.chain.transact(w.escrow.contract.functions.createJob(abi), csp)  # noqa: E731
        if failure is not None:
            self.expect(failure, send)
            return
        w.token.approve(w.escrow.address, params.deposit, sender=csp)
        created = [e for e in w.escrow.events(send()) if e.name == "JobCreated"]
        assert [e.args["jobId"] for e in created] == [self.next_job_id]
        assert created[0].args["deposit"] == params.deposit
        self.jobs[self.next_job_id] = ModelJob(csp=csp, start_epoch=start, epochs=epochs, replicas=replicas,
                                               price=price, policy=(threshold, floor, bps), deposited=params.deposit)
        self.dirty_jobs.add(self.next_job_id)
        self.next_job_id += 1
        self.move(csp, w.escrow.address, params.deposit)
        event("job created")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def top_up(self, data: st.DataObject) -> None:
        w = self.world
        job_id = data.draw(st.sampled_from(sorted(self.jobs)), label="job")
        job = self.jobs[job_id]
        sender = job.csp if not chance(data, 8, "not the owner") else ({w.csp, w.csp2} - {job.csp}).pop()
        amount = 0 if chance(data, 8, "zero") else data.draw(st.integers(1, MAX_PRICE), label="amount")
        if sender == job.csp and job.status == JobStatus.ACTIVE and amount and not self.admitted(job.csp) \
                and not chance(data, 3, "stay unadmitted"):
            self.admit(job.csp)
        failure: Failure | None = None
        if sender != job.csp:
            failure = (reverts.JobEscrowNotJobOwner, {"jobId": job_id, "caller": sender})
        elif job.status != JobStatus.ACTIVE:
            failure = (reverts.JobEscrowJobNotActive, {"jobId": job_id, "status": job.status})
        elif amount == 0:
            failure = (reverts.JobEscrowZeroAmount, {})
        elif not self.admitted(job.csp):
            failure = (reverts.JobEscrowCspNotAdmitted, {"csp": job.csp})
        if failure is not None:
            self.expect(failure, lambda: w.escrow.top_up(job_id, amount, sender=sender))
            return
        w.token.approve(w.escrow.address, amount, sender=sender)
        w.escrow.top_up(job_id, amount, sender=sender)
        job.deposited += amount
        self.move(job.csp, w.escrow.address, amount)
        self.dirty_jobs.add(job_id)
        event("topped up")

    @precondition(lambda self: self.active_jobs())
    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        w = self.world
        job_id = self.draw_job_id(data, self.at_or_before_start)
        job = self.jobs.get(job_id)
        owner = job.csp if job else w.csp
        sender = owner if not chance(data, 8, "not the owner") else ({w.csp, w.csp2} - {owner}).pop()
        failure: Failure | None = None
        if job is None:
            failure = (reverts.JobEscrowUnknownJob, {"jobId": job_id})
        elif sender != job.csp:
            failure = (reverts.JobEscrowNotJobOwner, {"jobId": job_id, "caller": sender})
        elif job.status != JobStatus.ACTIVE:
            failure = (reverts.JobEscrowJobNotActive, {"jobId": job_id, "status": job.status})
        elif self.epoch >= job.start_epoch or job.allocated:
            failure = (reverts.JobEscrowJobAlreadyStarted, {"jobId": job_id, "startEpoch": job.start_epoch})
        if failure is not None:
            self.expect(failure, lambda: w.escrow.cancel_job(job_id, sender=sender))
            return
        assert job is not None
        w.escrow.cancel_job(job_id, sender=sender)
        self.move(w.escrow.address, job.csp, job.deposited - job.reclaimed)  # less what scale-downs returned
        job.reclaimed = job.deposited
        job.status = JobStatus.CANCELLED
        self.dirty_jobs.add(job_id)
        event("job cancelled")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def scale_job(self, data: st.DataObject) -> None:
        """The CSP changes a job's replica count from the next epoch (or its start) to its end: a
        scale-up pulls price x added slots x remaining epochs, a scale-down returns the released
        slots' share at once. Sometimes one the escrow refuses: not the owner, not active, ended,
        unchanged, zero, a scale-up by an unadmitted CSP (a scale-down needs no admission), or a
        scale-down whose refund reports already allocated."""
        w = self.world
        job_id = self.draw_job_id(data, self.scalable)
        job = self.jobs.get(job_id)
        owner = job.csp if job else w.csp
        sender = owner if not chance(data, 8, "not the owner") else ({w.csp, w.csp2} - {owner}).pop()
        current = job.replicas if job else 1
        replicas = data.draw(st.sampled_from([0, current]), label="degenerate replicas") \
            if chance(data, 8, "zero or unchanged") \
            else data.draw(st.integers(1, 6).filter(lambda r: r != current), label="replicas")
        spec = data.draw(st.binary(min_size=32, max_size=32), label="spec")
        if job and sender == job.csp and replicas > job.replicas and not self.admitted(job.csp) \
                and not chance(data, 3, "stay unadmitted"):
            self.admit(job.csp)
        failure: Failure | None = None
        pull = refund = 0
        if job is None:
            failure = (reverts.JobEscrowUnknownJob, {"jobId": job_id})
        elif sender != job.csp:
            failure = (reverts.JobEscrowNotJobOwner, {"jobId": job_id, "caller": sender})
        elif job.status != JobStatus.ACTIVE:
            failure = (reverts.JobEscrowJobNotActive, {"jobId": job_id, "status": job.status})
        elif replicas == 0:
            failure = (reverts.JobEscrowInvalidShape, {"replicas": 0, "epochs": job.epochs,
                                                       "pricePerNodeEpoch": job.price})
        elif replicas == job.replicas:
            failure = (reverts.JobEscrowReplicasUnchanged, {"jobId": job_id, "replicas": replicas})
        elif not self.scalable(job):
            failure = (reverts.JobEscrowJobEnded, {"jobId": job_id, "endEpoch": job.start_epoch + job.epochs})
        else:
            per_slot = job.price * (job.start_epoch + job.epochs - self.scale_from(job))
            pull = per_slot * max(replicas - job.replicas, 0)
            refund = per_slot * max(job.replicas - replicas, 0)
            if refund > job.locked:
                failure = (reverts.JobEscrowRefundExceedsLocked, {"jobId": job_id, "refund": refund,
                                                                  "locked": job.locked})
            elif pull and not self.admitted(job.csp):
                failure = (reverts.JobEscrowCspNotAdmitted, {"csp": job.csp})
        if failure is not None:
            self.expect(failure, lambda: w.escrow.scale_job(job_id, replicas, spec, sender=sender))
            return
        assert job is not None
        from_epoch = self.scale_from(job)
        assert w.escrow.quote_scale(job_id, replicas) == (pull, refund, from_epoch)
        if pull:
            w.token.approve(w.escrow.address, pull, sender=sender)
        receipt = w.escrow.scale_job(job_id, replicas, spec, sender=sender)
        scaled = [e.args for e in w.escrow.events(receipt) if e.name == "JobScaled"]
        assert scaled == [{"jobId": job_id, "previous": job.replicas, "current": replicas, "fromEpoch": from_epoch,
                           "pulled": pull, "refunded": refund}]
        job.replicas = replicas
        job.deposited += pull
        job.reclaimed += refund
        self.move(job.csp, w.escrow.address, pull)
        self.move(w.escrow.address, job.csp, refund)
        self.dirty_jobs.add(job_id)
        event("scaled " + ("up" if pull else "down"))

    @precondition(lambda self: any(self.ended(job) for job in self.jobs.values()))
    @rule(data=st.data())
    def close_job(self, data: st.DataObject) -> None:
        """Anyone closes a job whose last epoch is over, often applying totals first in the same
        transaction: after the grace period, and once the newest report covering the job is applied
        to it (or one more grace period later in any case), it returns what no report allocated to
        the CSP; else it reverts."""
        w = self.world
        job_id = self.draw_job_id(data, self.ended)
        proofs = self.draw_proofs(data, [job_id])
        jobs = self.scratch()
        outcome = self.simulate_apply(proofs, jobs)
        send = lambda: w.escrow.close_job(job_id, sender=w.outsider, totals=proofs)  # noqa: E731
        if isinstance(outcome, tuple):
            self.expect(outcome, send)
            return
        job = jobs.get(job_id)
        failure: Failure | None = None
        if job is None:
            failure = (reverts.JobEscrowUnknownJob, {"jobId": job_id})
        elif job.status != JobStatus.ACTIVE:
            failure = (reverts.JobEscrowJobNotActive, {"jobId": job_id, "status": job.status})
        elif self.epoch < job.closable_from:
            failure = (reverts.JobEscrowJobNotClosable, {"jobId": job_id, "closableFrom": job.closable_from})
        else:
            needed = min(self.next_epoch, job.end_epoch)  # 1 + the newest epoch a report covers of the job
            # required for one more grace period; after it the job closes on the totals applied so far
            if needed > job.start_epoch and job.settled_until < needed \
                    and self.epoch < job.closable_from + GRACE_EPOCHS:
                failure = (reverts.JobEscrowTotalsNotApplied, {"jobId": job_id, "settledUntil": job.settled_until,
                                                               "needed": needed})
        if failure is not None:
            self.expect(failure, send)
            return
        assert job is not None
        remainder = job.locked
        self.commit(jobs, outcome, send())
        job.reclaimed += remainder  # on top of what scale-downs returned
        job.status = JobStatus.CLOSED
        self.move(w.escrow.address, job.csp, remainder)
        self.dirty_jobs.add(job_id)
        event("job closed" + (" with a remainder" if remainder else " fully settled"))

    @rule()
    def advance_epoch(self, epochs: int = 1) -> None:
        # Hypothesis orders rules by their number of arguments and favours the first, so this one
        # runs most often: fine, as jobs must end to be closed and admissions must expire.
        self.now = self.world.chain.advance_time(epochs * EPOCH_SECONDS)
        assert self.world.escrow.current_epoch() == self.epoch

    # ------------------------------------------------------------------ reports

    def draw_totals(self, data: st.DataObject, job_ids: Sequence[int],
                    ) -> tuple[list[JobTotals], dict[tuple[int, int], int]]:
        """Honest new cumulative totals for ``job_ids`` and the node pay they imply: every amount grows
        from the job's last signed totals (or stays), node pay is split over the licenses, and the
        totals stay within what the job holds now (a later scale-down may still undercut them)."""
        totals: list[JobTotals] = []
        pay = dict(self.pay)
        licenses = list(self.owner_of)
        for job_id in job_ids:
            job = self.jobs[job_id]
            last = self.signed.get(job_id, JobTotals(JobId(job_id), TokenUnits(0), TokenUnits(0), TokenUnits(0)))
            unsigned = max(0, job.deposited - job.reclaimed - last.release - last.refund - last.burn)
            # settle a quarter, half, ... of what no report signed yet, split by random weights over the
            # licenses' node pay, the refund and the burn; the rounding remainder goes to the refund
            budget = unsigned * data.draw(st.sampled_from([2, 1, 4, 0, 3]), label=f"quarters of job {job_id}") // 4
            weights = data.draw(st.lists(st.integers(0, 3), min_size=len(licenses) + 2, max_size=len(licenses) + 2),
                                label="weights")
            weights = weights if any(weights) else [1] * len(weights)
            parts = [budget * weight // sum(weights) for weight in weights]
            parts[-2] += budget - sum(parts)
            for lic, inc in zip(licenses, parts, strict=False):
                if inc:
                    pay[(job_id, lic)] = pay.get((job_id, lic), 0) + inc
            release = last.release + sum(parts[: len(licenses)])
            totals.append(JobTotals(JobId(job_id), TokenUnits(release), TokenUnits(last.refund + parts[-2]),
                                    TokenUnits(last.burn + parts[-1])))
        return totals, pay

    def draw_signers(self, data: st.DataObject) -> list[Any]:
        keys = self.world.oracle_keys
        chosen = data.draw(st.lists(st.sampled_from(range(len(keys))), unique=True, min_size=self.base.threshold),
                           label="signers")
        return [keys[i] for i in chosen]

    def report_epoch(self, data: st.DataObject) -> int:
        """An ended epoch a report may be for: the next one (if it has not ended yet, the clock moves
        on until it has), the last ended one, or any in between (skipping epochs is allowed)."""
        if self.next_epoch >= self.epoch:
            self.advance_epoch(self.next_epoch + 1 - self.epoch)
        if chance(data, 2, "the last ended epoch"):
            return self.epoch - 1
        return self.next_epoch + data.draw(st.integers(0, self.epoch - 1 - self.next_epoch), label="skip")

    def report_jobs(self, data: st.DataObject, epoch: int) -> list[int]:
        """The jobs a report carries totals of: usually some of the active jobs (started or not: the
        escrow does not care); sometimes, like the oracles, exactly the active jobs started by its epoch."""
        active = self.active_jobs()
        if active and not chance(data, 3, "the started jobs"):
            return sorted(data.draw(st.sets(st.sampled_from(active), min_size=1), label="jobs"))
        return [j for j in active if self.jobs[j].start_epoch <= epoch]

    @rule(data=st.data())
    def submit_report(self, data: st.DataObject) -> None:
        """A quorum-signed report lands: its roots are stored, no job is touched (applying its totals
        is a step of its own). Sometimes it carries totals no escrow would apply."""
        w = self.world
        epoch = self.report_epoch(data)
        totals, pay = self.draw_totals(data, self.report_jobs(data, epoch))
        self.signed.update((t.job_id, t) for t in totals)
        if totals and chance(data, 4, "leaves promise more than the release total"):
            # the oracles sign more node pay than they allocate: claims are first come, first served,
            # and the escrow must stop at the allocation (JobEscrowExceedsAllocation)
            job_id = data.draw(st.sampled_from([t.job_id for t in totals]), label="over-promised job")
            lic = data.draw(st.sampled_from(sorted(self.owner_of)), label="over-promised license")
            release = next(t.release for t in totals if t.job_id == job_id)
            extra = data.draw(st.integers(1, MAX_PRICE), label="extra") if chance(data, 2, "modestly") \
                else release + 1  # this leaf alone is more than the whole allocation
            pay[(job_id, lic)] = pay.get((job_id, lic), 0) + extra
            event("report over-promises node pay")
        if totals and chance(data, 6, "a job's totals no escrow would apply"):
            # whatever a quorum signs, applying must not lower a total nor exceed the deposit; the
            # report lands anyway, and the job's next honest totals grow from its last honest ones
            index = data.draw(st.integers(0, len(totals) - 1), label="bad totals")
            t, job = totals[index], self.jobs[totals[index].job_id]
            fields = [f for f in ("release", "refund", "burn") if getattr(t, f)]
            which = data.draw(st.sampled_from(fields or ["release"]), label="field")
            if not fields or chance(data, 2, "exceeds deposit"):
                available = job.deposited - job.reclaimed
                by = 1 if chance(data, 2, "by one unit") else data.draw(st.integers(1, MAX_PRICE), label="by")
                bad = getattr(t, which) + available + by - (t.release + t.refund + t.burn)
                event("report exceeds a deposit")
            else:
                bad = getattr(t, which) - data.draw(st.integers(1, getattr(t, which)), label="lowered by")
                event("report lowers a total")
            totals[index] = dataclasses.replace(t, **{which: TokenUnits(bad)})
        inactive = sorted(j for j, job in self.jobs.items() if job.status != JobStatus.ACTIVE)
        if inactive and chance(data, 4, "a closed or cancelled job's totals ride along"):
            # a late report naming a job closed or cancelled meanwhile: it lands, and its totals (even
            # ones that would exceed what it holds) can never be applied
            late_id = data.draw(st.sampled_from(inactive), label="inactive job")
            late = self.jobs[late_id]
            totals = sorted([*totals, JobTotals(JobId(late_id), TokenUnits(late.deposited), TokenUnits(1),
                                                TokenUnits(0))], key=lambda t: t.job_id)
        pay = {k: v for k, v in pay.items() if v}
        skipped = epoch - self.next_epoch
        tree = w.post_report(epoch, pay, totals, signers=self.draw_signers(data), apply=False)
        proofs = {p.totals.job_id: p for p in totals_proofs(epoch, totals)}
        self.pay = pay
        self.roots[epoch] = PostedRoot(tree, dict(pay), totals_root(totals), proofs)
        self.next_epoch = epoch + 1
        assert (w.escrow.root_of(epoch), w.escrow.totals_root_of(epoch)) == (tree.root, totals_root(totals))
        self.dirty_jobs.update(proofs.keys() & self.jobs.keys())  # a report moves no job: checked unchanged
        event(f"report with {len(totals)} jobs" + (" (skipping epochs)" if skipped else ""))

    @rule(data=st.data())
    def submit_bad_report(self, data: st.DataObject) -> None:
        """A report the escrow must reject, whatever the oracles signed."""
        w = self.world
        defects = ["not ended", "no quorum", "foreign signer", "duplicate signer", "totals root swapped"]
        defects += ["replay"] if self.next_epoch > 0 else []
        defect = data.draw(st.sampled_from(defects), label="defect")
        if defect == "not ended":
            epoch = max(self.next_epoch, self.epoch) + data.draw(st.integers(0, 2), label="ahead")
        elif defect == "replay":
            epoch = data.draw(st.integers(0, self.next_epoch - 1), label="replayed epoch")
        else:
            epoch = self.report_epoch(data)  # the other checks follow the epoch's
        totals, pay = self.draw_totals(data, self.report_jobs(data, epoch))
        pay = {k: v for k, v in pay.items() if v}
        signers = self.draw_signers(data)
        failure: Failure
        if defect == "not ended":
            failure = (reverts.JobEscrowEpochNotEnded, {"epoch": epoch, "currentEpoch": self.epoch})
        elif defect == "replay":
            failure = (reverts.JobEscrowEpochNotAfterLast, {"epoch": epoch, "nextEpoch": self.next_epoch})
        elif defect == "no quorum":
            signers = signers[: self.base.threshold - 1]
            failure = (reverts.OracleRegistryQuorumNotReached, {"signers": len(signers),
                                                                "threshold": self.base.threshold})
        elif defect == "foreign signer":  # a quorum plus one key that is no oracle's
            signers = [*signers, w.attester]
            failure = (reverts.OracleRegistryNotOracle, {"account": w.attester.address})
        elif defect == "duplicate signer":
            twice = signers[data.draw(st.integers(0, len(signers) - 1), label="signs twice")]
            signers = [*signers, twice]
            failure = (reverts.OracleRegistryDuplicateSigner, {"oracle": twice.address})
        else:  # a quorum signed the report, then someone swapped its totals root: the signatures
            # recover to strangers (the first one checked is reported)
            _, root, sigs = w.signed_report(epoch, pay, totals, signers=signers)
            swapped = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b != totals_root(totals)),
                                label="swapped totals root")
            stranger = recover(epoch_report(w.escrow.domain(), epoch, root, swapped), sigs[0])
            self.expect((reverts.OracleRegistryNotOracle, {"account": stranger}),
                        lambda: w.escrow.submit_report(epoch, root, swapped, sigs, sender=w.outsider))
            return
        self.expect(failure, lambda: w.post_report(epoch, pay, totals, signers=signers, apply=False))

    # ------------------------------------------------------------------ claims and forfeits

    def simulate_spend(self, claims: Sequence[Claim], jobs: dict[int, ModelJob], *, forfeit: bool,
                       ) -> Failure | list[tuple[int, int, int]]:
        """What ``claim``/``forfeit`` does with ``claims`` given ``jobs``, in order: the first failure,
        or each (job, license, amount) paid."""
        claimed = dict(self.claimed)
        spent = {j: job.release_spent for j, job in jobs.items()}
        paid: list[tuple[int, int, int]] = []
        for c in claims:
            status = self.status[c.license_id]
            if forfeit and status != LicenseStatus.BLACKLISTED:
                return reverts.JobEscrowLicenseNotBlacklisted, {"licenseId": c.license_id, "status": status}
            if not forfeit and status != LicenseStatus.ACTIVE:
                return reverts.JobEscrowLicenseRestricted, {"licenseId": c.license_id, "status": status}
            root = self.roots.get(c.epoch)
            if root is None or not root.pay:  # an empty report posts the zero root
                return reverts.JobEscrowUnknownEpoch, {"epoch": c.epoch}
            key = (c.job_id, c.license_id)
            if root.pay.get(key) != c.cumulative:
                return reverts.JobEscrowInvalidProof, {"jobId": c.job_id, "licenseId": c.license_id}
            if c.cumulative <= claimed.get(key, 0):
                return reverts.JobEscrowNothingToClaim, {"jobId": c.job_id, "licenseId": c.license_id}
            amount = c.cumulative - claimed.get(key, 0)
            allocated = jobs[c.job_id].alloc_release
            if spent[c.job_id] + amount > allocated:
                return reverts.JobEscrowExceedsAllocation, {"jobId": c.job_id, "allocated": allocated,
                                                            "requested": spent[c.job_id] + amount}
            claimed[key] = c.cumulative
            spent[c.job_id] += amount
            paid.append((c.job_id, c.license_id, amount))
        return paid

    def leaves(self) -> list[tuple[int, int, int]]:
        """Every (epoch, job, license) leaf of every posted root, the latest roots first."""
        return [(e, j, lic) for e in sorted(self.roots, reverse=True) for j, lic in sorted(self.roots[e].pay)]

    def license_active(self, lic: int) -> bool:
        return self.status[lic] == LicenseStatus.ACTIVE

    def license_blacklisted(self, lic: int) -> bool:
        return self.status[lic] == LicenseStatus.BLACKLISTED

    def blacklisted_licenses(self) -> list[int]:
        return sorted(lic for lic, status in self.status.items() if status == LicenseStatus.BLACKLISTED)

    def owed(self, leaf: tuple[int, int, int]) -> bool:
        epoch, job_id, lic = leaf
        return self.roots[epoch].pay[(job_id, lic)] > self.claimed.get((job_id, lic), 0)

    def draw_claims(self, data: st.DataObject, leaves: Sequence[tuple[int, int, int]], wanted: Callable[[int], bool],
                    max_size: int) -> list[Claim]:
        """1 to ``max_size`` claims (repeats allowed) of ``leaves``, usually ones still owed to a license
        ``wanted`` likes; sometimes one with a wrong amount or of an epoch without a root."""
        good = [leaf for leaf in leaves if wanted(leaf[2]) and self.owed(leaf)]
        pool = good if good and not chance(data, 4, "any leaf") else list(leaves)
        chosen = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=max_size), label="leaves")
        claims = [World.claim_of(self.roots[e].tree, e, j, lic, self.roots[e].pay[(j, lic)]) for e, j, lic in chosen]
        if chance(data, 6, "tamper"):
            index = data.draw(st.integers(0, len(claims) - 1), label="tampered")
            c = claims[index]
            if chance(data, 2, "unknown epoch"):
                claims[index] = dataclasses.replace(c, epoch=self.next_epoch)
            else:
                claims[index] = dataclasses.replace(c, cumulative=c.cumulative + data.draw(st.integers(1, 10)))
        return claims

    def simulate(self, proofs: Sequence[TotalsProof], then: Callable[[dict[int, ModelJob]], Failure | Any],
                 ) -> tuple[Failure | Any, dict[int, ModelJob], list[tuple[int, int, int, int, int]]]:
        """Simulate applying ``proofs`` and then ``then`` on a scratch copy of the jobs (one
        transaction): (the first failure or ``then``'s result, the scratch jobs, the totals applied)."""
        jobs = self.scratch()
        applied = self.simulate_apply(proofs, jobs)
        if isinstance(applied, tuple):
            return applied, jobs, []
        return then(jobs), jobs, applied

    def run_claims(self, data: st.DataObject, claims: Sequence[Claim], sender: str) -> None:
        w = self.world
        proofs = self.draw_proofs(data, sorted({c.job_id for c in claims}))
        outcome, jobs, applied = self.simulate(proofs, lambda jobs: self.simulate_spend(claims, jobs, forfeit=False))
        if isinstance(outcome, tuple):
            self.expect(outcome, lambda: w.escrow.claim(claims, sender=sender, totals=proofs))
            return
        receipt = w.escrow.claim(claims, sender=sender, totals=proofs)
        self.commit(jobs, applied, receipt)
        claimed_events = [(e.args["jobId"], e.args["licenseId"], e.args["owner"], e.args["amount"])
                          for e in w.escrow.events(receipt) if e.name == "Claimed"]
        assert claimed_events == [(j, lic, self.owner_of[lic], amount) for j, lic, amount in outcome]
        for job_id, lic, amount in outcome:
            self.jobs[job_id].release_spent += amount
            self.claimed[(job_id, lic)] = self.claimed.get((job_id, lic), 0) + amount
            self.move(w.escrow.address, self.owner_of[lic], amount)
            self.dirty_jobs.add(job_id)
            self.dirty_claims.add((job_id, lic))
        event(f"claimed {len(outcome)} leaves")

    @precondition(lambda self: any(r.pay for r in self.roots.values()))
    @rule(data=st.data())
    def claim_own_pay(self, data: st.DataObject) -> None:
        """A license owner claims 1-2 leaves of their license (of any jobs and roots)."""
        leaves = self.leaves()
        owed = sorted({leaf[2] for leaf in leaves if self.license_active(leaf[2]) and self.owed(leaf)})
        pool = owed if owed and not chance(data, 4, "any license") else sorted({leaf[2] for leaf in leaves})
        lic = data.draw(st.sampled_from(pool), label="license")
        claims = self.draw_claims(data, [leaf for leaf in leaves if leaf[2] == lic], self.license_active, max_size=2)
        self.run_claims(data, claims, self.owner_of[lic])

    @precondition(lambda self: any(r.pay for r in self.roots.values()))
    @rule(data=st.data())
    def keeper_claims(self, data: st.DataObject) -> None:
        """A keeper batches claims of 1-4 leaves of any licenses, jobs and roots."""
        claims = self.draw_claims(data, self.leaves(), self.license_active, max_size=4)
        self.run_claims(data, claims, self.world.outsider)

    @precondition(lambda self: self.blacklisted_licenses() and any(r.pay for r in self.roots.values()))
    @rule(data=st.data())
    def forfeit(self, data: st.DataObject) -> None:
        """Anyone burns the unclaimed pay of blacklisted licenses (1-3 leaves)."""
        w = self.world
        claims = self.draw_claims(data, self.leaves(), self.license_blacklisted, max_size=3)
        proofs = self.draw_proofs(data, sorted({c.job_id for c in claims}))
        outcome, jobs, applied = self.simulate(proofs, lambda jobs: self.simulate_spend(claims, jobs, forfeit=True))
        if isinstance(outcome, tuple):
            self.expect(outcome, lambda: w.escrow.forfeit(claims, sender=w.outsider, totals=proofs))
            return
        self.commit(jobs, applied, w.escrow.forfeit(claims, sender=w.outsider, totals=proofs))
        for job_id, lic, amount in outcome:
            job = self.jobs[job_id]
            job.release_spent += amount
            job.forfeited += amount
            self.claimed[(job_id, lic)] = self.claimed.get((job_id, lic), 0) + amount
            self.move(w.escrow.address, BURN_ADDRESS, amount)
            self.dirty_jobs.add(job_id)
            self.dirty_claims.add((job_id, lic))
        event(f"forfeited {len(outcome)} leaves")

    # ------------------------------------------------------------------ refunds and burns

    def simulate_pay_out(self, job_ids: Sequence[int], kind: str, jobs: dict[int, ModelJob],
                         ) -> Failure | list[tuple[int, int]]:
        """What ``takeRefund`` (kind "refund") or ``executeBurn`` (kind "burn") of ``job_ids`` does
        given ``jobs``: the first failure, or each (job, amount) paid."""
        paid_so_far = {j: getattr(job, "refunded" if kind == "refund" else "burned") for j, job in jobs.items()}
        payments: list[tuple[int, int]] = []
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is None:
                return reverts.JobEscrowUnknownJob, {"jobId": job_id}
            amount = getattr(job, f"alloc_{kind}") - paid_so_far[job_id]
            if amount == 0:
                return reverts.JobEscrowNothingDue, {"jobId": job_id}
            paid_so_far[job_id] += amount
            payments.append((job_id, amount))
        return payments

    def pay_out(self, data: st.DataObject, kind: str, *, needs_totals: bool) -> None:
        """``takeRefund`` (kind "refund") or ``executeBurn`` (kind "burn") of 1-3 job ids, repeats
        allowed, often (``needs_totals``: always) applying totals first in the same transaction."""
        w = self.world
        count = data.draw(st.integers(1, 3), label="how many jobs")
        job_ids = [self.draw_job_id(data, lambda job: self.due(job, kind) > 0 or job.status == JobStatus.ACTIVE)
                   for _ in range(count)]
        proofs = self.draw_proofs(data, job_ids, optional=not needs_totals)
        payments, jobs, applied = self.simulate(proofs, lambda jobs: self.simulate_pay_out(job_ids, kind, jobs))
        send = w.escrow.take_refund if kind == "refund" else w.escrow.execute_burn
        if isinstance(payments, tuple):
            self.expect(payments, lambda: send(job_ids, sender=w.outsider, totals=proofs))
            return
        self.commit(jobs, applied, send(job_ids, sender=w.outsider, totals=proofs))
        for job_id, amount in payments:
            job = self.jobs[job_id]
            if kind == "refund":
                job.refunded += amount
                self.move(w.escrow.address, job.csp, amount)
            else:
                job.burned += amount
                self.move(w.escrow.address, BURN_ADDRESS, amount)
            self.dirty_jobs.add(job_id)
        event(f"{kind} paid for {len(payments)} jobs")

    @precondition(lambda self: self.has_totals() or any(self.due(job, kind) for job in self.jobs.values()
                                                        for kind in ("refund", "burn")))
    @rule(data=st.data())
    def refund_or_burn(self, data: st.DataObject) -> None:
        """Anyone pays out refunds or burns: those of applied totals, or of totals applied in the same call."""
        kinds = [k for k in ("refund", "burn") if any(self.due(job, k) for job in self.jobs.values())]
        self.pay_out(data, data.draw(st.sampled_from(kinds or ["refund", "burn"]), label="kind"),
                     needs_totals=not kinds)

    # ------------------------------------------------------------------ license sanctions

    def set_license_status(self, lic: int, status: LicenseStatus) -> None:
        w = self.world
        send = lambda: w.licenses.set_status(lic, status, sender=w.admin)  # noqa: E731
        if self.status[lic] == LicenseStatus.BLACKLISTED:
            self.expect((reverts.LicenseRegistryLicenseBlacklisted, {"licenseId": lic}), send)
        elif self.status[lic] == status:
            self.expect((reverts.LicenseRegistryStatusUnchanged, {"licenseId": lic, "status": status}), send)
        else:
            send()
            self.status[lic] = status
            event(f"license {status.name.lower()}")

    @rule(data=st.data())
    def sanction_license(self, data: st.DataObject) -> None:
        """Governance freezes, suspends or reactivates a license (a blacklisted one stays blacklisted),
        or blacklists one for good (at most MAX_BLACKLISTED of the five, to keep earners). One rule
        for both: every rule is drawn about as often, and these steps settle nothing."""
        if len(self.blacklisted_licenses()) < MAX_BLACKLISTED and chance(data, 3, "blacklist"):
            self.blacklist_license(data)
            return
        usable = sorted(lic for lic in self.status if lic not in self.blacklisted_licenses())
        lic = data.draw(st.sampled_from(usable if usable and not chance(data, 8, "a blacklisted one")
                                        else sorted(self.status)), label="license")
        status = data.draw(st.sampled_from([LicenseStatus.FROZEN, LicenseStatus.SUSPENDED, LicenseStatus.ACTIVE]),
                           label="status")
        self.set_license_status(lic, status)

    def blacklist_license(self, data: st.DataObject) -> None:
        licenses = sorted(self.status)
        owed = sorted({leaf[2] for leaf in self.leaves() if self.owed(leaf)} - {*self.blacklisted_licenses()})
        pool = owed if owed and not chance(data, 4, "any license") else licenses
        self.set_license_status(data.draw(st.sampled_from(pool), label="license"), LicenseStatus.BLACKLISTED)

    # ------------------------------------------------------------------ the invariant

    def fingerprint(self) -> Any:
        return (tuple(self.balances.values()), tuple(job.accounts() for job in self.jobs.values()))

    @invariant()
    def conserved_and_balanced(self) -> None:
        """Every job conserves its deposit, and every balance is the model's. After a step that left
        both the chain's state root and the model as they were (an expected revert, or an empty block
        on a chain whose blocks change no state) the last check still stands: nothing is read again."""
        w = self.world
        for job_id, job in self.jobs.items():  # the model obeys the rules it checks the chain against
            assert min(job.locked, job.alloc_release - job.release_spent, job.alloc_refund - job.refunded,
                       job.alloc_burn - job.burned) >= 0, (job_id, job)
            assert job.settled_until <= self.next_epoch, (job_id, job)
        assert sum(job.held for job in self.jobs.values()) + self.base.balances[w.escrow.address] \
            == self.balances[w.escrow.address]
        checked = (bytes(w.chain.w3.eth.get_block("latest")["stateRoot"]), self.fingerprint())
        if checked == self.last_checked:
            return
        w.assert_conserved()
        assert read_balances(w, list(self.balances)) == self.balances
        for job_id in sorted(self.dirty_jobs):
            assert chain_accounts(w, job_id) == self.jobs[job_id].accounts(), job_id
        for job_id, lic in sorted(self.dirty_claims):
            assert w.escrow.claimed_of(job_id, lic) == self.claimed[(job_id, lic)], (job_id, lic)
        self.dirty_jobs.clear()
        self.dirty_claims.clear()
        self.last_checked = checked


@pytest.fixture
def escrow_machine(_deployed: World) -> Iterator[type[EscrowMachine]]:
    """The machine bound to this backend's session-wide deployed world (each example snapshots it and
    reverts to the snapshot, so the examples, and the tests after this one, all see it unchanged)."""
    # Views sent without a `from` make eth-tester look up the node's accounts three times per call;
    # a default account for the duration of this test makes the per-step checks ~35% cheaper there.
    eth = _deployed.chain.w3.eth
    previous = eth.default_account
    eth.default_account = _deployed.outsider

    class DeployedEscrowMachine(EscrowMachine):
        world = _deployed
        base = Baseline.read(_deployed)

    try:
        yield DeployedEscrowMachine
    finally:
        eth.default_account = previous


# A passing run takes well under a minute; a failing one then shrinks for up to hypothesis's own five
# minutes (every replay re-runs transactions), and must not be cut short before it can report.
@pytest.mark.timeout(900)
def test_escrow_state_machine(escrow_machine: type[EscrowMachine]) -> None:
    """Random operation sequences keep every job's books and every balance exactly as the model says."""
    run_state_machine_as_test(escrow_machine, settings=SETTINGS)
    assert escrow_machine.world.chain.block_number() == escrow_machine.base.block
