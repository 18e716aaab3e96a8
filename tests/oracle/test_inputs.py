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

    more = [n.address for n in w.nodes[:4]]  # not covered by the kept read: read from the chain
    assert read_inputs(w.chain, w.dep, epoch, more, after, cache) == read_inputs(
        w.chain, w.dep, epoch, more, after, InputsCache(w.chain, w.dep))
    assert asked == [kept, kept, cancelled]  # the kept cache did not read the cancelled job again
    asked.clear()
    # at a block before the cancel the job was still active: the kept cache reads it there
    read_before = read_inputs(w.chain, w.dep, epoch, nodes, before, cache)
    assert sorted(asked) == sorted([kept, cancelled])
    assert sorted(j.job_id for j in read_before.jobs) == sorted([kept, cancelled])
    assert read_before == read_inputs(w.chain, w.dep, epoch, nodes, before, InputsCache(w.chain, w.dep))
    assert read_after == read_inputs(w.chain, w.dep, epoch, nodes, after, InputsCache(w.chain, w.dep))


def test_a_read_kept_for_more_nodes_answers_a_read_for_fewer_at_that_block_without_the_chain(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    epoch = w.escrow.current_epoch() + 1
    w.new_job(start_epoch=epoch)
    block = w.chain.block_number()
    everyone, two = [n.address for n in w.nodes[:4]], [n.address for n in w.nodes[1:3]]
    cache = InputsCache(w.chain, w.dep)
    whole = read_inputs(w.chain, w.dep, epoch, everyone, block, cache)  # as Oracle.prefetch reads
    fresh = read_inputs(w.chain, w.dep, epoch, two, block, InputsCache(w.chain, w.dep))
    w.new_job(start_epoch=epoch)  # a later block: what was kept is for the block it was read at

    def no_chain(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the chain was read")
    monkeypatch.setattr(w.chain, "read_many", no_chain)
    assert read_inputs(w.chain, w.dep, epoch, two, block, cache) == fresh
    assert [n.node for n in fresh.nodes] == sorted(a.lower() for a in two)
    assert cache.recall(epoch, block, [a.lower() for a in everyone]) == whole
    # not covered: another node, another block or another epoch
    assert cache.recall(epoch, block, ["0x" + "ab" * 20]) is None
    assert cache.recall(epoch, block + 1, [a.lower() for a in two]) is None
    assert cache.recall(epoch + 1, block, [a.lower() for a in two]) is None
    monkeypatch.undo()
    later = read_inputs(w.chain, w.dep, epoch, two, None, cache)
    assert later.block > block
    assert len(later.jobs) == len(fresh.jobs) + 1
