"""One oracle's observation of one epoch, from what it recorded: each node's availability and who
held each replica for how long. Pure: intervals in, integers out; no clock, no I/O.

Inputs are intervals in ms on the oracle's clock (``_watch.replay`` produces them): the epoch
``[start_ms, end_ms)``; ``watched``, the spans in which the oracle was actually watching; ``alive``,
``(node, from_ms, to_ms)`` spans in which it saw the node's signed liveness within the tolerance;
``held``, ``(job, replica, node, from_ms, to_ms)`` spans in which the node held the winning claim.
Spans may overlap or spill outside the epoch: each is clipped to the epoch and to what was watched
(nothing is known of the time the oracle did not watch), and merged.

Rules (every oracle applies the same ones, so honest oracles that saw the same thing agree):

- **availability** = ``floor(255 * alive_ms / epoch_ms)``. Unwatched time counts as not seen alive:
  an oracle never reports more than it saw (a node it saw for all it watched of a 95 %-covered
  epoch gets 242, and the median over the other oracles decides).
- **tenure** of (job, replica, node) = the ms it held the replica within the watched epoch. At any
  instant a replica has at most one holder: where the input has two, the one whose span started
  first keeps the instant (the incumbent: a claim is only taken over once it lapses), ties going to
  the lower node address. So a replica's tenures never sum above the epoch length.
- **coverage**: the ms of the epoch the oracle watched. Below ``MIN_COVERAGE_BPS`` of the epoch the
  observation is incomplete and aggregation does not use it: an oracle restarted mid-epoch abstains
  honestly instead of reporting every node as down for the time it was away.

Node addresses come out lower-case (one spelling, and cheap to normalize for 10,000 nodes); entries
with zero availability or zero tenure are left out (absent means zero).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from contracts import AVAILABILITY_MAX, BPS_DENOMINATOR

# 90 %: an oracle that missed more than a tenth of the epoch knows too little of it to vote; a
# restart (resume from the log, reconnect to the mesh) costs seconds of an hours-long epoch.
MIN_COVERAGE_BPS = 9_000

Span = tuple[int, int]
AliveSpan = tuple[str, int, int]  # (node, from_ms, to_ms)
HeldSpan = tuple[int, int, str, int, int]  # (job, replica, node, from_ms, to_ms)
TenureKey = tuple[int, int, str]  # (job, replica, node)


@dataclass(frozen=True)
class Observed:
    """What one oracle saw of ``[start_ms, end_ms)``: sorted ``(node, availability)`` and
    ``(job, replica, node, tenure_ms)`` entries, and the ms of the epoch it watched."""

    start_ms: int
    end_ms: int
    coverage_ms: int
    availability: tuple[tuple[str, int], ...]
    tenure: tuple[tuple[int, int, str, int], ...]

    @property
    def complete(self) -> bool:
        return is_complete(self.coverage_ms, self.end_ms - self.start_ms)


def is_complete(coverage_ms: int, epoch_ms: int) -> bool:
    """Whether an oracle that watched ``coverage_ms`` of an ``epoch_ms`` epoch may vote."""
    return coverage_ms * BPS_DENOMINATOR >= MIN_COVERAGE_BPS * epoch_ms


def compute_availability(alive_ms: int, epoch_ms: int) -> int:
    """``floor(255 * alive_ms / epoch_ms)``, for ``0 <= alive_ms <= epoch_ms``."""
    if epoch_ms <= 0 or not 0 <= alive_ms <= epoch_ms:
        raise ValueError("need 0 <= alive_ms <= epoch_ms and a non-empty epoch")
    return AVAILABILITY_MAX * alive_ms // epoch_ms


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint, non-touching spans covering the same instants (empty spans dropped)."""
    out: list[Span] = []
    for a, b in sorted(s for s in spans if s[0] < s[1]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def intersect_spans(spans: list[Span], within: list[Span]) -> list[Span]:
    """The instants of merged ``spans`` that also lie in merged ``within`` (both sorted, disjoint)."""
    out: list[Span] = []
    i = j = 0
    while i < len(spans) and j < len(within):
        a, b = max(spans[i][0], within[j][0]), min(spans[i][1], within[j][1])
        if a < b:
            out.append((a, b))
        if spans[i][1] < within[j][1]:
            i += 1
        else:
            j += 1
    return out


def _length(spans: Iterable[Span]) -> int:
    return sum(b - a for a, b in spans)


def compute_tenures(held: Iterable[tuple[str, int, int]]) -> dict[str, int]:
    """One replica's tenure per node from its ``(node, from_ms, to_ms)`` spans, overlaps resolved
    for the incumbent (module docstring): each instant goes to the span covering it that started
    first, ties to the lower node address. Equivalently, sweeping the spans in that order, a span
    counts only from where every earlier span has ended."""
    tenures: dict[str, int] = defaultdict(int)
    covered_until: int | None = None
    for node, a, b in sorted(held, key=lambda s: (s[1], s[0], s[2])):
        start = a if covered_until is None else max(a, covered_until)
        if start < b:
            tenures[node] += b - start
        covered_until = b if covered_until is None else max(covered_until, b)
    return {node: ms for node, ms in tenures.items() if ms > 0}


def compute_observation(start_ms: int, end_ms: int, *, watched: Iterable[Span], alive: Iterable[AliveSpan],
                        held: Iterable[HeldSpan]) -> Observed:
    """The oracle's observation of the epoch ``[start_ms, end_ms)`` (module docstring)."""
    epoch_ms = end_ms - start_ms
    if epoch_ms <= 0:
        raise ValueError("an epoch needs end_ms > start_ms")
    seen = intersect_spans(merge_spans(watched), [(start_ms, end_ms)])

    alive_by_node: dict[str, list[Span]] = defaultdict(list)
    for node, a, b in alive:
        alive_by_node[node.lower()].append((a, b))
    availability = []
    for node, spans in alive_by_node.items():
        a = compute_availability(_length(intersect_spans(merge_spans(spans), seen)), epoch_ms)
        if a:
            availability.append((node, a))

    held_by_replica: dict[tuple[int, int], list[tuple[str, int, int]]] = defaultdict(list)
    for job, replica, node, a, b in held:
        for clipped in intersect_spans([(a, b)] if a < b else [], seen):
            held_by_replica[(job, replica)].append((node.lower(), *clipped))
    tenure = [(job, replica, node, ms) for (job, replica), spans in held_by_replica.items()
              for node, ms in compute_tenures(spans).items()]
    return Observed(start_ms=start_ms, end_ms=end_ms, coverage_ms=_length(seen),
                    availability=tuple(sorted(availability)), tenure=tuple(sorted(tenure)))
