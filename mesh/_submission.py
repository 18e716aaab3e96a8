"""A CSP's signed job submission, and the checks a node runs before it gossips one.

The CSP signs ``JobSubmission(jobId, specHash, nonce, expiry)`` under the escrow's EIP-712 domain
(chain id and escrow address: a signature for one chain or escrow is worthless on another) and
hands it, with the spec, to any node. The node checks, in this order, and refuses with the first
failure (each a ``Rejected`` with a reason, an HTTP status and a one-line message):

- the signature recovers to some address (low s, as the contracts require);
- the submission has not expired, and does not claim a validity longer than ``MAX_VALIDITY_S``
  (a bounded window bounds what a leaked signature can do);
- the job exists on chain, is active, has a deposit, and belongs to the signer;
- the spec's hash is the one the job was funded with, and it asks for the funded replica count;
- the CSP is admitted and in good standing;
- the nonce is above every nonce already seen for this job.

Nonces are per job and only move up. The mesh keeps the latest accepted action per job (a
submission, or a stop: the same signed struct with a zero spec hash), so a replayed older
submission is refused by every node that has heard the newer one, and after a restart (the
nonce book is kept on disk, ``_nonces``). Pure: the chain's answers are passed in.

A CSP reads its job's logs with a signed ``LogRequest(jobId, replica, tail, expiry)`` under the
same domain (``_logs`` checks it). Logs can hold secrets, so only the job's CSP may read them; the
request is a read, so it carries no nonce: a short validity (``MAX_LOG_VALIDITY_S``) bounds what a
copied request can still read. It is off-chain only, so unlike ``JobSubmission`` it has no twin in
Solidity; a vector in tests/mesh/test_logs.py pins its digest.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from contracts import CspStatus, Job, JobStatus, digest, escrow_domain, job_submission, sign, typed_message

from ._envelope import recover_address

MAX_VALIDITY_S = 24 * 3600  # a submission signed for longer than a day is refused
STOP = b"\x00" * 32  # the spec hash of a signed stop
MAX_LOG_VALIDITY_S = 600  # a log request is used at once; a copy of it must not read logs for long
MAX_TAIL = 10_000  # lines of a replica's log in one request
ALL_REPLICAS = 255  # the signed ``replica`` of a request for every replica (a job has at most 64)
LOG_REQUEST_TYPE = [
    {"name": "jobId", "type": "uint256"},
    {"name": "replica", "type": "uint8"},
    {"name": "tail", "type": "uint32"},
    {"name": "expiry", "type": "uint64"},
]


class Submission(BaseModel):
    """What the CSP signs, plus the signature (hex on the wire)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    job_id: int = Field(ge=1, lt=2**256)
    spec_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    nonce: int = Field(ge=0, lt=2**256)
    expiry: int = Field(ge=0, lt=2**64)  # unix seconds
    signature: str = Field(pattern=r"^0x[0-9a-f]{130}$")

    @property
    def spec_hash_bytes(self) -> bytes:
        return bytes.fromhex(self.spec_hash[2:])

    @property
    def is_stop(self) -> bool:
        return self.spec_hash_bytes == STOP


# reason -> HTTP status the node API answers with
STATUS = {
    "malformed": 422,
    "bad-signature": 401,
    "expired": 410,
    "expiry-too-far": 422,
    "unknown-job": 404,
    "job-not-active": 409,
    "not-funded": 402,
    "wrong-owner": 403,
    "spec-mismatch": 409,
    "replicas-mismatch": 409,
    "csp-not-admitted": 403,
    "replayed": 409,
    "record-mismatch": 422,
    "spec-too-large": 413,  # a relayed job record whose subject or seq is not its submission's
    # log requests (_logs)
    "too-large": 413,
    "job-contested": 409,  # two CSPs name the job in this node's view: it cannot tell the owner
    "no-replica": 404,  # the job is stopped, or the replica asked for is not placed
    "not-a-node": 403,  # a holder answers nodes only (clients ask a node's API)
    "no-runner": 503,  # the holder has no container runner
    "runner-failed": 502,  # the holder's container engine failed
    "holder-unreachable": 502,
    "holder-timeout": 504,
}


class Rejected(Exception):
    """A submission a node refuses; ``reason`` is a key of ``STATUS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.status = STATUS[reason]


@dataclass(frozen=True)
class ChainFacts:
    """What the node read from the chain for this submission (``job`` is None if it has none)."""

    chain_id: int
    escrow: str
    job: Job | None
    csp_admitted_until: int  # unix seconds; 0 if never admitted
    csp_status: CspStatus


def signer_of(sub: Submission, chain_id: int, escrow: str) -> str:
    """The address that signed ``sub`` under this escrow's domain; ``Rejected`` if none."""
    message = job_submission(escrow_domain(chain_id, escrow), sub.job_id, sub.spec_hash_bytes, sub.nonce, sub.expiry)
    return _recover(message, sub.signature)


def check_submission(sub: Submission, facts: ChainFacts, *, replicas: int | None, now_s: int,
                     last_nonce: int | None, signer: str | None = None) -> str:
    """Run every check (module docstring); return the CSP's address. ``replicas`` is the spec's
    replica count (None for a stop); ``last_nonce`` the highest nonce seen for this job;
    ``signer``: ``signer_of(sub, ...)`` if the caller recovered it already under this domain."""
    signer = signer_of(sub, facts.chain_id, facts.escrow) if signer is None else signer
    if sub.expiry <= now_s:
        raise Rejected("expired", f"expired at {sub.expiry}, now {now_s}")
    if sub.expiry > now_s + MAX_VALIDITY_S:
        raise Rejected("expiry-too-far", f"valid until {sub.expiry}, more than {MAX_VALIDITY_S} s ahead")
    check_chain_facts(sub, signer, facts, replicas=replicas, now_s=now_s)
    if last_nonce is not None and sub.nonce <= last_nonce:
        raise Rejected("replayed", f"nonce {sub.nonce} <= {last_nonce}, already seen for job {sub.job_id}")
    return signer


def check_chain_facts(sub: Submission, signer: str, facts: ChainFacts, *, replicas: int | None, now_s: int) -> None:
    """The checks against the escrow alone (module docstring), for a submission ``signer`` signed:
    what the accepting node checks, and what a node that would run a relayed job checks again
    (``_job_check``), since a relay proves the CSP's signature but not the chain."""
    job = facts.job
    if job is None or job.status is JobStatus.NONE:
        raise Rejected("unknown-job", f"job {sub.job_id} does not exist on chain {facts.chain_id}")
    if job.csp.lower() != signer.lower():
        # a forged signature recovers to some random address: it lands here too
        raise Rejected("wrong-owner", f"job {sub.job_id} belongs to {job.csp}, signed by {signer}")
    if job.status is not JobStatus.ACTIVE:
        raise Rejected("job-not-active", f"job {sub.job_id} is {job.status.name.lower()}")
    if job.deposited == 0:
        raise Rejected("not-funded", f"job {sub.job_id} has no deposit")
    if not sub.is_stop:
        if sub.spec_hash_bytes != job.spec_hash:
            raise Rejected("spec-mismatch", f"spec hash {sub.spec_hash} is not the funded 0x{job.spec_hash.hex()}")
        if replicas != job.replicas:
            raise Rejected("replicas-mismatch", f"the spec asks for {replicas} replicas, {job.replicas} are funded")
    if facts.csp_admitted_until < now_s or facts.csp_status is not CspStatus.ACTIVE:
        raise Rejected("csp-not-admitted", f"{signer} is not an admitted CSP in good standing")


def sign_submission(private_key: bytes, chain_id: int, escrow: str, job_id: int, spec_hash: bytes, nonce: int,
                    expiry: int) -> Submission:
    """The CSP's signed submission (``spec_hash`` = ``STOP`` for a stop)."""
    message = job_submission(escrow_domain(chain_id, escrow), job_id, spec_hash, nonce, expiry)
    return Submission(job_id=job_id, spec_hash="0x" + spec_hash.hex(), nonce=nonce, expiry=expiry,
                      signature="0x" + sign(message, private_key).hex())


class LogRequest(BaseModel):
    """A CSP's signed request for a job's logs (module docstring); ``replica`` None: every replica."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    job_id: int = Field(ge=1, lt=2**256)
    replica: int | None = Field(default=None, ge=0, lt=64)
    tail: int = Field(ge=1, le=MAX_TAIL)
    expiry: int = Field(ge=0, lt=2**64)  # unix seconds
    signature: str = Field(pattern=r"^0x[0-9a-f]{130}$")


def log_request_message(chain_id: int, escrow: str, job_id: int, replica: int | None, tail: int,
                        expiry: int) -> dict[str, object]:
    """The full EIP-712 message of a log request under the escrow's domain."""
    # the escrow's domain, with its EIP712Domain type as ``contracts`` declares it for every struct
    full = typed_message(escrow_domain(chain_id, escrow), "JobSubmission", {})
    full["types"] = {"EIP712Domain": full["types"]["EIP712Domain"], "LogRequest": LOG_REQUEST_TYPE}
    full["primaryType"] = "LogRequest"
    full["message"] = {"jobId": job_id, "replica": ALL_REPLICAS if replica is None else replica, "tail": tail,
                       "expiry": expiry}
    return full


def _recover(message: dict[str, object], signature: str) -> str:
    raw = bytes.fromhex(signature[2:])
    v = raw[64] - 27 if raw[64] in (27, 28) else raw[64]
    signer = recover_address(digest(message), raw[:64] + bytes([v]))
    if signer is None:
        raise Rejected("bad-signature", "the signature is malformed or not canonical (high s)")
    return signer


def log_requester(req: LogRequest, chain_id: int, escrow: str, now_s: int) -> str:
    """The address that signed ``req``, once it is checked to be in its validity window;
    ``Rejected`` (``bad-signature``, ``expired``, ``expiry-too-far``) otherwise."""
    signer = _recover(log_request_message(chain_id, escrow, req.job_id, req.replica, req.tail, req.expiry),
                      req.signature)
    if req.expiry <= now_s:
        raise Rejected("expired", f"expired at {req.expiry}, now {now_s}")
    if req.expiry > now_s + MAX_LOG_VALIDITY_S:
        raise Rejected("expiry-too-far", f"valid until {req.expiry}, more than {MAX_LOG_VALIDITY_S} s ahead")
    return signer


def sign_log_request(private_key: bytes, chain_id: int, escrow: str, job_id: int, replica: int | None, tail: int,
                     expiry: int) -> LogRequest:
    """The CSP's signed log request (``replica`` None: every replica)."""
    message = log_request_message(chain_id, escrow, job_id, replica, tail, expiry)
    return LogRequest(job_id=job_id, replica=replica, tail=tail, expiry=expiry,
                      signature="0x" + sign(message, private_key).hex())
