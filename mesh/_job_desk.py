"""Where a CSP's submission enters the mesh: any node's ``POST /jobs``.

The desk decodes the request, recovers the CSP from its signature, reads the chain facts for that
job and CSP (in the chain worker thread: web3 is synchronous), runs ``check_submission`` against
the highest nonce known for the job (this node's book on disk, or a newer action already relayed
by the mesh), records the nonce on disk, and then hands the record to the node, which relays it.
Every refusal is a ``Rejected`` with its HTTP status; nothing is relayed or recorded on a refusal.
A disk that cannot take the nonce is a 503 with nothing relayed; the nonce stays reserved in
memory (a retry signs a new one).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from contracts import ChainError

from ._jobspec import JobSpec, parse_spec_json
from ._node import Node
from ._nonces import NonceBook
from ._submission import ChainFacts, Rejected, Submission, check_submission, signer_of

ReadFacts = Callable[[int, str], Awaitable[ChainFacts]]  # (job id, csp) -> what the chain says


class JobDesk:
    def __init__(self, node: Node, chain_id: int, escrow: str, read_facts: ReadFacts, book: NonceBook,
                 now_s: Callable[[], int]) -> None:
        self.node = node
        self.chain_id = chain_id
        self.escrow = escrow
        self._read_facts = read_facts
        self._book = book
        self._now_s = now_s

    async def submit(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Handle one request body; the HTTP status and the JSON answer."""
        try:
            sub, spec = self._decode(body)
            csp = signer_of(sub, self.chain_id, self.escrow)
            try:
                facts = await self._read_facts(sub.job_id, csp)
            except ChainError as exc:
                return 503, {"error": "chain-unreachable", "message": f"cannot read the escrow: {exc}"}
            known = self.node.jobs.get((sub.job_id, csp.lower()))
            seen = [n for n in (self._book.last(sub.job_id), None if known is None else known.nonce) if n is not None]
            last = max(seen, default=None)
            check_submission(sub, facts, replicas=None if spec is None else spec.replicas, now_s=self._now_s(),
                             last_nonce=last, signer=csp)
            if not self._book.record(sub.job_id, sub.nonce):  # the same nonce came in at once, on another request
                raise Rejected("replayed", f"nonce {sub.nonce} is already being accepted for job {sub.job_id}")
            try:
                await self._book.flush()  # durable before relayed: a restart still refuses the replay
            except OSError as exc:
                return 503, {"error": "nonce-book-unwritable", "message": f"cannot record the nonce: {exc}"}
            self.node.announce_job(sub, csp, spec)
        except Rejected as bad:
            return bad.status, {"error": bad.reason, "message": str(bad)}
        return 202, {"job_id": sub.job_id, "nonce": sub.nonce, "csp": csp, "stop": spec is None,
                     "accepted_by": self.node.address}

    @staticmethod
    def _decode(body: bytes) -> tuple[Submission, JobSpec | None]:
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or set(data) != {"submission", "spec"}:
                raise ValueError('the body must be {"submission": ..., "spec": ... or null}')
            sub = Submission.model_validate(data["submission"])
        except (ValueError, ValidationError) as exc:
            raise Rejected("malformed", _first_error(exc)) from None
        if data["spec"] is None:
            if not sub.is_stop:
                raise Rejected("malformed", "a submission without a spec must be a stop (zero spec hash)")
            return sub, None
        try:
            return sub, parse_spec_json(data["spec"])
        except ValidationError as exc:
            raise Rejected("malformed", f"invalid spec: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc).splitlines()[0]
