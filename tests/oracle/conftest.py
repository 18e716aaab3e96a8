"""The contract tests' deployed world (one per chain backend, reverted around every test), for
the oracle tests that settle on chain."""

from __future__ import annotations

from tests.contracts.conftest import _deployed, world

__all__ = ["_deployed", "world"]
