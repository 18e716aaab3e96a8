"""The chain inputs of a report (``oracle._inputs``): what a reader keeps between epochs changes
nothing it reads, at any block."""

from __future__ import annotations

from typing import Any

import pytest

from oracle._inputs import InputsCache, read_inputs
from tests.contracts.world import World


def test_a_kept_cache_skips_ended_jobs_and_reads_what_a_fresh_one_reads_at_any_block(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    epoch = w.escrow.current_epoch() + 1
    kept, cancelled = w.new_job(start_epoch=epoch), w.new_job(start_epoch=epoch)
    before = w.chain.block_number()
    w.escrow.cancel_job(cancelled, sender=w.csp)
    after = w.chain.block_number()
    nodes = [n.address for n in w.nodes[:3]]
    cache = InputsCache(w.chain, w.dep)

    read_after = read_inputs(w.chain, w.dep, epoch, nodes, after, cache)
    assert [j.job_id for j in read_after.jobs] == [kept]
    assert cache.ended == {cancelled: after}
    assert cache.open_at(after, cancelled) == [kept]

    asked: list[int] = []
    read_many = w.chain.read_many

    def counted(calls: Any, block: Any = None) -> Any:
        asked.extend(int.from_bytes(c.data[4:36], "big") for c in calls if c.name == "getJob")
        return read_many(calls, block)
    monkeypatch.setattr(w.chain, "read_many", counted)

    assert read_inputs(w.chain, w.dep, epoch, nodes, after, cache) == read_after
    assert asked == [kept]  # the cancelled job is not read again
    asked.clear()
    # at a block before the cancel the job was still active: the kept cache reads it there
    read_before = read_inputs(w.chain, w.dep, epoch, nodes, before, cache)
    assert sorted(asked) == sorted([kept, cancelled])
    assert sorted(j.job_id for j in read_before.jobs) == sorted([kept, cancelled])
    assert read_before == read_inputs(w.chain, w.dep, epoch, nodes, before, InputsCache(w.chain, w.dep))
    assert read_after == read_inputs(w.chain, w.dep, epoch, nodes, after, InputsCache(w.chain, w.dep))
