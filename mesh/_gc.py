"""The node process's garbage collector: tuned for a long-lived service, and timed (``/metrics``).

Measured in the placement benchmark (BENCHMARKS.md): with CPython's default thresholds (700, 10,
10) the 20 node processes spent 5.8 s of their 56.8 s of CPU collecting; frozen start-up objects
and a young generation of 20,000 objects brought that to 0.8 s. Most of a node's allocations die
young by reference counting (decoded gossip, pydantic models, HTTP requests); what survives is the
node's state, which the old generations scan again and again.
"""

from __future__ import annotations

import gc
import time
from typing import Any

YOUNG_THRESHOLD = 20_000  # objects allocated (net) before the young generation is collected; default 700
OLDER_THRESHOLDS = (10, 10)  # CPython's defaults for the two older generations


class GcClock:
    """Sums the CPU time of each collection (of the thread that ran it), by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._began = 0.0

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.thread_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.thread_time() - self._began
            self.collections[generation] += 1


GC_CLOCK = GcClock()


def tune_for_service() -> None:
    """At process start: time every collection and collect the young generation less often."""
    GC_CLOCK.start()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def settle() -> None:
    """Once started up: what exists now (modules, the node's wiring) is never scanned again."""
    gc.collect()
    gc.freeze()
