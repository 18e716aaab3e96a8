"""Record ``deedmesh/jobs/1``: a CSP's accepted submission (or stop) of a job, as the node that
accepted it relays it to the mesh.

The record is about the job, not about the node that signed its envelope: its subject is
``job:<id>:<csp>`` and its seq is the submission's nonce + 1, so every node keeps the newest
action per (job, CSP) whichever node relayed it, and an older submission is a replay everywhere.
The CSP is part of the subject so that a record naming the wrong CSP for a job (a forgery by a
licensed node: the CSP's signature must still verify) cannot shadow the real one; whoever runs a
job checks on chain that the CSP owns it (``_submission``).

Every receiver re-checks what needs no chain: the subject and seq match the submission, the CSP's
EIP-712 signature recovers to the named CSP, and the spec hashes to what was signed.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from ._envelope import Envelope, Payload
from ._jobspec import JobSpec, normalized_spec_hash, parse_spec_json
from ._submission import Rejected, Submission, signer_of

TOPIC = "deedmesh/jobs/1"
MAX_NONCE = 2**63 - 2  # the record's seq is nonce + 1, and seqs are below 2**63


class JobRecord(Payload):
    """What the accepting node relays: the signed submission, its CSP, and the spec (None: stop)."""

    submission: Submission
    csp: str = Field(pattern=r"^0x[0-9a-f]{40}$")  # lower-case, as in the subject
    spec: dict[str, Any] | None  # the normalized spec (JobSpec.model_dump(mode="json"))


def job_subject(job_id: int, csp: str) -> str:
    return f"job:{job_id}:{csp.lower()}"


def job_seq(sub: Submission) -> int:
    if sub.nonce > MAX_NONCE:
        raise Rejected("malformed", f"nonce {sub.nonce} is above {MAX_NONCE} (a record's seq is nonce + 1)")
    return sub.nonce + 1


def check_job_record(env: Envelope, rec: JobRecord, chain_id: int, escrow: str) -> JobSpec | None:
    """The chain-free checks of a received record (module docstring); returns its spec (None for
    a stop). Raises ``Rejected`` (``record-mismatch``, ``bad-signature``, ``wrong-owner`` or
    ``spec-mismatch``)."""
    sub = rec.submission
    if env.subject != job_subject(sub.job_id, rec.csp) or env.seq != sub.nonce + 1:
        raise Rejected("record-mismatch", f"record {env.subject}#{env.seq} does not match its submission")
    if signer_of(sub, chain_id, escrow).lower() != rec.csp:
        raise Rejected("wrong-owner", f"the submission of job {sub.job_id} is not signed by {rec.csp}")
    if rec.spec is None:
        if not sub.is_stop:
            raise Rejected("spec-mismatch", f"job {sub.job_id}: a submission without a spec")
        return None
    # the relayed spec is the normalized JSON the CSP hashed: hashed as it came, it must give the
    # signed hash byte for byte (a spec re-normalized first would cost a pydantic dump per record:
    # ~12 % of a loaded node's record checks), then parsed
    if normalized_spec_hash(rec.spec) != sub.spec_hash_bytes:
        raise Rejected("spec-mismatch", f"job {sub.job_id}: the spec does not hash to the signed {sub.spec_hash}")
    try:
        return parse_spec_json(rec.spec)
    except ValidationError as exc:
        raise Rejected("spec-mismatch", f"job {sub.job_id}: invalid spec: {exc.errors()[0]['msg']}") from None
