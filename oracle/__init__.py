"""deedmesh's oracles: observation, availability, epoch reports, Merkle trees, settlement, audit.

Uses the public APIs of ``contracts`` and ``mesh``. Everything public is listed in ``__all__``.
"""

from ._merkle import MerkleTree, hash_pair, verify

__all__ = ["MerkleTree", "hash_pair", "verify"]
