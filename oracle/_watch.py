"""What an oracle sees of the mesh, written down as it happens: the raw material of its
observations (``_observe``).

An oracle runs a mesh participant (``mesh.open_node`` with its registered oracle key: it may be
a neighbour, it is never placed on). ``Watcher`` samples that participant's view every
``sample_s`` and appends what changed to a log, one JSON object per line, per epoch
(``<dir>/epoch-<n>.jsonl``):

- ``{"at": ms, "up": [...], "down": [...]}``: licensed nodes that became alive (their signed
  beats arrive within the liveness tolerance) or stopped being. A suspect node is down: its beats
  stopped arriving (two intervals missed, ``mesh.LivenessConfig``), though it still holds its
  replicas until it is declared dead, so a holder that fails is judged on the time it held a
  replica without beating (SETTLEMENT.md rule 2: withheld, or burned, per the job's policy);
- ``{"at": ms, "held": [[job, replica, node], ...], "released": [...]}``: the winning claim of a
  replica moved (placement's rules over the claim sets the oracle has, ``mesh.assignments``);
- ``{"at": ms, "watching": true}``: a sample was taken. Gaps between these are the time the oracle
  did not watch (it was down or stalled): ``replay`` turns them into its coverage, so an oracle
  restarted mid-epoch resumes its log and says honestly how much of the epoch it saw.

Times are the oracle's wall clock in ms. A new epoch's log starts with the full state (every node
up, every replica held), so each epoch replays on its own. ``replay`` is pure: the log's lines in,
the intervals and the coverage out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from mesh import Node, PeerState, TaskStatus, assignments, placeable_jobs

log = logging.getLogger("deedmesh.oracle")

SAMPLE_S = 0.25  # how often the view is sampled: a change is timed to within this
GAP_MS = 2_000  # samples further apart than this leave the time between unwatched


@dataclass(frozen=True)
class EpochClock:
    """The escrow's epochs on the wall clock: epoch n is ``[genesis_ms + n * epoch_ms, + epoch_ms)``."""

    genesis_ms: int
    epoch_ms: int

    def epoch_at(self, ms: int) -> int:
        return (ms - self.genesis_ms) // self.epoch_ms

    def bounds(self, epoch: int) -> tuple[int, int]:
        start = self.genesis_ms + epoch * self.epoch_ms
        return start, start + self.epoch_ms


Held = tuple[int, int, str]  # (job, replica, node)


@dataclass(frozen=True)
class Replayed:
    """An epoch's log as intervals, clipped to the epoch: ``alive`` (node, from, to), ``held``
    (job, replica, node, from, to) and ``watched`` (from, to), all in ms."""

    alive: tuple[tuple[str, int, int], ...]
    held: tuple[tuple[int, int, str, int, int], ...]
    watched: tuple[tuple[int, int], ...]

    @property
    def coverage_ms(self) -> int:
        return sum(b - a for a, b in self.watched)


def replay(lines: Iterable[str], start_ms: int, end_ms: int, gap_ms: int = GAP_MS) -> Replayed:
    """The intervals an epoch's log records (module docstring). An interval still open at the last
    sample ends there (what came after was not watched); unparseable lines are skipped (a line cut
    short by a crash)."""
    up: dict[str, int] = {}
    holding: dict[Held, int] = {}
    alive: list[tuple[str, int, int]] = []
    held: list[tuple[int, int, str, int, int]] = []
    watched: list[tuple[int, int]] = []
    last = None

    def clip(a: int, b: int) -> tuple[int, int] | None:
        a, b = max(a, start_ms), min(b, end_ms)
        return (a, b) if a < b else None

    def close_all(at: int) -> None:
        for node, since in up.items():
            if (span := clip(since, at)) is not None:
                alive.append((node, *span))
        for (job, replica, node), since in holding.items():
            if (span := clip(since, at)) is not None:
                held.append((job, replica, node, *span))
        up.clear()
        holding.clear()

    for line in lines:
        try:
            event = json.loads(line)
            at = int(event["at"])
        except (ValueError, KeyError, TypeError):
            continue
        if last is not None and at - last > gap_ms:
            close_all(last)  # the oracle was not watching: nothing is known from its last sample on
        if event.get("watching"):
            if last is not None and at - last <= gap_ms and (span := clip(last, at)) is not None:
                watched.append(span)
            last = at
        for node in event.get("up", ()):
            up.setdefault(node, at)
        for node in event.get("down", ()):
            if (since := up.pop(node, None)) is not None and (span := clip(since, at)) is not None:
                alive.append((node, *span))
        for job, replica, node in event.get("held", ()):
            holding.setdefault((job, replica, node), at)
        for job, replica, node in event.get("released", ()):
            if (since := holding.pop((job, replica, node), None)) is not None \
                    and (span := clip(since, at)) is not None:
                held.append((job, replica, node, *span))
    if last is not None:
        close_all(last)
    return Replayed(tuple(sorted(alive)), tuple(sorted(held)), tuple(_merge(watched)))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def epoch_log(directory: Path, epoch: int) -> Path:
    return directory / f"epoch-{epoch}.jsonl"


class Watcher:
    """Samples an oracle's mesh participant and writes each epoch's log (module docstring)."""

    def __init__(self, node: Node, clock: EpochClock, directory: Path, *, sample_s: float = SAMPLE_S,
                 now_ms: Callable[[], int] | None = None) -> None:
        self.node, self.clock, self.dir, self.sample_s = node, clock, directory, sample_s
        self._now_ms = node.now_ms if now_ms is None else now_ms
        self._epoch: int | None = None
        self._up: set[str] = set()
        self._held: set[Held] = set()
        self._last_at: int | None = None  # the time of the last sample

    def view(self) -> tuple[set[str], set[Held]]:
        """The licensed nodes alive to the oracle (not suspect: module docstring), and each placed
        replica's holder, now."""
        up = {a for a, state in self.node.membership.peers().items()
              if state is PeerState.ALIVE and self.node.is_eligible(a)}
        held = {(job_id, replica, holder)
                for job_id, placed in assignments(self.node, placeable_jobs(self.node)).items()
                for replica, holder in placed.items()}
        return up, held

    def sample(self) -> None:
        """Append what changed since the last sample. A new epoch's log starts with the whole state;
        when the oracle was watching across the boundary, the state of its last sample carries over
        (written at that sample's time, and the old epoch's log gets this sample's time), so neither
        epoch loses the moments around the boundary."""
        now = self._now_ms()
        epoch = self.clock.epoch_at(now)
        up, held = self.view()
        if epoch != self._epoch:
            self.dir.mkdir(parents=True, exist_ok=True)
            carried = self._epoch is not None and self._last_at is not None and now - self._last_at <= GAP_MS
            if carried and self._epoch is not None and self._last_at is not None:
                self._write(self._epoch, [{"at": now, "watching": True}])
                self._write(epoch, [{"at": self._last_at, "watching": True},
                                    {"at": self._last_at, "up": sorted(self._up), "down": []},
                                    {"at": self._last_at, "held": sorted(self._held), "released": []}])
            else:
                self._up, self._held = set(), set()
            self._epoch = epoch
        lines: list[dict[str, object]] = [{"at": now, "watching": True}]
        if up != self._up:
            lines.append({"at": now, "up": sorted(up - self._up), "down": sorted(self._up - up)})
        if held != self._held:
            lines.append({"at": now, "held": sorted(held - self._held), "released": sorted(self._held - held)})
        self._write(epoch, lines)
        self._up, self._held, self._last_at = up, held, now

    def _write(self, epoch: int, lines: list[dict[str, object]]) -> None:
        with epoch_log(self.dir, epoch).open("a") as f:
            f.writelines(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.sample()
            await trio.sleep(self.sample_s)
