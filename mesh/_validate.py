"""Gossip validation, written like a spec: each check says whether a failure is ``[REJECT]`` (the
sender misbehaved: penalize and do not forward) or ``[IGNORE]`` (not useful now: drop quietly).

Validators are synchronous (py-libp2p's async validators let duplicates through, see
shared/notes/libp2p.md §4) and pure: the caller passes the clock and the license view in
``GossipState``. One adapter (in the transport) turns the outcome into py-libp2p's boolean and
counts the reasons.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ._envelope import MAX_ENVELOPE_BYTES, Envelope, canonical

M = TypeVar("M", bound=BaseModel)


class GossipVerdict(Exception):
    """Base of the two outcomes; ``reason`` is a short stable label used by the counters."""

    verdict = ""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"[{self.verdict}] {reason}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.detail = detail


class Reject(GossipVerdict):
    verdict = "REJECT"


class Ignore(GossipVerdict):
    verdict = "IGNORE"


@dataclass
class GossipState:
    """What validation needs to know; owned by the node, read here."""

    now_ms: Callable[[], int]
    is_eligible: Callable[[str], bool]  # licensed, linked and not banned (cached license view)
    max_skew_ms: int = 30_000  # clocks of honest nodes agree within seconds; beyond this is stale or forged
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)  # Envelope.key -> highest accepted seq
    counters: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)


def decode_envelope(raw: bytes) -> Envelope:
    """Decode wire bytes; every failure is a ``Reject``."""
    # [REJECT] the message is larger than any valid message can be
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise Reject("oversized", f"{len(raw)} bytes > {MAX_ENVELOPE_BYTES}")
    # [REJECT] the bytes are not a well-formed envelope
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise Reject("malformed", exc.errors()[0]["msg"]) from exc


def validate_envelope(state: GossipState, topic: str, env: Envelope, *, stale_ok: bool = False,
                      payload_json: bytes | None = None) -> None:
    """Check an envelope received on ``topic``; raise ``Reject`` or ``Ignore``. ``stale_ok``: the
    message is a state record (the latest of its origin, relayed by sync), not an event."""
    # [REJECT] the envelope names another topic than the one it arrived on
    if env.topic != topic:
        raise Reject("wrong-topic", f"{env.topic} on {topic}")
    # [REJECT] the signature does not recover to the claimed origin
    if env.recover_origin(payload_json) != env.origin:
        raise Reject("bad-signature", env.origin)
    # [REJECT] the origin is not a licensed, linked, unbanned node
    if not state.is_eligible(env.origin):
        raise Reject("unlicensed", env.origin)
    # [IGNORE] the timestamp is too far from our clock: ahead (a badly skewed clock), or behind
    # (stale) for messages that must be fresh; a synced record may be old, its seq orders it
    skew = env.ts_ms - state.now_ms()
    if skew > state.max_skew_ms or (not stale_ok and skew < -state.max_skew_ms):
        raise Ignore("clock-skew", f"{skew} ms")
    # [IGNORE] we already accepted this origin's (or subject's) message with this or a later seq
    key = env.key
    if env.seq <= state.last_seq.get(key, 0):
        raise Ignore("replay", f"seq {env.seq} <= {state.last_seq[key]}")


def decode_payload(model: type[M], env: Envelope, payload_json: bytes | None = None) -> M:
    """The envelope's payload as the topic's model; a mismatch is a ``Reject``."""
    # [REJECT] the payload does not fit the topic's schema
    try:
        # JSON mode: arrays may become tuples
        return model.model_validate_json(canonical(env.payload) if payload_json is None else payload_json)
    except ValidationError as exc:
        raise Reject("malformed-payload", exc.errors()[0]["msg"]) from exc


def check(state: GossipState, topic: str, raw: bytes, model: type[M], *, stale_ok: bool = False,
          ) -> tuple[Envelope, M]:
    """Decode and validate a message without recording it: what the transport's validator runs
    before a message is forwarded. Rejections and ignores are counted."""
    try:
        env = decode_envelope(raw)
        payload_json = canonical(env.payload)  # once, for the signature and the model
        validate_envelope(state, topic, env, stale_ok=stale_ok, payload_json=payload_json)
        payload = decode_payload(model, env, payload_json)
    except GossipVerdict as verdict:
        state.counters[(topic, verdict.verdict, verdict.reason)] += 1
        raise
    return env, payload


def record(state: GossipState, topic: str, env: Envelope) -> bool:
    """Accept a checked envelope for delivery: False (counted as a replay) if a message with this
    or a later sequence number from the same origin (or about the same subject) was delivered
    meanwhile."""
    key = env.key
    # [IGNORE] a copy of this message (or a later one) was delivered since it was checked
    if env.seq <= state.last_seq.get(key, 0):
        state.counters[(topic, "IGNORE", "replay")] += 1
        return False
    state.last_seq[key] = env.seq
    state.counters[(topic, "ACCEPT", "ok")] += 1
    return True


def accept(state: GossipState, topic: str, raw: bytes, model: type[M]) -> tuple[Envelope, M]:
    """Check and record in one step; a replay raises ``Ignore``."""
    env, payload = check(state, topic, raw, model)
    if not record(state, topic, env):
        raise Ignore("replay", f"seq {env.seq}")
    return env, payload
