"""Liveness from heartbeats only, judged by the beat's own timestamp against the interval the peer
declares: silence makes a peer suspect, then dead; a fresh beat revives it."""

from __future__ import annotations

import pytest

from mesh._membership import LivenessConfig, Membership, PeerState

CFG = LivenessConfig(heartbeat_interval_ms=1000, suspect_factor=2.0, dead_factor=2.75)


def test_alive_suspect_dead_and_back() -> None:
    m = Membership(CFG)
    first = m.observe("a", 0, 1000, now_ms=10)
    assert first is not None
    assert (first.before, first.after) == (None, PeerState.ALIVE)
    assert m.observe("a", 1000, 1000, now_ms=1010) is None
    assert m.tick(2999) == []  # 1.999 s since the last beat: still alive
    [t] = m.tick(3000)
    assert (t.peer, t.before, t.after) == ("a", PeerState.ALIVE, PeerState.SUSPECT)
    [t] = m.tick(3750)
    assert (t.before, t.after, t.at_ms) == (PeerState.SUSPECT, PeerState.DEAD, 3750)
    assert m.tick(10_000) == []
    back = m.observe("a", 10_000, 1000, now_ms=10_050)
    assert back is not None
    assert (back.before, back.after) == (PeerState.DEAD, PeerState.ALIVE)
    assert m.alive() == {"a"}


def test_each_peer_is_judged_by_its_own_interval() -> None:
    m = Membership(CFG)
    m.observe("fast", 0, 1000, now_ms=0)
    m.observe("slow", 0, 5000, now_ms=0)
    m.tick(5000)
    assert (m.state("fast"), m.state("slow")) == (PeerState.DEAD, PeerState.ALIVE)
    m.tick(13_750)
    assert m.state("slow") is PeerState.DEAD


def test_declared_intervals_are_clamped() -> None:
    m = Membership(CFG)
    m.observe("hider", 0, 3_600_000, now_ms=0)  # claims an hour between beats
    m.observe("eager", 0, 1, now_ms=0)
    m.tick(int(2.75 * CFG.max_interval_ms))
    assert m.state("hider") is PeerState.DEAD
    m2 = Membership(CFG)
    m2.observe("eager", 0, 1, now_ms=0)
    m2.tick(int(2.75 * CFG.min_interval_ms) - 1)
    assert m2.state("eager") is PeerState.SUSPECT  # judged at the 250 ms floor, not at 1 ms


def test_a_stale_beat_never_makes_a_peer_alive_and_a_future_one_buys_nothing() -> None:
    m = Membership(CFG)
    t = m.observe("late", 0, 1000, now_ms=5000)  # learned about long after its last beat
    assert t is not None
    assert t.after is PeerState.DEAD
    m.observe("ahead", 60_000, 1000, now_ms=1000)  # its clock runs a minute ahead
    assert m.last_beat_ms("ahead") == 1000
    m.tick(3750)
    assert m.state("ahead") is PeerState.DEAD
    m.observe("late", 6000, 1000, now_ms=6100)
    m.observe("late", 5000, 1000, now_ms=6200)  # an older beat relayed late changes nothing
    assert m.last_beat_ms("late") == 6000


def test_a_frozen_peer_dies_within_three_intervals_whatever_its_connection_does() -> None:
    m = Membership(CFG)
    for t in range(0, 5000, 1000):
        m.observe("frozen", t, 1000, now_ms=t + 30)
    transitions = [tr for now in range(4000, 8001, 250) for tr in m.tick(now)]
    dead_at = next(tr.at_ms for tr in transitions if tr.after is PeerState.DEAD)
    assert dead_at - 4000 <= 3 * CFG.heartbeat_interval_ms


def test_forget_and_bad_config() -> None:
    m = Membership(CFG)
    m.observe("b", 0, 1000, now_ms=0)
    m.forget("b")
    assert m.state("b") is None
    assert m.peers() == {}
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        LivenessConfig(heartbeat_interval_ms=100_000)
