"""Membership: every node's view of every peer as alive, suspect or dead, from signed heartbeats.

Pure and clock-free: the node feeds in observations and "now" (milliseconds of a monotonic
clock) and reads transitions back. Liveness is judged on heartbeats alone, never on TCP
connections, so a frozen process that keeps its sockets open (SIGSTOP) still goes suspect, then
dead. A peer that beats again is alive again (a restart or a healed partition).
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
    """How long silence is tolerated; every default has a reason."""

    heartbeat_interval_ms: int = 1_000  # one beacon a second: failover within a few seconds
    suspect_after_ms: int = 2_500  # two missed beats and a half: one lost beacon is not a suspicion
    dead_after_ms: int = 3_000  # 3 x interval: the failure-detection target of the mesh issue

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_ms < self.suspect_after_ms <= self.dead_after_ms:
            raise ValueError("need 0 < heartbeat_interval_ms < suspect_after_ms <= dead_after_ms")


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
    _last_seen: dict[str, int] = field(default_factory=dict)
    _state: dict[str, PeerState] = field(default_factory=dict)

    def observe(self, peer: str, now_ms: int) -> Transition | None:
        """A valid heartbeat from ``peer`` arrived at ``now_ms``."""
        self._last_seen[peer] = max(now_ms, self._last_seen.get(peer, now_ms))
        before = self._state.get(peer)
        if before is PeerState.ALIVE:
            return None
        self._state[peer] = PeerState.ALIVE
        return Transition(peer, before, PeerState.ALIVE, now_ms)

    def tick(self, now_ms: int) -> list[Transition]:
        """Apply the passage of time; return the transitions it caused."""
        out = []
        for peer, seen in self._last_seen.items():
            silent = now_ms - seen
            before = self._state[peer]
            if before is PeerState.DEAD:
                continue  # only a heartbeat (observe) revives a dead peer
            after = (PeerState.DEAD if silent >= self.config.dead_after_ms
                     else PeerState.SUSPECT if silent >= self.config.suspect_after_ms else before)
            if after is not before:
                self._state[peer] = after
                out.append(Transition(peer, before, after, now_ms))
        return out

    def forget(self, peer: str) -> None:
        """Drop a peer entirely (it was banned)."""
        self._last_seen.pop(peer, None)
        self._state.pop(peer, None)

    def state(self, peer: str) -> PeerState | None:
        return self._state.get(peer)

    def last_seen_ms(self, peer: str) -> int | None:
        return self._last_seen.get(peer)

    def peers(self) -> dict[str, PeerState]:
        return dict(self._state)

    def alive(self) -> set[str]:
        return {p for p, s in self._state.items() if s is PeerState.ALIVE}
