"""Merkle trees built here verify like OpenZeppelin's MerkleProof (sorted pairs)."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from oracle import MerkleTree, hash_pair, verify

leaf_sets = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70, unique=True)


@given(leaf_sets)
def test_every_leaf_proves_against_the_root(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    assert len(tree) == len(leaves)
    for leaf in leaves:
        assert verify(tree.proof(leaf), tree.root, leaf)


@given(leaf_sets, st.binary(min_size=32, max_size=32))
def test_a_foreign_leaf_does_not_prove(leaves: list[bytes], other: bytes) -> None:
    tree = MerkleTree(leaves)
    if other in leaves:
        return
    assert other not in tree
    assert not verify(tree.proof(leaves[0]), tree.root, other)


@given(leaf_sets)
def test_the_root_does_not_depend_on_leaf_order(leaves: list[bytes]) -> None:
    assert MerkleTree(leaves).root == MerkleTree(list(reversed(leaves))).root


def test_single_leaf_is_its_own_root() -> None:
    leaf = keccak(b"only")
    tree = MerkleTree([leaf])
    assert tree.root == leaf
    assert tree.proof(leaf) == ()


def test_three_leaves_promote_the_odd_one() -> None:
    a, b, c = sorted(keccak(bytes([i])) for i in range(3))
    assert MerkleTree([a, b, c]).root == hash_pair(hash_pair(a, b), c)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MerkleTree([])
    with pytest.raises(ValueError, match="32-byte"):
        MerkleTree([b"short"])
    with pytest.raises(KeyError):
        MerkleTree([keccak(b"x")]).proof(keccak(b"y"))
