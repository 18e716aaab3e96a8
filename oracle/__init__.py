"""deedmesh's oracles: observation, availability, epoch reports, settlement, audit.

Uses the public APIs of ``contracts`` and ``mesh``. Everything public is listed in ``__all__``.
"""

__all__: list[str] = []
