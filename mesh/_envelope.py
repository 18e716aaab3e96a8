"""The signed envelope every gossip message travels in.

An envelope carries its topic, its origin (the node's Ethereum address), a per-origin sequence
number, a timestamp and the topic's payload, signed by the origin's node key (on top of libp2p's
own message signing, so the origin is proven whoever forwarded it). Sequence numbers are
``max(last + 1, now_ms)``: monotonic within a process and still increasing after a restart, so
receivers can drop replays by keeping one number per origin.

Encoding is canonical JSON (sorted keys, no spaces) with the signature over
``keccak(DOMAIN || topic || origin || seq || ts_ms || payload)``; decoding checks the size first,
then the shape, then the signature. Pure apart from the signing primitives.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import coincurve
from eth_keys import keys
from eth_keys.datatypes import PrivateKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts import keccak, to_checksum_address

DOMAIN = b"deedmesh/gossip/1\x00"

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MAX_ENVELOPE_BYTES = 16 * 1024  # heartbeats and capacity are < 1 KiB; job specs stay well under


class Payload(BaseModel):
    """Base of every topic's payload: frozen, strict, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Envelope(BaseModel):
    """A signed gossip message as it is on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    topic: str = Field(min_length=1, max_length=64)
    origin: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    # what the record is about when it is not its origin (a job: "job:7"); "" = the origin itself.
    # seq orders the records of one (topic, subject), whichever node signed them
    subject: str = Field(default="", max_length=100, pattern=r"^([a-z]+:[0-9]+(:0x[0-9a-f]{40})?)?$")
    seq: int = Field(ge=1, lt=2**63)
    ts_ms: int = Field(ge=0, lt=2**63)
    payload: dict[str, Any]
    sig: str = Field(pattern=r"^0x[0-9a-f]{130}$")

    @field_validator("origin")
    @classmethod
    def _checksummed(cls, v: str) -> str:
        return to_checksum_address(v)

    def signing_digest(self, payload_json: bytes | None = None) -> bytes:
        return signing_digest(self.topic, self.origin, self.seq, self.ts_ms, self.payload, self.subject, payload_json)

    @property
    def key(self) -> tuple[str, str]:
        """The record's identity: its topic and what it is about (the lower-case origin by default)."""
        return (self.topic, self.subject or self.origin.lower())

    def recover_origin(self, payload_json: bytes | None = None) -> str | None:
        """The address that signed this envelope, or None if the signature is unusable
        (``payload_json``: see ``signing_digest``)."""
        return recover_address(self.signing_digest(payload_json), bytes.fromhex(self.sig[2:]))

    def encode(self) -> bytes:
        return canonical(self.model_dump(exclude_defaults=True))  # no subject: the origin's own record


def canonical(value: Any) -> bytes:
    """Canonical JSON: what is signed and what is sent."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signing_digest(topic: str, origin: str, seq: int, ts_ms: int, payload: dict[str, Any], subject: str = "",
                   payload_json: bytes | None = None) -> bytes:
    """``keccak(DOMAIN || canonical([topic, origin, seq, ts_ms, payload(, subject)]))``;
    ``payload_json``: ``canonical(payload)`` if the caller has it (a receiver encodes the payload
    once for this and for its model: canonical JSON was ~10 % of a loaded node's samples). The
    list is assembled from its items' encodings, which is what ``json.dumps`` writes (tested)."""
    head = canonical([topic, to_checksum_address(origin), seq, ts_ms])
    body = canonical(payload) if payload_json is None else payload_json
    tail = b"," + canonical(subject) if subject else b""
    return keccak(DOMAIN + head[:-1] + b"," + body + tail + b"]")


def seal(private_key: bytes, topic: str, seq: int, ts_ms: int, payload: Payload, subject: str = "") -> Envelope:
    """Sign ``payload`` as ``topic`` from the key's address (about ``subject``, if not itself)."""
    key, origin = _signing_key(private_key)
    body = payload.model_dump(mode="json")
    sig = key.sign_msg_hash(signing_digest(topic, origin, seq, ts_ms, body, subject))
    return Envelope(topic=topic, origin=origin, subject=subject, seq=seq, ts_ms=ts_ms, payload=body,
                    sig="0x" + sig.to_bytes().hex())


@functools.lru_cache(maxsize=16)
def _signing_key(private_key: bytes) -> tuple[PrivateKey, str]:
    """A node's key object and address, made once: deriving them took ~40 % of a seal."""
    key = keys.PrivateKey(private_key)
    return key, key.public_key.to_checksum_address()


def recover_address(digest: bytes, sig: bytes) -> str | None:
    """The checksummed address whose key made the 65-byte ``r || s || v`` signature of ``digest``
    (v in {0, 1}), or None if the signature is malformed or not canonical (s above n/2: the
    malleable twin of a valid signature). coincurve's recovery is ~4x faster than eth-keys' pure
    Python backend, and every node verifies every peer's heartbeat once per interval."""
    if len(sig) != 65 or sig[64] > 1:
        return None
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    except ValueError:
        return None
    return to_checksum_address("0x" + keccak(public.format(compressed=False)[1:])[-20:].hex())


def next_seq(last: int, now_ms: int) -> int:
    """The next sequence number: strictly increasing, and ahead of a previous run's numbers."""
    return max(last + 1, now_ms)
