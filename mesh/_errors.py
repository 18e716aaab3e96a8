"""The error tree of the ``mesh`` package.

::

    MeshError                   anything the node itself refuses or cannot do
    ├── KeystoreError           a key file is missing, malformed, too open, or the password is wrong
    ├── ConfigError             a node configuration value is invalid
    ├── TransportError          a peer could not be dialed, sent to or asked
    │   └── TransportTimeout    ... because it did not answer in time
    ├── SpecError               a job spec is invalid (_jobspec_load; names file, line, column, field)
    ├── SubmissionRefused       a node refused a CSP's submission (its reason and HTTP status)
    ├── RequestRefused          a node refused or failed another request (job logs; reason and status)
    ├── UpdateRolledBack        a job update failed on some replica and the mesh rolled it back
    ├── UpdateTimedOut          a job update or scale did not finish while the CLI followed it
    ├── EngineUnavailable       no container engine answers (_engine)
    ├── CarRunnerError          the container runner failed (_runner_car)
    └── GitError                a WAR replica's repository could not be read or fetched (_git)

Errors carry their fields; the CLI maps them to exit codes.
"""

from __future__ import annotations

from pathlib import Path


class MeshError(Exception):
    """Base of every error raised by ``mesh``."""


class KeystoreError(MeshError):
    """A key file could not be used."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"keystore {path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ConfigError(MeshError):
    """A configuration value is invalid."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"config {field}: {reason}")
        self.field = field
        self.reason = reason


class TransportError(MeshError):
    """A dial or a direct send failed (the peer is gone, stuck or unreachable)."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.reason = reason


class TransportTimeout(TransportError):
    """A request got no answer within its deadline (the peer may be alive but stuck or slow)."""


class SubmissionRefused(MeshError):
    """A node refused a submission: ``reason`` is the node's (``_submission.STATUS``)."""

    def __init__(self, via: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{via} refused the submission ({status} {reason}): {message}")
        self.status = status
        self.reason = reason


class UpdateRolledBack(MeshError):
    """A replica did not get healthy on a job's new revision: every replica went back to the previous."""

    def __init__(self, job_id: int, revision: str, previous: str) -> None:
        super().__init__(f"job {job_id}: revision {revision} did not get healthy on some replica; the mesh "
                         f"rolled back to {previous} (recorded again on chain and in the mesh)")
        self.job_id, self.revision, self.previous = job_id, revision, previous


class UpdateTimedOut(MeshError):
    """The mesh did not finish a job's update or scale while the CLI followed it (it goes on)."""

    def __init__(self, job_id: int, revision: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id}: not every replica runs revision {revision} after {timeout_s:.0f} s; "
                         f"the change goes on (follow it with `deedmesh job status {job_id}`)")
        self.job_id, self.revision = job_id, revision


class RequestRefused(MeshError):
    """A node answered a request other than a submission with an error status (``reason`` as in
    ``_submission.STATUS``): refused (4xx), or it could not do it (5xx: a replica's holder down)."""

    def __init__(self, via: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{via} answered {status} {reason}: {message}")
        self.status = status
        self.reason = reason


def first_leaf(error: BaseException) -> BaseException:
    """The first error inside ``error``'s (nested) exception groups, or ``error`` itself: what a log
    line names when a nursery's task failed (trio wraps it in a group on its way out)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
