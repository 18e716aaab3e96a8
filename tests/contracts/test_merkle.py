"""Merkle trees built here verify like OpenZeppelin's MerkleProof (sorted pairs); the report's totals
tree is one (one leaf per job)."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from contracts import (
    JobId,
    JobTotals,
    MerkleTree,
    TokenUnits,
    hash_pair,
    release_leaf,
    totals_leaf,
    totals_proofs,
    totals_root,
    totals_tree,
    verify,
)

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


# ---------------------------------------------------------------------------------------- the totals tree


job_totals = st.builds(JobTotals, st.integers(0, 2**256 - 1), st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1),
                       st.integers(0, 2**128 - 1))


@given(st.lists(job_totals, min_size=1, max_size=20, unique_by=lambda t: t.job_id), st.integers(0, 2**64 - 1))
def test_totals_proofs_prove_each_job_against_the_totals_root(totals: list[JobTotals], epoch: int) -> None:
    root = totals_root(totals)
    tree = totals_tree(totals)
    assert tree is not None
    assert tree.root == root
    proofs = totals_proofs(epoch, totals)
    assert [p.totals for p in proofs] == totals
    for p in proofs:
        assert p.epoch == epoch
        assert verify(p.proof, root, totals_leaf(p.totals))
        assert p.as_abi() == (p.totals.job_id, epoch, p.totals.release, p.totals.refund, p.totals.burn,
                              list(p.proof))
    # a chosen subset, in the order asked
    wanted = [t.job_id for t in reversed(totals)]
    assert [p.totals.job_id for p in totals_proofs(epoch, totals, wanted)] == wanted


def test_totals_tree_edge_cases() -> None:
    assert totals_root([]) == b"\x00" * 32  # a report with no job signs the zero root
    assert totals_tree([]) is None
    assert totals_proofs(3, []) == []
    one = JobTotals(JobId(1), TokenUnits(1), TokenUnits(2), TokenUnits(3))
    assert totals_root([one]) == totals_leaf(one)
    with pytest.raises(ValueError, match="one totals entry per job"):  # a job twice: anyone could pick
        totals_root([one, JobTotals(JobId(1), TokenUnits(9), TokenUnits(2), TokenUnits(3))])
    with pytest.raises(KeyError):
        totals_proofs(3, [one], [2])
    # the leaf kinds differ: a totals leaf never equals a release leaf of the same numbers
    assert totals_leaf(one) != release_leaf(1, 1, 2)
