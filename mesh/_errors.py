"""The error tree of the ``mesh`` package.

::

    MeshError                   anything the node itself refuses or cannot do
    ├── KeystoreError           a key file is missing, malformed, too open, or the password is wrong
    ├── ConfigError             a node configuration value is invalid
    ├── TransportError          a peer could not be dialed or sent to
    ├── SpecError               a job spec is invalid (_jobspec_load; names file, line, column, field)
    ├── SubmissionRefused       a node refused a CSP's submission (its reason and HTTP status)
    ├── EngineUnavailable       no container engine answers (_engine)
    └── CarRunnerError          the container runner failed (_runner_car)

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


class SubmissionRefused(MeshError):
    """A node refused a submission: ``reason`` is the node's (``_submission.STATUS``)."""

    def __init__(self, via: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{via} refused the submission ({status} {reason}): {message}")
        self.status = status
        self.reason = reason
