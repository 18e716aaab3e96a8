"""Every gossip validation outcome, with its [REJECT]/[IGNORE] reason counted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import keccak
from mesh._envelope import (
    DOMAIN,
    MAX_ENVELOPE_BYTES,
    SECP256K1_N,
    Envelope,
    canonical,
    recover_address,
    seal,
    signing_digest,
)
from mesh._identity import NodeIdentity
from mesh._validate import GossipState, Ignore, Reject, accept, check
from mesh._wire_capacity import TOPIC as CAPACITY
from mesh._wire_capacity import Capacity, Resources
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_heartbeat import Heartbeat

NOW = 1_800_000_000_000
ALICE = NodeIdentity(b"\xa1" * 32)
MALLORY = NodeIdentity(b"\x66" * 32)


def state(*eligible: NodeIdentity) -> GossipState:
    allowed = {i.address for i in eligible}
    return GossipState(now_ms=lambda: NOW, is_eligible=allowed.__contains__)


def beat(ident: NodeIdentity = ALICE, seq: int = 1, ts: int = NOW) -> Envelope:
    return seal(ident.private_key, HEARTBEAT, seq, ts, Heartbeat(interval_ms=1000, capacity_version=3, uptime_s=10))


def verdict(st: GossipState, raw: bytes, topic: str = HEARTBEAT) -> tuple[str, str]:
    with pytest.raises((Reject, Ignore)) as info:
        accept(st, topic, raw, Heartbeat)
    return type(info.value).__name__.upper(), info.value.reason


def test_a_good_heartbeat_is_accepted_once() -> None:
    st = state(ALICE)
    env, hb = accept(st, HEARTBEAT, beat().encode(), Heartbeat)
    assert (env.origin, hb.capacity_version) == (ALICE.address, 3)
    assert verdict(st, beat().encode()) == ("IGNORE", "replay")
    assert verdict(st, beat(seq=0 + 1).encode()) == ("IGNORE", "replay")
    accept(st, HEARTBEAT, beat(seq=2).encode(), Heartbeat)
    assert st.counters[(HEARTBEAT, "ACCEPT", "ok")] == 2
    assert st.counters[(HEARTBEAT, "IGNORE", "replay")] == 2


def test_each_reject_reason() -> None:
    st = state(ALICE)
    assert verdict(st, b"x" * (MAX_ENVELOPE_BYTES + 1)) == ("REJECT", "oversized")
    assert verdict(st, b"{not json") == ("REJECT", "malformed")
    assert verdict(st, beat().encode(), topic=CAPACITY) == ("REJECT", "wrong-topic")
    forged = beat().model_copy(update={"origin": MALLORY.address})  # claims another origin
    assert verdict(st, forged.encode()) == ("REJECT", "bad-signature")
    tampered = beat().model_copy(update={"payload": {"capacity_version": 4, "uptime_s": 10}})
    assert verdict(st, tampered.encode()) == ("REJECT", "bad-signature")
    assert verdict(st, beat(MALLORY).encode()) == ("REJECT", "unlicensed")
    odd = seal(ALICE.private_key, HEARTBEAT, 5, NOW, Heartbeat(interval_ms=1000, capacity_version=1, uptime_s=1))
    not_a_heartbeat = Resources(cpu_millis=1, memory_mb=1, gpus=0, disk_mb=1)
    bad_payload = seal(ALICE.private_key, HEARTBEAT, 6, NOW, not_a_heartbeat)
    assert verdict(st, bad_payload.encode()) == ("REJECT", "malformed-payload")
    accept(st, HEARTBEAT, odd.encode(), Heartbeat)
    for reason in ("oversized", "malformed", "bad-signature", "unlicensed", "malformed-payload"):
        assert st.counters[(HEARTBEAT, "REJECT", reason)] >= 1
    assert st.counters[(CAPACITY, "REJECT", "wrong-topic")] == 1


def test_clock_skew_is_ignored_both_ways() -> None:
    st = state(ALICE)
    assert verdict(st, beat(ts=NOW + 31_000).encode()) == ("IGNORE", "clock-skew")
    assert verdict(st, beat(ts=NOW - 31_000).encode()) == ("IGNORE", "clock-skew")
    accept(st, HEARTBEAT, beat(ts=NOW - 29_000).encode(), Heartbeat)


def test_a_rejected_message_does_not_advance_the_sequence() -> None:
    st = state(ALICE)
    accept(st, HEARTBEAT, beat(seq=10).encode(), Heartbeat)
    verdict(st, beat(seq=11, ts=NOW + 60_000).encode())
    accept(st, HEARTBEAT, beat(seq=11).encode(), Heartbeat)


def test_capacity_schema() -> None:
    total = Resources(cpu_millis=4000, memory_mb=8192, gpus=1, disk_mb=100_000)
    free = Resources(cpu_millis=1000, memory_mb=1024, gpus=0, disk_mb=50_000)
    cap = Capacity(version=7, total=total, free=free, tags=("gpu", "eu"))
    env = seal(ALICE.private_key, CAPACITY, 1, NOW, cap)
    _, decoded = accept(state(ALICE), CAPACITY, env.encode(), Capacity)
    assert decoded == cap
    with pytest.raises(ValueError, match="free resources exceed"):
        Capacity(version=1, total=free, free=total)
    with pytest.raises(ValueError, match="extra"):
        Heartbeat.model_validate({"capacity_version": 1, "uptime_s": 1, "evil": True})


def test_only_canonical_signatures_recover() -> None:
    env = beat()
    sig = bytes.fromhex(env.sig[2:])
    assert recover_address(env.signing_digest(), sig) == ALICE.address
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([1 - v])  # the malleable high-s twin
    assert recover_address(env.signing_digest(), twin) is None
    assert recover_address(env.signing_digest(), sig[:64] + b"\x1b") is None  # v must be 0 or 1
    assert recover_address(env.signing_digest(), sig[:64]) is None
    assert recover_address(env.signing_digest(), b"\x00" * 65) is None
    forged = env.model_copy(update={"sig": "0x" + twin.hex()})
    assert verdict(state(ALICE), forged.encode()) == ("REJECT", "bad-signature")


def test_a_synced_record_may_be_old_but_never_from_the_future() -> None:
    st = state(ALICE)
    old = beat(ts=NOW - 3_600_000).encode()
    env, _ = check(st, HEARTBEAT, old, Heartbeat, stale_ok=True)
    assert env.ts_ms == NOW - 3_600_000
    with pytest.raises(Ignore, match="clock-skew"):
        check(st, HEARTBEAT, beat(seq=2, ts=NOW + 31_000).encode(), Heartbeat, stale_ok=True)
    with pytest.raises(Ignore, match="clock-skew"):
        check(st, HEARTBEAT, old, Heartbeat)


def test_records_about_a_subject_are_ordered_by_seq_whoever_signed_them() -> None:
    # a job's records are relayed by the nodes that accepted them: one key per (topic, subject)
    st = state(ALICE, MALLORY)
    payload = Heartbeat(interval_ms=1000, capacity_version=3, uptime_s=10)
    first = seal(ALICE.private_key, HEARTBEAT, 5, NOW, payload, subject="job:7")
    assert first.key == (HEARTBEAT, "job:7")
    assert b'"subject":"job:7"' in first.encode()
    assert b"subject" not in beat().encode()  # a node's own record names no subject
    accept(st, HEARTBEAT, first.encode(), Heartbeat)
    older = seal(MALLORY.private_key, HEARTBEAT, 4, NOW, payload, subject="job:7")
    assert verdict(st, older.encode()) == ("IGNORE", "replay")
    accept(st, HEARTBEAT, seal(MALLORY.private_key, HEARTBEAT, 6, NOW, payload, subject="job:7").encode(), Heartbeat)
    accept(st, HEARTBEAT, seal(MALLORY.private_key, HEARTBEAT, 1, NOW, payload, subject="job:8").encode(), Heartbeat)
    moved = first.model_copy(update={"subject": "job:9"})  # the signature covers the subject
    assert verdict(st, moved.encode()) == ("REJECT", "bad-signature")
    with pytest.raises(ValueError, match="subject"):
        Envelope.model_validate_json(first.encode().replace(b"job:7", b"Job 7"))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4),
                     max_leaves=12)


@given(topic=st.text(min_size=1, max_size=20), seq=st.integers(1, 2**63 - 1), ts_ms=st.integers(0, 2**63 - 1),
       payload=st.dictionaries(st.text(max_size=8), _JSON, max_size=5),
       subject=st.sampled_from(["", "job:7", "job:12:0x" + "ab" * 20]))
def test_the_signing_digest_is_keccak_of_the_canonical_field_list(topic: str, seq: int, ts_ms: int,
                                                                  payload: dict[str, Any], subject: str) -> None:
    # assembled from the items' encodings (a receiver encodes the payload once): the same bytes
    # as the whole list encoded, which is what every node signed before
    fields: list[Any] = [topic, ALICE.address, seq, ts_ms, payload]
    expected = keccak(DOMAIN + canonical([*fields, subject] if subject else fields))
    assert signing_digest(topic, ALICE.address.lower(), seq, ts_ms, payload, subject) == expected
    assert signing_digest(topic, ALICE.address, seq, ts_ms, payload, subject, canonical(payload)) == expected
