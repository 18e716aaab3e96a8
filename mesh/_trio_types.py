"""trio's ``TaskStatus`` for annotations, in one place.

libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own annotations for mypy; its
``TaskStatus`` is the one mypy sees, trio's is the one that exists at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus
else:
    TaskStatus = trio.TaskStatus

__all__ = ["TaskStatus"]
