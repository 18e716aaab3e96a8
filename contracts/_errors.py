"""The error tree of the ``contracts`` package.

::

    ChainError                      anything that went wrong talking to a chain
    ├── ChainUnreachable            no answer from the RPC URL (or anvil would not start)
    ├── ArtifactError               a compiled artifact is missing or unreadable
    ├── DeploymentError             a deployment file is missing, malformed or for another chain
    ├── TransactionFailed           mined with status 0 and no decodable reason
    └── ContractRevert              a call or transaction reverted with a known reason
        └── one subclass per custom error of every contract ABI, named after it
            (``JobEscrowNothingToClaim``, ``OracleRegistryQuorumNotReached``, ...), plus
            ``Error`` (require strings) and ``Panic``; look them up with ``revert_class(name)``
            or ``contracts.reverts.<Name>``.

Errors carry their fields: ``ContractRevert.name`` and ``.args_by_name``.
"""

from __future__ import annotations

from typing import Any


class ChainError(Exception):
    """Base of every error raised by ``contracts``."""


class ChainUnreachable(ChainError):
    """The chain did not answer."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"chain at {url} is unreachable: {reason}")
        self.url = url
        self.reason = reason


class ArtifactError(ChainError):
    """A compiled contract artifact is missing or malformed."""


class DeploymentError(ChainError):
    """A deployment record is missing, malformed, or does not match the chain."""


class TransactionFailed(ChainError):
    """A transaction was mined with status 0 and its revert reason could not be recovered."""

    def __init__(self, tx_hash: str, gas_used: int) -> None:
        super().__init__(f"transaction {tx_hash} failed (status 0, gas used {gas_used})")
        self.tx_hash = tx_hash
        self.gas_used = gas_used


class ContractRevert(ChainError):
    """A contract reverted with a reason decoded against the project's ABIs."""

    name: str = "ContractRevert"

    def __init__(self, args_by_name: dict[str, Any]) -> None:
        self.args_by_name = args_by_name
        rendered = ", ".join(f"{k}={v!r}" for k, v in args_by_name.items())
        super().__init__(f"{self.name}({rendered})")

    @property
    def values(self) -> tuple[Any, ...]:
        """The error's arguments in ABI order."""
        return tuple(self.args_by_name.values())
