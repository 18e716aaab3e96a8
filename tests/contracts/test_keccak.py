"""The fast keccak and the remembered checksum give what eth_utils gives."""

from __future__ import annotations

from eth_utils import keccak as reference_keccak
from eth_utils import to_checksum_address as reference_checksum
from hypothesis import given
from hypothesis import strategies as st

from contracts import keccak, to_checksum_address


@given(st.binary(max_size=2048))
def test_keccak_is_keccak256(data: bytes) -> None:
    assert keccak(data) == reference_keccak(data)


def test_keccak_of_nothing_is_the_known_digest() -> None:
    assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


@given(st.binary(min_size=20, max_size=20))
def test_checksum_is_eth_utils_checksum(raw: bytes) -> None:
    address = "0x" + raw.hex()
    assert to_checksum_address(address) == reference_checksum(address)
    assert to_checksum_address(address) == to_checksum_address(address.upper().replace("0X", "0x"))
