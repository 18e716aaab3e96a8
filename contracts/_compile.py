"""Compiling the Solidity sources into the committed artifacts.

Owns the one compiler input (sources, settings, pinned versions), its fingerprint, and the
compile itself: py-solc-x's ``compile_standard`` driving a native ``solc`` of the pinned version
when one is on PATH, else the npm solc-js build behind ``contracts/bin/solc``. Nothing here runs
at import or install time; ``scripts/compile_contracts.py`` and the staleness tests call it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCES_DIR = PACKAGE_DIR / "sol"
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"
NODE_MODULES = PACKAGE_DIR / "node_modules"
SHIM = PACKAGE_DIR / "bin" / "solc"

SOLC_VERSION = "0.8.30"
# py-evm stops at prague and anvil 1.7 defaults past it: pin one EVM version every backend runs.
EVM_VERSION = "prague"
OPTIMIZER_RUNS = 200
SETTINGS: dict[str, Any] = {
    "evmVersion": EVM_VERSION,
    "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
    "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"]}
    },
}


class CompileError(RuntimeError):
    """The compiler could not be found or reported errors."""


@dataclass(frozen=True)
class Compiled:
    """One contract's artifact, as written to ``artifacts/<name>.json``."""

    name: str
    source: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


def source_files() -> list[Path]:
    """Every Solidity source of the project, sorted (test-only contracts under ``sol/test``)."""
    return sorted(SOURCES_DIR.rglob("*.sol"))


def openzeppelin_version() -> str:
    """The OpenZeppelin Contracts version installed from the lockfile."""
    lock = json.loads((PACKAGE_DIR / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/@openzeppelin/contracts"]["version"])


def fingerprint() -> str:
    """A hash of everything that determines the artifacts: sources, settings and pinned versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"solc": SOLC_VERSION, "oz": openzeppelin_version(), "settings": SETTINGS},
                        sort_keys=True).encode())
    for path in source_files():
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def find_solc() -> str:
    """A native solc of the pinned version if one is on PATH, else the solc-js shim."""
    native = shutil.which("solc")
    if native:
        out = subprocess.run([native, "--version"], capture_output=True, text=True, check=False).stdout
        if f"Version: {SOLC_VERSION}+" in out:
            return native
    if not (NODE_MODULES / "solc").is_dir():
        raise CompileError("no solc: run `npm ci` in contracts/ (or `make setup`) to install solc-js")
    return str(SHIM)


def compile_all() -> dict[str, Compiled]:
    """Compile every source in one standard-json input; return artifacts by contract name."""
    import solcx  # only the compile path needs it

    sources = {str(p.relative_to(PACKAGE_DIR)): {"content": p.read_text()} for p in source_files()}
    try:
        out = solcx.compile_standard(
            {"language": "Solidity", "sources": sources, "settings": SETTINGS},
            solc_binary=find_solc(),
            base_path=str(PACKAGE_DIR),
            allow_paths=str(PACKAGE_DIR),
        )
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e["formattedMessage"] for e in errors))
    compiled: dict[str, Compiled] = {}
    for source, contracts in out["contracts"].items():
        if not source.startswith("sol/"):
            continue  # OpenZeppelin's own contracts are not artifacts of ours
        for name, data in contracts.items():
            if not data["evm"]["bytecode"]["object"]:
                continue  # interfaces and abstract contracts
            compiled[name] = Compiled(
                name=name,
                source=source,
                abi=data["abi"],
                bytecode="0x" + data["evm"]["bytecode"]["object"],
                deployed_bytecode="0x" + data["evm"]["deployedBytecode"]["object"],
            )
    return compiled


def artifact_json(c: Compiled, source_fingerprint: str) -> dict[str, Any]:
    """The committed JSON form of one artifact."""
    return {
        "contractName": c.name,
        "sourceName": c.source,
        "abi": c.abi,
        "bytecode": c.bytecode,
        "deployedBytecode": c.deployed_bytecode,
        "compiler": {"version": SOLC_VERSION, "evmVersion": EVM_VERSION, "optimizerRuns": OPTIMIZER_RUNS,
                     "openzeppelin": openzeppelin_version()},
        "sourceFingerprint": source_fingerprint,
    }


def write_artifacts(compiled: dict[str, Compiled]) -> list[Path]:
    """Replace ``artifacts/`` with the given contracts; return the files written."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    for old in ARTIFACTS_DIR.glob("*.json"):
        old.unlink()
    fp = fingerprint()
    written = []
    for name, c in sorted(compiled.items()):
        path = ARTIFACTS_DIR / f"{name}.json"
        path.write_text(json.dumps(artifact_json(c, fp), indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written
