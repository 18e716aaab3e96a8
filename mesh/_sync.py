"""Neighbour sync: how heartbeats and capacity reach every node without costing N² messages.

Each node keeps the freshest signed record of each kind from each origin (``RecordStore``) and
sends its direct neighbours, in one frame, the records they do not have yet. A record hops
neighbour to neighbour, verified once per node; a node sends one frame per neighbour per wave
instead of relaying every peer's heartbeat as a gossipsub message of its own. Heartbeats are
aligned to the wall clock, so the records of one interval travel together as one wave.

Cost, measured on these machines (BENCHMARKS.md): a direct-stream frame costs ~0.8 ms of CPU in
py-libp2p against ~6.5 ms for one gossipsub message, and a frame carries every record a
neighbour lacks. Per node and interval: a few frames per neighbour, plus one signature check per
origin; no per-origin messages.

What a neighbour is known to hold is tracked per neighbour: what we sent it and what it sent us.
A new (or reconnected) neighbour knows nothing, so it gets the full state in its first frame; so
does a neighbour whose beats show it restarted (``Node``: its connection may come back before a
tick sees it gone).
Frames are records (canonical JSON envelopes, which contain no newline) joined by newlines.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PROTOCOL = "/deedmesh/sync/1"
MAX_FRAME_BYTES = 1 << 20  # ~3,000 records of ~300 bytes: a frame never needs to be bigger

Key = tuple[str, str]  # (topic, owner): the owner is the record's subject, else its lower-case origin


@dataclass(frozen=True)
class Peek:
    """The routing fields of a record, read without validating it (validation comes after)."""

    topic: str
    origin: str
    seq: int
    subject: str = ""

    @property
    def owner(self) -> str:
        """What the record is about: its subject (a job), else its origin (a node's own state)."""
        return self.subject or self.origin


_ORIGIN = b'{"origin":"'  # a canonical envelope starts with its origin ...
_SEQ = b',"seq":'  # ... and its keys after the payload (seq, sig, subject, topic, ts_ms) end it


def peek(raw: bytes) -> Peek | None:
    """Topic, origin, sequence and subject of a raw record, cheaply; None if it is not even shaped
    like one. A canonical envelope (sorted keys) is read from its first 53 bytes and the ~250
    after its payload, not parsed whole: a node reads every copy of every record its neighbours
    relay, and most copies are duplicates (a full parse of a 10 KiB claim set took ~0.1 ms).
    Anything else is parsed whole. Nothing here is trusted: the record is checked before use."""
    obj = None
    if raw.startswith(_ORIGIN) and raw[53:55] == b'",' and (at := raw.rfind(_SEQ)) > 0:
        try:
            obj = json.loads(b"{" + raw[at + 1:])
            obj["origin"] = raw[11:53].decode()
        except (ValueError, TypeError):
            obj = None
    try:
        if not isinstance(obj, dict):
            obj = json.loads(raw)
        topic, origin, seq, subject = obj["topic"], obj["origin"], obj["seq"], obj.get("subject", "")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not (isinstance(topic, str) and isinstance(origin, str) and type(seq) is int and isinstance(subject, str)):
        return None
    return Peek(topic, origin.lower(), seq, subject)


def encode_frames(records: list[bytes], limit: int = MAX_FRAME_BYTES) -> list[bytes]:
    """Join records into frames of at most ``limit`` bytes (a record never exceeds it)."""
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for record in records:
        if batch and size + 1 + len(record) > limit:
            frames.append(b"\n".join(batch))
            batch, size = [], 0
        batch.append(record)
        size += len(record) + (1 if size else 0)
    if batch:
        frames.append(b"\n".join(batch))
    return frames


def decode_frame(frame: bytes) -> list[bytes]:
    return [r for r in frame.split(b"\n") if r]


@dataclass
class RecordStore:
    """The freshest record per (topic, owner), what each neighbour is known to hold, and what it
    still lacks (kept incrementally: a wave touches each record once per neighbour, never the
    whole store). The owner is an origin (keyed lower-case, so a checksummed and a plain address
    are one) or a record's subject (a job's records, whichever node signed them)."""

    latest: dict[Key, tuple[int, bytes]] = field(default_factory=dict)
    known: dict[str, dict[Key, int]] = field(default_factory=dict)  # neighbour -> key -> seq it holds
    pending: dict[str, set[Key]] = field(default_factory=dict)  # neighbour -> keys it lacks
    # the records held, by their bytes: most copies a neighbour relays are of records held already
    # (each job record reaches a node ~7 times), and a dict lookup of the bytes (~1 µs) tells so
    # without reading their routing fields (``peek``: ~9 µs, 3-4x that on a loaded host)
    by_raw: dict[bytes, tuple[Key, int]] = field(default_factory=dict)

    def seq_of(self, topic: str, origin: str) -> int:
        held = self.latest.get((topic, origin.lower()))
        return held[0] if held else 0

    def put(self, topic: str, origin: str, seq: int, raw: bytes) -> bool:
        """Keep ``raw`` if it is fresher than what we hold; True if it was."""
        key = (topic, origin.lower())
        if seq <= self.seq_of(*key):
            return False
        replaced = self.latest.get(key)
        if replaced is not None:
            self.by_raw.pop(replaced[1], None)
        self.latest[key] = (seq, raw)
        self.by_raw[raw] = (key, seq)
        for neighbour, held in self.known.items():
            if held.get(key, 0) < seq:
                self.pending[neighbour].add(key)
        return True

    def held(self, raw: bytes) -> tuple[Key, int] | None:
        """The key and seq of ``raw`` if these very bytes are a record held now."""
        return self.by_raw.get(raw)

    def add_neighbour(self, neighbour: str) -> None:
        """A new (or reconnected) neighbour: it lacks everything until it says otherwise."""
        if neighbour not in self.known:
            self.known[neighbour] = {}
            self.pending[neighbour] = set(self.latest)

    def holds(self, neighbour: str, topic: str, origin: str, seq: int) -> None:
        """``neighbour`` has this record (it sent it to us)."""
        self.add_neighbour(neighbour)
        held = self.known[neighbour]
        key = (topic, origin.lower())
        if seq > held.get(key, 0):
            held[key] = seq
        if held[key] >= self.seq_of(*key):
            self.pending[neighbour].discard(key)

    def delta(self, neighbour: str) -> list[tuple[Key, int, bytes]]:
        """The records ``neighbour`` lacks, now marked as held by it (``unsend`` them if the send
        fails)."""
        self.add_neighbour(neighbour)
        held, out = self.known[neighbour], []
        for key in self.pending[neighbour]:
            seq, raw = self.latest[key]
            out.append((key, held.get(key, 0), raw))
            held[key] = seq
        self.pending[neighbour] = set()
        return out

    def unsend(self, neighbour: str, sent: list[tuple[Key, int, bytes]]) -> None:
        """A send failed: ``neighbour`` lacks these records again (and only these)."""
        held = self.known.get(neighbour)
        if held is None:
            return
        for key, before, _ in sent:
            if key in self.latest:
                held[key] = before
                self.pending[neighbour].add(key)

    def lacks(self, neighbour: str) -> bool:
        return bool(self.pending.get(neighbour, self.latest))

    def drop_neighbour(self, neighbour: str) -> None:
        self.known.pop(neighbour, None)
        self.pending.pop(neighbour, None)

    def drop_origin(self, origin: str) -> None:
        """Stop holding and relaying an origin's records (it was banned, or is long dead)."""
        for key in [k for k in self.latest if k[1] == origin.lower()]:
            self.by_raw.pop(self.latest.pop(key)[1], None)
            for lacking in self.pending.values():
                lacking.discard(key)


@dataclass
class TokenBucket:
    """A token bucket per key: up to ``burst`` at once, then ``rate`` a second. Times are the
    caller's clock, in seconds.

    It paces sync frames per neighbour (``Node``): news goes out at once on a quiet link, so a hop
    costs no batching delay; when news pours in (a burst of submissions), frames to one neighbour
    come at most ``rate`` a second and each carries everything that piled up meanwhile. Without
    it, each of 1,000 jobs left every node as a frame of its own to each neighbour, and the
    frames' CPU starved the heartbeats (BENCHMARKS.md "Placement"). It also bounds the job
    submissions a node takes over libp2p (``_api``).
    """

    rate: float
    burst: float
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at)

    def _now_tokens(self, key: str, now: float) -> float:
        tokens, at = self._tokens.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def wait_s(self, key: str, now: float) -> float:
        """How long until ``key`` may spend a token."""
        return max(0.0, (1 - self._now_tokens(key, now)) / self.rate)

    def spend(self, key: str, now: float) -> None:
        """``key`` spent a token at ``now`` (a frame went out, a submission was taken)."""
        self._tokens[key] = (self._now_tokens(key, now) - 1, now)

    def drop(self, key: str) -> None:
        self._tokens.pop(key, None)
