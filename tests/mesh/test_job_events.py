"""A node's history of a job, derived from its successive views: the CSP's actions, placements,
moves, states and restarts; bounded per job and forgotten with the job."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh._identity import NodeIdentity
from mesh._job_events import JobEvents
from mesh._placement import Claim
from mesh._wire_claim import ClaimEntry, Claims

A, B = (NodeIdentity(bytes([0x70 + i]) * 32).address for i in range(2))


def claims(node: str, state: str, restarts: int = 0, generation: int = 1) -> Claims:
    return Claims.of((ClaimEntry(job_id=7, replica=0, generation=generation, lease_until_ms=10**6,
                                     state=state, restarts=restarts),))  # type: ignore[arg-type]


def on(node: str, generation: int = 1) -> dict[int, dict[int, Claim]]:
    return {7: {0: Claim(7, 0, node, generation, 10**6)}}


def test_a_jobs_life_reads_as_events() -> None:
    events = JobEvents()
    events.observe(1, {7: (1, False)}, {}, {})
    events.observe(2, {7: (1, False)}, on(A), {A: claims(A, "claimed")})
    events.observe(3, {7: (1, False)}, on(A), {A: claims(A, "healthy")})
    events.observe(4, {7: (1, False)}, on(A), {A: claims(A, "healthy")})  # nothing new
    events.observe(5, {7: (1, False)}, on(A), {A: claims(A, "running", restarts=1)})
    events.observe(6, {7: (1, False)}, {7: {}}, {})  # its holder died
    events.observe(7, {7: (1, False)}, on(B, 2), {B: claims(B, "healthy", generation=2)})
    events.observe(8, {7: (2, True)}, {7: {}}, {})
    got = [(e.at_ms, e.what, e.replica, e.node, e.detail) for e in events.of(7)]
    assert got == [
        (1, "submitted", None, None, "nonce 1"),
        (2, "placed", 0, A, "generation 1"),
        (3, "state", 0, A, "healthy"),
        (5, "state", 0, A, "running"),
        (5, "restarted", 0, A, "1 restarts"),
        (6, "unplaced", 0, A, f"was on {A}"),
        (7, "moved", 0, B, f"from {A}, generation 2"),
        (7, "state", 0, B, "healthy"),
        (8, "stopped", None, None, "nonce 2"),
        (8, "unplaced", 0, B, f"was on {B}"),
    ]
    assert events.of(7)[0].as_json() == {"at_ms": 1, "what": "submitted", "replica": None, "node": None,
                                         "detail": "nonce 1"}


def test_the_history_is_bounded_and_forgotten_with_the_job() -> None:
    events = JobEvents(max_events=3)
    for nonce in range(1, 6):
        events.observe(nonce, {7: (nonce, False)}, {}, {})
    assert [e.detail for e in events.of(7)] == ["nonce 3", "nonce 4", "nonce 5"]
    events.observe(9, {}, {}, {})
    assert events.of(7) == []


def war_claims(serving: str, failed: str = "") -> Claims:
    entry = ClaimEntry(job_id=7, replica=0, generation=1, lease_until_ms=10**6, state="healthy", restarts=0)
    return Claims.of((entry,), [(7, 0, serving, failed)])


def test_a_war_replicas_versions_and_failed_rollouts_read_as_events() -> None:
    events = JobEvents()
    events.observe(1, {7: (1, False)}, {}, {})
    events.observe(2, {7: (1, False)}, on(A), {A: war_claims("aaaaaaaaaaaa")})
    events.observe(3, {7: (1, False)}, on(A), {A: war_claims("aaaaaaaaaaaa")})  # nothing new
    events.observe(4, {7: (1, False)}, on(A), {A: war_claims("aaaaaaaaaaaa", "bbbbbbbbbbbb")})
    events.observe(5, {7: (1, False)}, on(A), {A: war_claims("cccccccccccc")})
    got = [(e.at_ms, e.what, e.detail) for e in events.of(7)]
    assert got == [
        (1, "submitted", "nonce 1"),
        (2, "placed", "generation 1"),
        (2, "state", "healthy"),
        (2, "version", "serving aaaaaaaaaaaa"),
        (4, "rollout-failed", "bbbbbbbbbbbb failed; aaaaaaaaaaaa keeps serving"),
        (5, "version", "serving cccccccccccc"),
    ]


def test_versions_name_only_claimed_replicas_once_and_travel_in_json() -> None:
    entry = ClaimEntry(job_id=7, replica=0, generation=1, lease_until_ms=10**6, state="healthy", restarts=0)
    with pytest.raises(ValidationError, match="only claimed ones"):
        Claims.of((entry,), [(8, 0, "aa", "")])
    with pytest.raises(ValidationError, match="at most once"):
        Claims.of((entry,), [(7, 0, "aa", ""), (7, 0, "bb", "")])
    with pytest.raises(ValidationError, match="pattern"):
        Claims.of((entry,), [(7, 0, "not-hex", "")])
    held = Claims.of((entry,), [(7, 0, "abc123", "")])
    again = Claims.model_validate_json(held.model_dump_json())
    assert again == held
    assert again.versions_of == {(7, 0): ("abc123", "")}
    assert Claims.of((entry,)).versions_of == {}
