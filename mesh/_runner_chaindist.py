"""The ChainDist runner: a coordinator per held ChainDist job, and a shard worker on every node.

**Coordinator** (``ChainDistRun``, on the node holding the job's one replica): gives each shard
to a worker by ``_chaindist``'s rules over the nodes its view shows alive, eligible and tagged
``runner:chaindist`` (itself included), asks it over libp2p (``PROTOCOL``: one request, the
shard's output back), and gives the shard to the next worker when one fails, its connection
breaks (a crashed process) or its node goes dead (a silent one: at most the liveness timeout,
2.75 heartbeat intervals). When every shard has its output it runs ``aggregate`` with the outputs
on stdin in shard order, and stores the result with its digest (``result.json``); the claim set
carries the digest and ``job logs`` shows the run, so the CSP and oracles see both from any node.
A stored result is kept: a coordinator that restarts finds it and does not run the job again.
If the coordinator's node dies, the replica moves (placement) and the new holder runs the job
from the start; a duplicate output from a worker thought lost is ignored.

**Worker** (``ShardWorker``, the ``PROTOCOL`` handler): runs a shard only for the node its own
view shows holding the job (the coordinator), in a one-off container of the worker image with
``SHARD``, ``SHARDS`` and ``JOB_ID`` in the environment and the shard's part of the input on the
command's stdin (``sh`` runs it: the image needs a shell), and answers its exit code and stdout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio
from docker.errors import DockerException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._chaindist import MAX_OUTPUT_BYTES, ShardBook, result_digest, shard_input
from ._errors import TransportError
from ._jobspec import ChainDistJob
from ._keyed_tasks import KeyedTasks, stopped_on
from ._membership import PeerState
from ._node import Node
from ._runner_car import CarRunner, CarRunnerError, ContainerRequest, Mount
from ._scheduler import Plan, assignment, placeable_jobs, runner_tag
from ._transport import Message
from ._trio_types import TaskStatus

log = logging.getLogger("deedmesh.chaindist")
T = TypeVar("T")
PROTOCOL = "/deedmesh/chaindist/1"
MAX_REQUEST_BYTES = 1024
INPUT_DIR = "/deedmesh"  # the shard's input file is mounted here (read-only), as ``input``
PIDS_LIMIT = 256
RETRY_S = 5.0  # a run that stopped on an engine or disk error starts over after this
ANSWER_MARGIN_S = 30.0  # on top of the shard's timeout: the worker's engine calls around the run


class ShardRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
    job_id: int = Field(ge=1, lt=2**256)
    shard: int = Field(ge=0, lt=1024)
    attempt: int = Field(ge=1, lt=1024)


class ShardAnswer(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
    job_id: int
    shard: int
    exit_code: int | None = None  # None: it did not run (``error`` says why) or ran over its time
    output: str = ""  # stdout, at most MAX_OUTPUT_BYTES
    error: str = ""


def _run_argv(argv: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The command with the input file on its stdin (None: the image's own, with no input)."""
    return None if argv is None else ("sh", "-c", f'exec "$@" < {INPUT_DIR}/input', "sh", *argv)


def shard_request(job_id: int, shard: int, attempt: int, spec: ChainDistJob, input_dir: Path) -> ContainerRequest:
    worker = spec.chaindist.worker
    assert worker.image is not None  # the spec requires one
    return ContainerRequest(
        job_id=job_id, replica=shard, image=worker.image, command=_run_argv(worker.command),
        env={**spec.env, "SHARD": str(shard), "SHARDS": str(spec.chaindist.shards), "JOB_ID": str(job_id)},
        cpu_millis=spec.resources.cpu_millis, memory_mb=spec.resources.memory_mb, pids_limit=PIDS_LIMIT,
        labels={"deedmesh.name": spec.name}, version=str(attempt), role="shard",
        mounts=(Mount(str(input_dir), INPUT_DIR, True),))


def aggregate_request(job_id: int, spec: ChainDistJob, input_dir: Path) -> ContainerRequest:
    worker = spec.chaindist.worker
    assert worker.image is not None
    return ContainerRequest(
        job_id=job_id, replica=0, image=worker.image, command=_run_argv(spec.chaindist.aggregate),
        env={**spec.env, "SHARDS": str(spec.chaindist.shards), "JOB_ID": str(job_id)},
        cpu_millis=spec.resources.cpu_millis, memory_mb=spec.resources.memory_mb, pids_limit=PIDS_LIMIT,
        labels={"deedmesh.name": spec.name}, role="aggregate", mounts=(Mount(str(input_dir), INPUT_DIR, True),))


def _write_input(directory: Path, text: str) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "input").write_text(text)
    return directory


class ShardWorker:
    """Runs shards for coordinators (module docstring); ``serve`` is the ``PROTOCOL`` handler."""

    def __init__(self, node: Node, runner: CarRunner, work_dir: Path, *, parallel: int = 2) -> None:
        self.node, self.runner, self.work_dir = node, runner, work_dir
        self._limiter = trio.CapacityLimiter(parallel)  # shards at once on this node
        self.counters: dict[str, int] = {}

    async def clear_leftovers(self) -> None:
        """Shard and aggregate containers left by a node that stopped mid-run: nobody waits for them."""
        def clear() -> None:
            for status in self.runner.list_managed():
                if status.role in ("shard", "aggregate"):
                    self.runner.remove(status.container_id, 1)
        await trio.to_thread.run_sync(clear)
        shutil.rmtree(self.work_dir / "shards", ignore_errors=True)

    async def serve(self, msg: Message) -> bytes:
        try:
            req = ShardRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            return self._refuse(None, "malformed", str(exc.errors()[:1]))
        requester = self.node.transport.address_of(msg.forwarder)
        if requester is None or not await self._holds(requester, req.job_id):
            return self._refuse(req, "not-coordinator", f"{requester} does not hold job {req.job_id} here")
        return (await self.run(req)).model_dump_json().encode()

    async def _holds(self, requester: str, job_id: int) -> bool:
        """Whether this node's view shows ``requester`` holding the job; a coordinator asks as soon
        as it claims, so its claim set may still be on its way here: wait up to two intervals."""
        with trio.move_on_after(2 * self.node.config.liveness.heartbeat_interval_ms / 1000):
            while True:
                changed = self.node.changed
                if (assignment(self.node, job_id).get(0) or "").lower() == requester.lower():
                    return True
                await changed.wait()
        return False

    async def run(self, req: ShardRequest) -> ShardAnswer:
        """Run one shard here (for a coordinator, or for this node's own coordinator)."""
        known = placeable_jobs(self.node).get(req.job_id)
        spec = None if known is None else known.spec
        if not isinstance(spec, ChainDistJob):
            return ShardAnswer(job_id=req.job_id, shard=req.shard, error="not a chaindist job this node knows")
        if req.shard >= spec.chaindist.shards:
            return ShardAnswer(job_id=req.job_id, shard=req.shard, error=f"no shard {req.shard}")
        self.counters["run"] = self.counters.get("run", 0) + 1
        where = self.work_dir / "shards" / f"{req.job_id}-{req.shard}-{req.attempt}"
        try:
            async with self._limiter:
                text = shard_input(spec.chaindist.input or "", req.shard, spec.chaindist.shards)
                _write_input(where, text)
                request = shard_request(req.job_id, req.shard, req.attempt, spec, where)
                code, out, err = await trio.to_thread.run_sync(
                    self.runner.run_capture, request, spec.chaindist.shard_timeout_s, MAX_OUTPUT_BYTES)
        except (CarRunnerError, DockerException, OSError) as exc:
            return ShardAnswer(job_id=req.job_id, shard=req.shard, error=f"could not run: {str(exc)[:300]}")
        finally:
            shutil.rmtree(where, ignore_errors=True)
        error = err[-300:] if code is not None else f"ran over shard_timeout_s={spec.chaindist.shard_timeout_s}"
        return ShardAnswer(job_id=req.job_id, shard=req.shard, exit_code=code,
                           output=out.decode("utf-8", errors="replace"), error=error)

    def _refuse(self, req: ShardRequest | None, reason: str, message: str) -> bytes:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        log.warning("shard request refused", extra={"reason": reason, "detail": message[:300]})
        answer = ShardAnswer(job_id=0 if req is None else req.job_id, shard=0 if req is None else req.shard,
                             error=f"{reason}: {message[:300]}")
        return answer.model_dump_json().encode()


@dataclass(frozen=True)
class ChainDistReport:
    state: Literal["running", "completed", "failed"]
    digest: str  # "" until completed


class ChainDistRun:
    """One held ChainDist job's run on its coordinator (module docstring)."""

    def __init__(self, node: Node, worker: ShardWorker, job_id: int, spec: ChainDistJob, work_dir: Path, *,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.node, self.worker, self.job_id, self.spec = node, worker, job_id, spec
        self.dir = work_dir / "runs" / str(job_id)
        self.on_change = on_change
        self.book = ShardBook(job_id, spec.chaindist.shards)
        self.state: Literal["running", "completed", "failed"] = "running"
        self.result: dict[str, Any] = {}
        self.lines: list[str] = []  # the run's log, for ``job logs``
        self._attempts = 0

    def report(self) -> ChainDistReport:
        return ChainDistReport(self.state, self.result.get("digest", "") if self.state == "completed" else "")

    def logs(self, tail: int) -> str:
        return "".join(line + "\n" for line in self.lines[-tail:])

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if (found := self._stored()) is not None:
            self.result, self.state = found, found["state"]
            self._note(f"result found from an earlier run: {self.state} {self.result.get('digest', '')}")
            self.on_change()
            return
        self._note(f"run of {self.spec.chaindist.shards} shards")
        async with trio.open_nursery() as nursery:
            for shard in range(self.spec.chaindist.shards):
                nursery.start_soon(self._drive, shard)
        if self.book.failed:
            self._finish("failed", error=f"shards {self.book.failed} failed on every worker tried: "
                                         f"{[self.book.failures[s][-1] for s in self.book.failed]}")
            return
        await self._aggregate()

    def _stored(self) -> dict[str, Any] | None:
        """The result an earlier run here stored, if it is whole (one cut short is run again)."""
        try:
            found = json.loads((self.dir / "result.json").read_text())
            if found["state"] not in ("completed", "failed") or found["job_id"] != self.job_id:
                raise ValueError(f"not this job's result: {found.get('job_id')} {found.get('state')}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("a stored result is unreadable; the job runs again", extra={"job": self.job_id,
                                                                                   "error": str(exc)[:300]})
            return None
        return dict(found)

    async def _drive(self, shard: int) -> None:
        """Give ``shard`` to workers until one returns its output or it runs out of attempts."""
        while shard not in self.book.outputs and not self.book.exhausted(shard):
            changed = self.node.changed
            worker = self.book.next_worker(shard, self._workers())
            if worker is None:  # no live worker: wait for the view to change
                with trio.move_on_after(5):
                    await changed.wait()
                continue
            self.book.start(shard, worker)
            self._attempts += 1
            self._note(f"shard {shard} -> {worker}")
            try:
                answer = await self._ask(worker, ShardRequest(job_id=self.job_id, shard=shard,
                                                              attempt=len(self.book.tried[shard])))
            except TransportError as exc:
                self.book.fail(shard, worker, exc.reason)
                self._note(f"shard {shard} lost on {worker}: {exc.reason}")
                continue
            if answer.exit_code == 0 and answer.shard == shard and answer.job_id == self.job_id:
                if self.book.accept(shard, worker, answer.output.encode()):
                    self._note(f"shard {shard} done on {worker}: {answer.output.strip()[:80]}")
            else:
                reason = answer.error if answer.exit_code is None else f"exit {answer.exit_code}: {answer.error}"
                self.book.fail(shard, worker, reason)
                self._note(f"shard {shard} failed on {worker}: {reason[:200]}")

    def _workers(self) -> list[str]:
        """Nodes this view shows alive (or this one), eligible and able to run shards."""
        tag = runner_tag("chaindist")
        capacities = dict(self.node.capacities) | {self.node.address: self.node.advertised_capacity()}
        return [a for a, c in capacities.items() if tag in c.tags and self.node.is_eligible(a)
                and (a == self.node.address or self.node.membership.state(a) == PeerState.ALIVE)]

    async def _ask(self, worker: str, req: ShardRequest) -> ShardAnswer:
        if worker == self.node.address:
            return await self.worker.run(req)
        peer = await self.node.peer_of(worker)
        answer: list[bytes | TransportError] = []
        async with trio.open_nursery() as nursery:
            async def exchange() -> None:
                try:
                    answer.append(await self.node.transport.request(
                        peer, PROTOCOL, req.model_dump_json().encode(),
                        timeout_s=self.spec.chaindist.shard_timeout_s + ANSWER_MARGIN_S,
                        max_response_bytes=MAX_OUTPUT_BYTES + 64 * 1024))
                except TransportError as exc:  # a crashed worker: its connection broke
                    answer.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(exchange)
            while True:  # a silent worker: its liveness decides (the view changes with every verdict)
                changed = self.node.changed
                if self.node.membership.state(worker) == PeerState.DEAD:
                    break
                await changed.wait()
            nursery.cancel_scope.cancel()
        if not answer:
            raise TransportError(worker, "went dead while running the shard")
        if isinstance(answer[0], TransportError):
            raise answer[0]
        try:
            return ShardAnswer.model_validate_json(answer[0])
        except ValidationError as exc:
            raise TransportError(worker, f"answered nonsense: {str(exc)[:200]}") from exc

    async def _aggregate(self) -> None:
        outputs = self.book.ordered_outputs()
        where = _write_input(self.dir / "aggregate", b"".join(outputs).decode("utf-8", errors="replace"))
        try:
            code, out, err = await trio.to_thread.run_sync(
                self.worker.runner.run_capture, aggregate_request(self.job_id, self.spec, where),
                self.spec.chaindist.shard_timeout_s, MAX_OUTPUT_BYTES)
        except (CarRunnerError, DockerException, OSError) as exc:
            self._finish("failed", error=f"the aggregate could not run: {str(exc)[:300]}")
            return
        if code != 0:
            self._finish("failed", error=f"the aggregate exited {code}: {err[-300:]}")
            return
        self._finish("completed", output=out.decode("utf-8", errors="replace"),
                     digest=result_digest(self.job_id, outputs, out),
                     shards=[{"shard": s, "worker": self.book.outputs[s][0],
                              "output_sha256": hashlib.sha256(self.book.outputs[s][1]).hexdigest()}
                             for s in range(self.book.shards)])

    def _finish(self, state: Literal["completed", "failed"], **fields: Any) -> None:
        self.state = state
        self.result = {"state": state, "job_id": self.job_id, "finished_at": int(time.time()),
                       "attempts": self._attempts, "duplicates": self.book.duplicates, **fields}
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = self.dir / "result.json.tmp"
        staging.write_text(json.dumps(self.result, indent=2))
        os.replace(staging, self.dir / "result.json")
        self._note(f"{state}: " + (f"digest {fields['digest']}\n{fields['output']}".rstrip() if state == "completed"
                                   else fields["error"]))
        self.on_change()

    def _note(self, line: str) -> None:
        self.lines.append(f"[deedmesh] {time.strftime('%H:%M:%S')} {line}")
        log.info(line, extra={"job": self.job_id})


class ChainDistSupervisor:
    """One ``ChainDistRun`` per ChainDist job the newest plan holds; a released one is cancelled
    (its stored result is removed with it: a stopped job's run is over)."""

    def __init__(self, node: Node, worker: ShardWorker, work_dir: Path,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.node, self.worker, self.work_dir, self.on_change = node, worker, work_dir, on_change
        self.runs: KeyedTasks[int, ChainDistJob, ChainDistRun] = KeyedTasks(
            self._make, self._run_one, on_drop=lambda run: shutil.rmtree(run.dir, ignore_errors=True))

    def offer(self, plan: Plan) -> None:
        self.runs.want({job_id: spec for job_id in plan.holding
                        if isinstance(spec := plan.specs.get(job_id), ChainDistJob)})

    def report(self, job_id: int) -> ChainDistReport | None:
        run = self.runs.get(job_id)
        return None if run is None else run.report()

    def logs(self, job_id: int, tail: int) -> str | None:
        run = self.runs.get(job_id)
        return None if run is None else run.logs(tail)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.runs.run(task_status=task_status)

    def _make(self, job_id: int, spec: ChainDistJob) -> ChainDistRun:
        return ChainDistRun(self.node, self.worker, job_id, spec, self.work_dir, on_change=self.on_change)

    async def _run_one(self, run: ChainDistRun) -> None:
        def say(error: BaseException) -> None:  # the engine or the disk failed: a node outlives it
            log.warning("a ChainDist run stopped on an error; it starts over",
                        extra={"job": run.job_id, "error": str(error)[:500], "retry_s": RETRY_S})

        if await stopped_on((DockerException, OSError, CarRunnerError), run.run, say, RETRY_S):
            return  # forgotten, then started again (KeyedTasks)
        await trio.sleep_forever()  # held, finished: its result is shown until the job goes
