"""The committed artifacts are what the sources compile to."""

from __future__ import annotations

import json

import pytest

from contracts import ArtifactError, _compile, artifact_names, load_artifact


def test_every_artifact_records_the_current_source_fingerprint() -> None:
    fingerprint = _compile.fingerprint()
    stale = [n for n in artifact_names() if load_artifact(n).source_fingerprint != fingerprint]
    assert not stale, f"stale artifacts {stale}: run scripts/compile_contracts.py"


def test_the_contract_set_is_complete() -> None:
    assert set(artifact_names()) == {"FeeOnTransferToken", "JobEscrow", "LicenseRegistry", "MockStablecoin",
                                     "OracleRegistry", "ReentrantToken"}


def test_a_missing_artifact_is_a_named_error() -> None:
    with pytest.raises(ArtifactError, match="no artifact for Nope"):
        load_artifact("Nope")


@pytest.mark.compile
def test_recompiling_reproduces_the_committed_bytecode() -> None:
    """A full compile with the pinned solc; the artifacts must match byte for byte."""
    compiled = _compile.compile_all()
    fingerprint = _compile.fingerprint()
    assert set(compiled) == set(artifact_names())
    for name, c in compiled.items():
        committed = json.loads((_compile.ARTIFACTS_DIR / f"{name}.json").read_text())
        assert committed == _compile.artifact_json(c, fingerprint), name
