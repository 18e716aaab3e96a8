"""ChainDist's pure rules: shard inputs partition the input, shard orders are recomputable by
anyone, the coordinator's book keeps first outputs and gives up after MAX_ATTEMPTS, and the
result digest binds every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh._chaindist import MAX_ATTEMPTS, ShardBook, rank_workers, result_digest, shard_input
from mesh._identity import NodeIdentity
from mesh._jobspec import ChainDistJob
from mesh._jobspec_load import load_spec
from mesh._runner_chaindist import ChainDistRun

NODES = [NodeIdentity(bytes([0x90 + i]) * 32).address for i in range(6)]


@given(st.lists(st.text(alphabet="abc xyz", max_size=8), max_size=40), st.integers(1, 9))
def test_the_shards_inputs_partition_the_inputs_lines(lines: list[str], shards: int) -> None:
    text = "".join(line + "\n" for line in lines)
    parts = [shard_input(text, s, shards) for s in range(shards)]
    assert sorted("".join(parts).splitlines()) == sorted(lines)
    assert all(shard_input(text, s, shards).splitlines() == lines[s::shards] for s in range(shards))


def test_a_shard_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="shard 3 of 3"):
        shard_input("a\n", 3, 3)


@given(st.integers(1, 2**64), st.integers(0, 1023), st.permutations(NODES))
def test_a_shards_worker_order_depends_only_on_the_job_the_shard_and_the_set(job_id: int, shard: int,
                                                                            order: list[str]) -> None:
    ranked = rank_workers(job_id, shard, order)
    assert ranked == rank_workers(job_id, shard, NODES)
    assert sorted(ranked) == sorted(NODES)
    # a worker that leaves takes only its own place
    assert rank_workers(job_id, shard, NODES[1:]) == [w for w in ranked if w != NODES[0]]


def test_shards_of_one_job_spread_over_the_workers() -> None:
    firsts = {rank_workers(7, shard, NODES)[0] for shard in range(64)}
    assert len(firsts) >= 4  # 64 shards over 6 workers: the first choices are not all one node


def test_the_book_tries_workers_in_order_and_keeps_the_first_output() -> None:
    book = ShardBook(job_id=7, shards=2)
    order = rank_workers(7, 0, NODES)
    first = book.next_worker(0, NODES)
    assert first == order[0]
    book.start(0, first)
    assert book.next_worker(0, NODES) is None  # it runs
    with pytest.raises(ValueError, match="already runs"):
        book.start(0, order[1])
    book.fail(0, first, "died")
    second = book.next_worker(0, NODES)
    assert second == order[1]
    book.start(0, second)
    assert book.accept(0, second, b"42\n")
    assert not book.accept(0, first, b"42\n")  # the lost worker answered after all: a duplicate
    assert book.duplicates == 1
    assert not book.accept(0, order[2], b"1\n")  # never given the shard
    assert book.outputs[0] == (second, b"42\n")
    assert not book.done
    book.start(1, book.next_worker(1, NODES) or "")
    assert book.accept(1, book.running[1], b"8\n")
    assert book.done
    assert book.ordered_outputs() == [b"42\n", b"8\n"]
    assert book.failures == {0: [f"{first}: died"]}


def test_a_shard_that_fails_max_attempts_times_fails_the_run() -> None:
    book = ShardBook(job_id=9, shards=1)
    for _ in range(MAX_ATTEMPTS):
        worker = book.next_worker(0, NODES)
        assert worker is not None
        book.start(0, worker)
        book.fail(0, worker, "exit 1")
    assert book.next_worker(0, NODES) is None
    assert book.failed == [0]
    with pytest.raises(ValueError, match="not every shard"):
        book.ordered_outputs()


def test_every_live_worker_is_tried_before_one_is_tried_again() -> None:
    book = ShardBook(job_id=9, shards=1, max_attempts=5)
    two = rank_workers(9, 0, NODES[:2])
    for worker in two:
        assert book.next_worker(0, NODES[:2]) == worker
        book.start(0, worker)
        book.fail(0, worker, "exit 1")
    assert book.next_worker(0, NODES[:3]) == NODES[2]  # a new worker first
    assert book.next_worker(0, NODES[:2]) == two[0]  # then the first of the order again
    assert book.failed == []
    assert book.next_worker(0, []) is None  # no worker at all


def test_the_digest_binds_the_job_every_output_their_order_and_the_aggregate() -> None:
    base = result_digest(7, [b"1\n", b"2\n"], b"3\n")
    assert len(base) == 64
    assert base == result_digest(7, [b"1\n", b"2\n"], b"3\n")
    for other in (result_digest(8, [b"1\n", b"2\n"], b"3\n"), result_digest(7, [b"2\n", b"1\n"], b"3\n"),
                  result_digest(7, [b"1\n", b"2\n"], b"4\n"), result_digest(7, [b"1\n2\n"], b"3\n")):
        assert other != base


def test_a_stored_result_counts_only_when_it_is_whole_and_this_jobs(tmp_path: Path) -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "chaindist-wordcount.yaml")
    assert isinstance(spec, ChainDistJob)
    run = ChainDistRun(None, None, 7, spec, tmp_path)  # type: ignore[arg-type]  # the node is not needed here
    assert run._stored() is None
    run.dir.mkdir(parents=True)
    stored = run.dir / "result.json"
    for broken in ("{cut sho", json.dumps({"state": "completed", "job_id": 8}), json.dumps({"job_id": 7}),
                   json.dumps({"state": "running", "job_id": 7}), "[]"):
        stored.write_text(broken)
        assert run._stored() is None
    whole = {"state": "completed", "job_id": 7, "digest": "ab" * 32, "output": "41\n"}
    stored.write_text(json.dumps(whole))
    assert run._stored() == whole
