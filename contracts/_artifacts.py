"""Loading the committed compiled artifacts (ABI and bytecode) from ``contracts/artifacts``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ._errors import ArtifactError

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    source_fingerprint: str


@cache
def load_artifact(name: str) -> Artifact:
    """The artifact of contract ``name`` (e.g. ``"JobEscrow"``)."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text())
        return Artifact(
            name=data["contractName"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            source_fingerprint=data["sourceFingerprint"],
        )
    except FileNotFoundError as exc:
        raise ArtifactError(f"no artifact for {name} at {path}; run scripts/compile_contracts.py") from exc
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"artifact {path} is malformed: {exc}") from exc


def artifact_names() -> list[str]:
    """Names of every committed artifact."""
    return sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json"))
