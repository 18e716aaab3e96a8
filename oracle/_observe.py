"""One oracle's observation of one epoch, from what it recorded: each node's availability, who
held each replica for how long, and for how much of that time the holder was seen alive. Pure:
intervals in, integers out; no clock, no I/O.

Inputs are intervals in ms on the oracle's clock (``_watch.replay`` produces them): the epoch
``[start_ms, end_ms)``; ``watched``, the spans in which the oracle was actually watching; ``alive``,
``(node, from_ms, to_ms)`` spans in which it saw the node's signed liveness within the tolerance;
``held``, ``(job, replica, node, from_ms, to_ms)`` spans in which the node held the winning claim.
Spans may overlap or spill outside the epoch: each is clipped to the epoch and to what was watched
(nothing is known of the time the oracle did not watch), and merged.

Rules (every oracle applies the same ones, so honest oracles that saw the same thing agree):

- **availability** = ``floor(255 * alive_ms / epoch_ms)``, per node over the whole epoch. Unwatched
  time counts as not seen alive: an oracle never reports more than it saw (a node it saw for all it
  watched of a 95 %-covered epoch gets 242, and the median over the other oracles decides). It is
  for auditors and displays; money is judged on the tenure (SETTLEMENT.md rule 2, below).
- **tenure** of (job, replica, node) = the ms it held the replica within the watched epoch. At any
  instant a replica has at most one holder: where the input has two, the one whose span started
  first keeps the instant (the incumbent: a claim is only taken over once it lapses), ties going to
  the lower node address. So a replica's tenures never sum above the epoch length.
- **alive in tenure** of (job, replica, node) = the ms of that tenure in which the node was also
  seen alive (its alive spans intersected with the instants it held the replica). Never above the
  tenure. A node's share of the slot is judged by ``compute_tenure_availability`` of the two:
  a node that served its tenure well and then died is judged on the tenure alone; a holder whose
  beats stopped arriving while it kept the claim is judged on exactly that time.
- **coverage**: the ms of the epoch the oracle watched. Below ``MIN_COVERAGE_BPS`` of the epoch the
  observation is incomplete and aggregation does not use it: an oracle restarted mid-epoch abstains
  honestly instead of reporting every node as down for the time it was away.

Node addresses come out lower-case (one spelling, and cheap to normalize for 10,000 nodes); entries
with zero availability or zero tenure are left out (absent means zero). A tenure entry with zero
alive-in-tenure is kept: that is what withholds or burns the holder's share.
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
TenureEntry = tuple[int, int, str, int, int]  # (job, replica, node, tenure_ms, alive_ms)


@dataclass(frozen=True)
class Observed:
    """What one oracle saw of ``[start_ms, end_ms)``: sorted ``(node, availability)`` and
    ``(job, replica, node, tenure_ms, alive_ms)`` entries (``alive_ms``: of the tenure, the ms the
    node was seen alive), and the ms of the epoch it watched."""

    start_ms: int
    end_ms: int
    coverage_ms: int
    availability: tuple[tuple[str, int], ...]
    tenure: tuple[TenureEntry, ...]

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


def compute_tenure_availability(alive_ms: int, tenure_ms: int) -> int:
    """A holder's availability during its tenure (SETTLEMENT.md rule 2): ``floor(255 * alive_ms /
    tenure_ms)``, 0 for no tenure, for ``0 <= alive_ms <= tenure_ms``."""
    if tenure_ms == 0 and alive_ms == 0:
        return 0
    return compute_availability(alive_ms, tenure_ms)


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


def compute_tenure_spans(held: Iterable[tuple[str, int, int]]) -> dict[str, list[Span]]:
    """One replica's instants per node from its ``(node, from_ms, to_ms)`` spans, overlaps resolved
    for the incumbent (module docstring): each instant goes to the span covering it that started
    first, ties to the lower node address. Equivalently, sweeping the spans in that order, a span
    counts only from where every earlier span has ended. Each node's spans come merged."""
    pieces: dict[str, list[Span]] = defaultdict(list)
    covered_until: int | None = None
    for node, a, b in sorted(held, key=lambda s: (s[1], s[0], s[2])):
        start = a if covered_until is None else max(a, covered_until)
        if start < b:
            pieces[node].append((start, b))
        covered_until = b if covered_until is None else max(covered_until, b)
    return {node: merge_spans(spans) for node, spans in pieces.items()}


def compute_tenures(held: Iterable[tuple[str, int, int]]) -> dict[str, int]:
    """One replica's tenure (ms) per node: the length of its ``compute_tenure_spans``."""
    return {node: _length(spans) for node, spans in compute_tenure_spans(held).items()}


def compute_observation(start_ms: int, end_ms: int, *, watched: Iterable[Span], alive: Iterable[AliveSpan],
                        held: Iterable[HeldSpan]) -> Observed:
    """The oracle's observation of the epoch ``[start_ms, end_ms)`` (module docstring)."""
    epoch_ms = end_ms - start_ms
    if epoch_ms <= 0:
        raise ValueError("an epoch needs end_ms > start_ms")
    seen = intersect_spans(merge_spans(watched), [(start_ms, end_ms)])

    alive_raw: dict[str, list[Span]] = defaultdict(list)
    for node, a, b in alive:
        alive_raw[node.lower()].append((a, b))
    alive_by_node = {node: intersect_spans(merge_spans(spans), seen) for node, spans in alive_raw.items()}
    availability = []
    for node, spans in alive_by_node.items():
        if a := compute_availability(_length(spans), epoch_ms):
            availability.append((node, a))

    held_by_replica: dict[tuple[int, int], list[tuple[str, int, int]]] = defaultdict(list)
    for job, replica, node, a, b in held:
        for clipped in intersect_spans([(a, b)] if a < b else [], seen):
            held_by_replica[(job, replica)].append((node.lower(), *clipped))
    tenure: list[TenureEntry] = []
    for (job, replica), holders in held_by_replica.items():
        for node, owned in compute_tenure_spans(holders).items():
            alive_ms = _length(intersect_spans(owned, alive_by_node.get(node, [])))
            tenure.append((job, replica, node, _length(owned), alive_ms))
    return Observed(start_ms=start_ms, end_ms=end_ms, coverage_ms=_length(seen),
                    availability=tuple(sorted(availability)), tenure=tuple(sorted(tenure)))
