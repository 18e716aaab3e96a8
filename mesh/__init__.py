"""deedmesh's node: identity, wire messages, transport, membership, placement, runners, API, CLI.

May use the public API of ``contracts``; never imports ``oracle``. Everything public is listed in
``__all__``. (The mesh itself arrives with issue 3; today this package holds the CLI shell.)
"""

from ._cli import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
