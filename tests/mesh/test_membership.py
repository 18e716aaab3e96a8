"""Liveness from heartbeats only: silence makes a peer suspect, then dead; a beat revives it."""

from __future__ import annotations

import pytest

from mesh._membership import LivenessConfig, Membership, PeerState

CFG = LivenessConfig(heartbeat_interval_ms=1000, suspect_after_ms=2500, dead_after_ms=3000)


def test_alive_suspect_dead_and_back() -> None:
    m = Membership(CFG)
    first = m.observe("a", 0)
    assert first is not None
    assert (first.before, first.after) == (None, PeerState.ALIVE)
    assert m.observe("a", 1000) is None
    assert m.tick(3400) == []  # 2.4 s of silence: still alive
    [t] = m.tick(3500)
    assert (t.peer, t.before, t.after) == ("a", PeerState.ALIVE, PeerState.SUSPECT)
    [t] = m.tick(4000)
    assert (t.before, t.after, t.at_ms) == (PeerState.SUSPECT, PeerState.DEAD, 4000)
    assert m.tick(10_000) == []
    back = m.observe("a", 10_000)
    assert back is not None
    assert (back.before, back.after) == (PeerState.DEAD, PeerState.ALIVE)
    assert m.alive() == {"a"}


def test_a_frozen_peer_dies_within_three_intervals_whatever_its_connection_does() -> None:
    m = Membership(CFG)
    for t in range(0, 5000, 1000):
        m.observe("frozen", t)
    transitions = [tr for now in range(4000, 8001, 100) for tr in m.tick(now)]
    dead_at = next(tr.at_ms for tr in transitions if tr.after is PeerState.DEAD)
    assert dead_at - 4000 <= 3 * CFG.heartbeat_interval_ms


def test_forget_and_bad_config() -> None:
    m = Membership(CFG)
    m.observe("b", 0)
    m.forget("b")
    assert m.state("b") is None
    assert m.peers() == {}
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        LivenessConfig(heartbeat_interval_ms=3000, suspect_after_ms=2000, dead_after_ms=4000)
