"""Merkle trees of settlement leaves, as OpenZeppelin's ``MerkleProof`` verifies them.

Sorted-pair (commutative) keccak hashing, so a proof is just the sibling hashes bottom-up; an
unpaired node is promoted to the next layer unchanged. Leaves are sorted first, so every oracle
that holds the same leaves builds the same root. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._keccak import keccak


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative keccak of two nodes."""
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """A tree over 32-byte leaves (already hashed), with proofs by leaf."""

    def __init__(self, leaves: Iterable[bytes]) -> None:
        ordered = sorted(set(leaves))
        if not ordered:
            raise ValueError("a Merkle tree needs at least one leaf")
        if any(len(leaf) != 32 for leaf in ordered):
            raise ValueError("leaves must be 32-byte hashes")
        self._index = {leaf: i for i, leaf in enumerate(ordered)}
        layers = [ordered]
        while len(layers[-1]) > 1:
            below = layers[-1]
            above = [hash_pair(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])
            layers.append(above)
        self._layers = layers

    @property
    def root(self) -> bytes:
        return self._layers[-1][0]

    def __len__(self) -> int:
        return len(self._layers[0])

    def __contains__(self, leaf: object) -> bool:
        return leaf in self._index

    def proof(self, leaf: bytes) -> tuple[bytes, ...]:
        """Sibling hashes from ``leaf`` up to the root; ``KeyError`` if the leaf is not in the tree."""
        index = self._index[leaf]
        siblings: list[bytes] = []
        for layer in self._layers[:-1]:
            sibling = index ^ 1
            if sibling < len(layer):
                siblings.append(layer[sibling])
            index //= 2
        return tuple(siblings)


def verify(proof: Iterable[bytes], root: bytes, leaf: bytes) -> bool:
    """Whether ``proof`` proves ``leaf`` against ``root`` (as ``MerkleProof.verify`` does)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
