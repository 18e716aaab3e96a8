"""The record store and frame codec of neighbour sync: deltas per neighbour, freshness, framing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh._envelope import canonical, seal
from mesh._identity import NodeIdentity
from mesh._sync import Peek, RecordStore, TokenBucket, decode_frame, encode_frames, peek
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_heartbeat import Heartbeat

A, B = NodeIdentity(b"\x11" * 32), NodeIdentity(b"\x12" * 32)


def beat(ident: NodeIdentity, seq: int) -> bytes:
    return seal(ident.private_key, HEARTBEAT, seq, seq, Heartbeat(interval_ms=1000, capacity_version=1,
                                                                 uptime_s=0)).encode()


def raws(sent: list[tuple[tuple[str, str], int, bytes]]) -> list[bytes]:
    return sorted(raw for _, _, raw in sent)


def test_a_neighbour_gets_only_what_it_lacks() -> None:
    store = RecordStore()
    assert store.put(HEARTBEAT, A.address, 5, beat(A, 5))
    assert not store.put(HEARTBEAT, A.address.lower(), 5, beat(A, 5))  # same origin, any case
    assert store.put(HEARTBEAT, B.address, 7, beat(B, 7))
    assert store.lacks("n1")
    assert raws(store.delta("n1")) == sorted([beat(A, 5), beat(B, 7)])
    assert not store.lacks("n1")
    assert store.delta("n1") == []
    store.put(HEARTBEAT, A.address, 6, beat(A, 6))
    assert store.lacks("n1")
    sent = store.delta("n1")
    assert raws(sent) == [beat(A, 6)]
    store.unsend("n1", sent)  # that send failed: only that record goes again
    assert raws(store.delta("n1")) == [beat(A, 6)]
    store.add_neighbour("n2")
    store.holds("n2", HEARTBEAT, B.address, 9)  # n2 told us of a fresher one than we hold
    assert raws(store.delta("n2")) == [beat(A, 6)]
    store.drop_neighbour("n1")  # gone: when it is back, it gets everything
    assert len(store.delta("n1")) == 2
    store.drop_origin(A.address)
    assert store.seq_of(HEARTBEAT, A.address) == 0
    assert raws(store.delta("n3")) == [beat(B, 7)]
    store.put(HEARTBEAT, A.address, 8, beat(A, 8))
    store.holds("n3", HEARTBEAT, A.address, 8)  # it got it elsewhere before we sent it
    assert not store.lacks("n3")



def test_the_store_knows_its_records_by_their_bytes_and_forgets_replaced_ones() -> None:
    store = RecordStore()
    store.put(HEARTBEAT, A.address, 5, beat(A, 5))
    store.put(HEARTBEAT, B.address, 7, beat(B, 7))
    assert store.held(beat(A, 5)) == ((HEARTBEAT, A.address.lower()), 5)  # equal bytes, another object
    assert store.held(beat(A, 4)) is None  # never held
    store.put(HEARTBEAT, A.address, 6, beat(A, 6))
    assert store.held(beat(A, 5)) is None  # replaced: a copy of it is a replay now, not a duplicate
    assert store.held(beat(A, 6)) == ((HEARTBEAT, A.address.lower()), 6)
    assert not store.put(HEARTBEAT, A.address, 6, beat(A, 5))  # not fresher: nothing changes
    assert store.held(beat(A, 6)) is not None
    store.drop_origin(A.address)
    assert store.held(beat(A, 6)) is None
    assert set(store.by_raw) == {beat(B, 7)}


def test_frames_split_at_the_limit_and_round_trip() -> None:
    records = [beat(A, n) for n in range(1, 40)]
    frames = encode_frames(records, limit=2000)
    assert len(frames) > 1
    assert all(len(f) <= 2000 for f in frames)
    assert [r for f in frames for r in decode_frame(f)] == records
    assert encode_frames([]) == []


def test_peek_reads_routing_fields_or_refuses() -> None:
    head = peek(beat(A, 3))
    assert head is not None
    assert (head.topic, head.origin, head.seq) == (HEARTBEAT, A.address.lower(), 3)
    for bad in (b"not json", b"[]", b'{"topic": 1, "origin": "x", "seq": 1}', b'{"topic": "t", "origin": "x"}',
                b'{"topic": "t", "origin": "x", "seq": true}'):
        assert peek(bad) is None


def test_the_pacer_lets_a_burst_through_then_paces_and_refills() -> None:
    pacer = TokenBucket(rate=10.0, burst=3.0)
    for _ in range(3):  # a quiet link: news goes at once
        assert pacer.wait_s("a", 0.0) == 0.0
        pacer.spend("a", 0.0)
    assert pacer.wait_s("a", 0.0) == pytest.approx(0.1)  # then one frame every 1/rate
    assert pacer.wait_s("b", 0.0) == 0.0  # per neighbour
    assert pacer.wait_s("a", 0.1) == pytest.approx(0.0)
    pacer.spend("a", 0.1)
    assert pacer.wait_s("a", 0.15) == pytest.approx(0.05)
    assert pacer.wait_s("a", 10.0) == 0.0  # refilled, but never above the burst
    for _ in range(3):
        pacer.spend("a", 10.0)
    assert pacer.wait_s("a", 10.0) == pytest.approx(0.1)
    pacer.drop("a")  # a reconnected neighbour starts with a full bucket
    assert pacer.wait_s("a", 10.0) == 0.0


@given(seq=st.integers(1, 2**63 - 1), subject=st.sampled_from(["", "job:7:0x" + "ab" * 20, "job:12"]),
       nested=st.dictionaries(st.sampled_from(["seq", "topic", "origin", "a"]), st.integers(0, 9), max_size=4))
def test_peek_of_a_canonical_record_reads_only_its_ends_and_agrees_with_a_full_parse(
        seq: int, subject: str, nested: dict[str, int]) -> None:
    # a payload may itself hold keys named like the envelope's ("seq" included)
    raw = canonical({"origin": A.address, "payload": {"x": nested, "seq": 5}, "seq": seq, "sig": "0x" + "1" * 130,
                     **({"subject": subject} if subject else {}), "topic": "t/1", "ts_ms": 1})
    whole = json.loads(raw)
    expected = Peek(whole["topic"], whole["origin"].lower(), whole["seq"], whole.get("subject", ""))
    assert peek(raw) == expected
    spaced = json.dumps(whole, indent=1).encode()  # not canonical: parsed whole, same answer
    assert peek(spaced) == expected
