"""Job logs from any node: ``GET``/``POST /jobs/{id}/logs`` on the node a CSP asks, and the
``/deedmesh/logs/1`` exchange with the nodes that hold the replicas.

Container logs can hold secrets, so only the job's CSP may read them. The CSP signs a
``LogRequest`` (``_submission``); the node it asks (the desk) checks, in this order, and refuses
with the first failure (a ``Rejected``: reason and HTTP status):

- the signature recovers to some address (low s), and the request is within its validity window;
- this node knows the job (``unknown-job``), the signer is a CSP that named it (``wrong-owner``);
  if another CSP names it too (one record is forged by a licensed node), the signer must be the
  one whose record the chain backs and placement runs (``wrong-owner``), and while this node has
  not read the chain on it, nobody can tell (``job-contested``);
- the job is running and the replica asked for is placed (``no-replica``).

Then it finds each replica's holder (``assignment``, as ``job status`` shows it), reads the
replicas it holds itself through its runner (in a worker thread: the engine client blocks) and
asks each other holder over ``/deedmesh/logs/1``: the CSP's signed request, which replica, and how
many bytes. A holder answers nodes only, and checks the signature against its own view of the job
before it reads. Every holder gets a deadline: a dead one is a ``holder-unreachable`` (502), a
stuck one a ``holder-timeout`` (504). The answer lists each replica's log, or why it is missing;
it is a 200 if any replica's log was read, else the first failure's status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from docker.errors import DockerException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import MeshError, TransportError, TransportTimeout
from ._node import Node
from ._scheduler import assignment, placeable_jobs
from ._submission import LogRequest, Rejected, log_requester
from ._transport import Message

log = logging.getLogger("deedmesh.logs")
PROTOCOL = "/deedmesh/logs/1"
LogReader = Callable[[int, int, int], str]  # (job id, replica, tail) -> the text; blocking (CarRunner.logs)


@dataclass(frozen=True)
class LogConfig:
    """Bounds of a logs request; every default has a reason."""

    max_log_bytes: int = 256 * 1024  # of one answer (JSON-escaped): a screenful is ~10 KiB, tail=10,000 ~1 MiB
    min_replica_bytes: int = 16 * 1024  # several replicas share max_log_bytes, but each gets at least this
    engine_timeout_s: float = 5.0  # one container's log takes the engine milliseconds; a loaded one seconds
    holder_timeout_s: float = 10.0  # a holder's whole answer: its engine's deadline plus the network's
    max_request_bytes: int = 4096  # a signed request and a replica number are ~300 bytes

    @property
    def max_answer_bytes(self) -> int:
        return self.max_log_bytes + 4096  # the log plus the answer's other fields


class LogFetch(BaseModel):
    """What the desk asks a holder: the CSP's signed request, one replica of it, a size budget."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    request: LogRequest
    replica: int = Field(ge=0, lt=64)
    max_bytes: int = Field(ge=1)


def clip(text: str, limit: int) -> tuple[str, bool]:
    """The end of ``text`` whose JSON encoding fits ``limit`` bytes (the newest lines matter), and
    whether anything was cut. Escapes make JSON up to 12 bytes a character, so the cut is searched
    for (the encoded length grows with every character kept)."""
    if len(json.dumps(text)) <= limit:
        return text, False
    fits, too_many = 0, min(len(text), limit) + 1  # a character is at least one byte of JSON
    while too_many - fits > 1:
        mid = (fits + too_many) // 2
        if len(json.dumps(text[-mid:])) <= limit:
            fits = mid
        else:
            too_many = mid
    return text[len(text) - fits:], True


def _refusal(bad: Rejected) -> tuple[int, dict[str, Any]]:
    return bad.status, {"error": bad.reason, "message": str(bad)}


class LogDesk:
    """Serves log requests on one node: the API side (``read``) and the holder side (``serve``)."""

    def __init__(self, node: Node, chain_id: int, escrow: str, read_local: LogReader | None,
                 now_s: Callable[[], int], config: LogConfig = LogConfig()) -> None:
        self.node = node
        self.chain_id = chain_id
        self.escrow = escrow
        self.config = config
        self._read_local = read_local
        self._now_s = now_s

    # ---------------------------------------------------------------- checks

    def authorize(self, req: LogRequest) -> str:
        """Run the checks of the module docstring against this node's view; return the CSP."""
        signer = log_requester(req, self.chain_id, self.escrow, self._now_s()).lower()
        csps = {csp for job_id, csp in self.node.jobs if job_id == req.job_id}
        if not csps:
            raise Rejected("unknown-job", f"this node knows no job {req.job_id}")
        if signer not in csps:
            # a forged signature recovers to some random address: it lands here too
            raise Rejected("wrong-owner", f"job {req.job_id} was not submitted by {signer}")
        if len(csps) > 1:
            placed = placeable_jobs(self.node).get(req.job_id)
            if placed is None:
                raise Rejected("job-contested", f"job {req.job_id} is named by {len(csps)} CSPs; chain not read yet")
            if placed.record.csp != signer:
                raise Rejected("wrong-owner", f"job {req.job_id} belongs to {placed.record.csp} on chain, not {signer}")
        return signer

    # ---------------------------------------------------------------- the node a CSP asks

    async def read(self, job_id: int, request: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle one API request for job ``job_id`` (from the path); the HTTP status and answer."""
        try:
            try:
                req = LogRequest.model_validate(dict(request))
            except ValidationError as exc:
                err = exc.errors(include_url=False, include_input=False)[0]
                raise Rejected("malformed", f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
            if req.job_id != job_id:
                raise Rejected("malformed", f"the request is for job {req.job_id}, the path names job {job_id}")
            csp = self.authorize(req)
            if self.node.jobs[(req.job_id, csp)].spec is None:
                raise Rejected("no-replica", f"job {req.job_id} is stopped")
            placed = assignment(self.node, req.job_id)
            if req.replica is not None:
                if req.replica not in placed:
                    raise Rejected("no-replica", f"replica {req.replica} of job {req.job_id} is not placed")
                placed = {req.replica: placed[req.replica]}
            if not placed:
                raise Rejected("no-replica", f"no replica of job {req.job_id} is placed")
        except Rejected as bad:
            return _refusal(bad)
        budget = max(self.config.min_replica_bytes, self.config.max_log_bytes // len(placed))
        results: dict[int, dict[str, Any]] = {}

        async def one(replica: int, holder: str) -> None:
            results[replica] = await self._replica_log(req, replica, holder, budget)

        async with trio.open_nursery() as nursery:
            for replica, holder in sorted(placed.items()):
                nursery.start_soon(one, replica, holder)
        replicas = [results[r] for r in sorted(results)]
        answer: dict[str, Any] = {"job_id": req.job_id, "replicas": replicas}
        failed = [r for r in replicas if "error" in r]
        if len(failed) == len(replicas):
            first = failed[0]
            return first["status"], {"error": first["error"], "message": first["message"]} | answer
        return 200, answer

    async def _replica_log(self, req: LogRequest, replica: int, holder: str, budget: int) -> dict[str, Any]:
        where = {"replica": replica, "node": holder}
        if holder.lower() == self.node.address.lower():
            status, body = await self._local(req.job_id, replica, req.tail, budget)
        else:
            status, body = await self._remote(LogFetch(request=req, replica=replica, max_bytes=budget), holder)
        if status != 200:
            return where | {"status": status, "error": body.get("error", "?"), "message": body.get("message", "")}
        return where | {"logs": body["logs"], "truncated": body["truncated"]}

    async def _remote(self, fetch: LogFetch, holder: str) -> tuple[int, dict[str, Any]]:
        try:
            peer = await self.node.peer_of(holder)
            raw = await self.node.transport.request(peer, PROTOCOL, fetch.model_dump_json().encode(),
                                                    timeout_s=self.config.holder_timeout_s,
                                                    max_response_bytes=self.config.max_answer_bytes)
        except TransportTimeout as exc:
            return _refusal(Rejected("holder-timeout", f"{holder} did not answer in time: {exc}"))
        except TransportError as exc:
            return _refusal(Rejected("holder-unreachable", f"cannot reach {holder}: {exc}"))
        try:
            answer = json.loads(raw)
            status, body = answer["status"], answer["body"]
            if not (isinstance(status, int) and isinstance(body, dict)):
                raise TypeError("status or body of the wrong type")
            if status == 200 and not (isinstance(body.get("logs"), str) and isinstance(body.get("truncated"), bool)):
                raise TypeError("no logs in the answer")
        except (ValueError, KeyError, TypeError) as exc:
            return _refusal(Rejected("holder-unreachable", f"{holder} answered nonsense: {exc}"))
        return status, body

    async def _local(self, job_id: int, replica: int, tail: int, budget: int) -> tuple[int, dict[str, Any]]:
        reader = self._read_local
        if reader is None:
            return _refusal(Rejected("no-runner", "this node runs no containers"))
        with trio.move_on_after(self.config.engine_timeout_s):
            try:
                # abandoned on timeout: a hung engine call must not hold the answer (mypy 2.4 misreads
                # this keyword of trio's signature)
                text = await trio.to_thread.run_sync(partial(reader, job_id, replica, tail),
                                                     abandon_on_cancel=True)  # type: ignore[call-arg]
            except (DockerException, MeshError, OSError) as exc:  # requests' errors are OSErrors
                return _refusal(Rejected("runner-failed", f"the container engine failed: {exc}"))
            logs, truncated = clip(text, min(budget, self.config.max_log_bytes))
            return 200, {"logs": logs, "truncated": truncated}
        return _refusal(Rejected("runner-failed", f"the container engine took over {self.config.engine_timeout_s} s"))

    # ---------------------------------------------------------------- a holder

    async def serve(self, msg: Message) -> bytes:
        """Answer a ``/deedmesh/logs/1`` request from another node: ``{"status", "body"}``."""
        status, body = await self._serve(msg)
        return json.dumps({"status": status, "body": body}).encode()

    async def _serve(self, msg: Message) -> tuple[int, dict[str, Any]]:
        address = self.node.transport.address_of(msg.forwarder)
        try:
            if address is None or not self.node.is_eligible(address):
                raise Rejected("not-a-node", "logs are forwarded between licensed nodes only")
            if msg.oversized:
                raise Rejected("too-large", f"a request of {msg.oversized} bytes")
            try:
                fetch = LogFetch.model_validate_json(msg.data)
            except ValidationError as exc:
                raise Rejected("malformed", str(exc.errors(include_url=False, include_input=False)[0]["msg"])) from None
            if fetch.request.replica not in (None, fetch.replica):
                raise Rejected("malformed", f"replica {fetch.replica} is not the signed {fetch.request.replica}")
            self.authorize(fetch.request)  # this node's own view, not the asker's word
        except Rejected as bad:
            return _refusal(bad)
        return await self._local(fetch.request.job_id, fetch.replica, fetch.request.tail, fetch.max_bytes)
