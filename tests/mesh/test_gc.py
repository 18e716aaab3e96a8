"""The node process's garbage-collector tuning and its clock (mesh/_gc.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mesh._gc import OLDER_THRESHOLDS, YOUNG_THRESHOLD, GcClock, settle, tune_for_service


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


def make_cycles(n: int) -> None:
    for _ in range(n):
        a: list[object] = []
        a.append(a)  # a cycle: only the collector frees it


def test_the_clock_counts_each_collection_by_generation(restored_gc: None) -> None:
    clock = GcClock()
    clock.start()
    clock.start()  # idempotent: one callback
    gc.collect(0)
    gc.collect(2)
    gc.collect(2)
    clock.stop()
    assert clock.collections[2] == 2
    assert clock.collections[0] >= 1
    assert all(s >= 0 for s in clock.seconds)
    make_cycles(1000)
    gc.collect(2)  # after stop: not counted
    assert clock.collections[2] == 2


def test_the_clock_times_a_collection_of_many_objects(restored_gc: None) -> None:
    clock = GcClock()
    kept = [[i] for i in range(300_000)]  # containers the full collection has to walk
    clock.start()
    gc.collect(2)
    clock.stop()
    assert clock.seconds[2] > 0
    assert len(kept) == 300_000


def test_tuning_collects_the_young_generation_less_often_and_settling_freezes(restored_gc: None) -> None:
    tune_for_service()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    gc.unfreeze()
    before = gc.get_freeze_count()
    settle()
    assert gc.get_freeze_count() > before
    frozen = gc.get_freeze_count()
    gc.collect()  # frozen objects are not scanned, and stay frozen
    assert gc.get_freeze_count() == frozen
