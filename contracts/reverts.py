"""Revert exceptions by name: ``from contracts import reverts; reverts.JobEscrowNothingToClaim``.

Every custom error of every committed ABI has a ``ContractRevert`` subclass of the same name.
"""

from __future__ import annotations

from ._artifacts import artifact_names, load_artifact
from ._errors import ContractRevert
from ._revert import revert_class


def __getattr__(name: str) -> type[ContractRevert]:
    known = {"Error", "Panic"} | {
        e["name"] for a in artifact_names() for e in load_artifact(a).abi if e.get("type") == "error"
    }
    if name not in known:
        raise AttributeError(f"no contract error named {name!r}")
    return revert_class(name)
