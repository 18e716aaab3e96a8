"""Membership: every node's view of every peer as alive, suspect or dead, from signed heartbeats.

Pure and clock-free: the node feeds in heartbeats and "now" (wall-clock milliseconds) and reads
transitions back. A peer is judged by the age of the freshest heartbeat it signed, measured from
the timestamp inside it (capped at the time we received it, so a clock running ahead buys no
extra life), against the interval that peer declares. Every node judges the same signed
records by the same rule, so views agree however many hops a heartbeat took, and a peer dies
``dead_factor`` intervals after its last beat wherever it is observed from. Liveness never looks
at connections: a frozen process that keeps its sockets open (SIGSTOP) goes suspect, then dead.
A peer that beats again is alive again (a restart or a healed partition).

Clocks of honest nodes are assumed to agree to well within one interval (NTP does); a node whose
clock lags looks older than it is by the lag.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PeerState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True)
class LivenessConfig:
    """How often we beat and how long silence is tolerated; every default has a reason."""

    heartbeat_interval_ms: int = 1_000  # our own beat: failover within a few seconds on small meshes
    suspect_factor: float = 2.0  # one lost or late beat is not a suspicion; two are
    dead_factor: float = 2.75  # dead within 3 intervals of the last beat, with a tick to spare
    min_interval_ms: int = 250  # a peer declaring a shorter interval is judged at this one
    max_interval_ms: int = 60_000  # ... and a longer one at this: nobody may hide for hours

    def __post_init__(self) -> None:
        if not self.min_interval_ms <= self.heartbeat_interval_ms <= self.max_interval_ms:
            raise ValueError("heartbeat_interval_ms must lie within [min_interval_ms, max_interval_ms]")
        if not 1.0 < self.suspect_factor <= self.dead_factor:
            raise ValueError("need 1 < suspect_factor <= dead_factor")

    def clamp(self, interval_ms: int) -> int:
        return min(max(interval_ms, self.min_interval_ms), self.max_interval_ms)


@dataclass(frozen=True)
class Transition:
    peer: str
    before: PeerState | None  # None: first time seen
    after: PeerState
    at_ms: int


@dataclass
class Membership:
    """The liveness view of one node."""

    config: LivenessConfig = field(default_factory=LivenessConfig)
    _beat: dict[str, int] = field(default_factory=dict)  # peer -> timestamp of its freshest heartbeat
    _interval: dict[str, int] = field(default_factory=dict)  # peer -> its declared interval (clamped)
    _state: dict[str, PeerState] = field(default_factory=dict)

    def judge(self, peer: str, now_ms: int) -> PeerState:
        age, interval = now_ms - self._beat[peer], self._interval[peer]
        if age >= self.config.dead_factor * interval:
            return PeerState.DEAD
        if age >= self.config.suspect_factor * interval:
            return PeerState.SUSPECT
        return PeerState.ALIVE

    def observe(self, peer: str, beat_ms: int, interval_ms: int, now_ms: int) -> Transition | None:
        """A valid heartbeat from ``peer`` stamped ``beat_ms`` (declaring ``interval_ms``) arrived
        at ``now_ms``; returns the transition it caused, if any."""
        beat = min(beat_ms, now_ms)
        if beat >= self._beat.get(peer, beat):
            self._beat[peer] = beat
            self._interval[peer] = self.config.clamp(interval_ms)
        return self._rejudge(peer, now_ms)

    def tick(self, now_ms: int) -> list[Transition]:
        """Apply the passage of time; return the transitions it caused."""
        return [t for peer in list(self._beat) if (t := self._rejudge(peer, now_ms)) is not None]

    def _rejudge(self, peer: str, now_ms: int) -> Transition | None:
        before, after = self._state.get(peer), self.judge(peer, now_ms)
        if after is before:
            return None
        self._state[peer] = after
        return Transition(peer, before, after, now_ms)

    def forget(self, peer: str) -> None:
        """Drop a peer entirely (it was banned)."""
        self._beat.pop(peer, None)
        self._interval.pop(peer, None)
        self._state.pop(peer, None)

    def state(self, peer: str) -> PeerState | None:
        return self._state.get(peer)

    def last_beat_ms(self, peer: str) -> int | None:
        return self._beat.get(peer)

    def peers(self) -> dict[str, PeerState]:
        return dict(self._state)

    def alive(self) -> set[str]:
        return {p for p, s in self._state.items() if s is PeerState.ALIVE}
