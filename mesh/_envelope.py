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

import json
from typing import Any

from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_checksum_address
from pydantic import BaseModel, ConfigDict, Field, field_validator

DOMAIN = b"deedmesh/gossip/1\x00"
MAX_ENVELOPE_BYTES = 16 * 1024  # heartbeats and capacity are < 1 KiB; job specs stay well under


class Payload(BaseModel):
    """Base of every topic's payload: frozen, strict, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Envelope(BaseModel):
    """A signed gossip message as it is on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    topic: str = Field(min_length=1, max_length=64)
    origin: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    seq: int = Field(ge=1, lt=2**63)
    ts_ms: int = Field(ge=0, lt=2**63)
    payload: dict[str, Any]
    sig: str = Field(pattern=r"^0x[0-9a-f]{130}$")

    @field_validator("origin")
    @classmethod
    def _checksummed(cls, v: str) -> str:
        return to_checksum_address(v)

    def signing_digest(self) -> bytes:
        return signing_digest(self.topic, self.origin, self.seq, self.ts_ms, self.payload)

    def recover_origin(self) -> str | None:
        """The address that signed this envelope, or None if the signature is unusable."""
        try:
            sig = keys.Signature(bytes.fromhex(self.sig[2:]))
            return str(sig.recover_public_key_from_msg_hash(self.signing_digest()).to_checksum_address())
        except (BadSignature, ValidationError, ValueError):
            return None

    def encode(self) -> bytes:
        return canonical(self.model_dump())


def canonical(value: Any) -> bytes:
    """Canonical JSON: what is signed and what is sent."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signing_digest(topic: str, origin: str, seq: int, ts_ms: int, payload: dict[str, Any]) -> bytes:
    return keccak(DOMAIN + canonical([topic, to_checksum_address(origin), seq, ts_ms, payload]))


def seal(private_key: bytes, topic: str, seq: int, ts_ms: int, payload: Payload) -> Envelope:
    """Sign ``payload`` as ``topic`` from the key's address."""
    key = keys.PrivateKey(private_key)
    origin = key.public_key.to_checksum_address()
    body = payload.model_dump(mode="json")
    sig = key.sign_msg_hash(signing_digest(topic, origin, seq, ts_ms, body))
    return Envelope(topic=topic, origin=origin, seq=seq, ts_ms=ts_ms, payload=body, sig="0x" + sig.to_bytes().hex())


def next_seq(last: int, now_ms: int) -> int:
    """The next sequence number: strictly increasing, and ahead of a previous run's numbers."""
    return max(last + 1, now_ms)
