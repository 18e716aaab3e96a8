"""The checks a node runs on a CSP's signed job submission, each refusal by its reason (pure: the
chain's answers are given; the escrow's own digest is checked against ours in the contracts suite
through the EIP-712 vectors, and on a deployed escrow below)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
from eth_account import Account

from contracts import (
    CspStatus,
    Epoch,
    Job,
    JobId,
    JobStatus,
    SettlementPolicy,
    TokenUnits,
    escrow_domain,
    job_submission,
    sign,
)
from mesh._errors import ConfigError
from mesh._nonces import COMPACT_SLACK, NonceBook
from mesh._submission import MAX_VALIDITY_S, STOP, ChainFacts, Rejected, Submission, check_submission

CSP_KEY = "0x" + "c5" * 32
CSP = Account.from_key(CSP_KEY).address
OTHER_KEY = "0x" + "d6" * 32
ESCROW = "0x" + "e5" * 20
CHAIN = 31337
SPEC = bytes(range(32))
NOW = 1_900_000_000
JOB = Job(job_id=JobId(7), csp=CSP, start_epoch=Epoch(1), replicas=2, token="0x" + "70" * 20, epochs=3,
          status=JobStatus.ACTIVE, policy=SettlementPolicy(), spec_hash=SPEC,
          price_per_node_epoch=TokenUnits(10), deposited=TokenUnits(60), alloc_release=TokenUnits(0),
          release_spent=TokenUnits(0), alloc_refund=TokenUnits(0), refunded=TokenUnits(0), alloc_burn=TokenUnits(0),
          burned=TokenUnits(0), reclaimed=TokenUnits(0), forfeited=TokenUnits(0))
FACTS = ChainFacts(chain_id=CHAIN, escrow=ESCROW, job=JOB, csp_admitted_until=NOW + 3600, csp_status=CspStatus.ACTIVE)


def submission(*, key: str = CSP_KEY, job_id: int = 7, spec: bytes = SPEC, nonce: int = 1, expiry: int = NOW + 600,
               chain_id: int = CHAIN, escrow: str = ESCROW) -> Submission:
    message = job_submission(escrow_domain(chain_id, escrow), job_id, spec, nonce, expiry)
    return Submission(job_id=job_id, spec_hash="0x" + spec.hex(), nonce=nonce, expiry=expiry,
                      signature="0x" + sign(message, key).hex())


def reason(sub: Submission, facts: ChainFacts = FACTS, *, replicas: int | None = 2, last: int | None = None) -> str:
    with pytest.raises(Rejected) as caught:
        check_submission(sub, facts, replicas=replicas, now_s=NOW, last_nonce=last)
    return caught.value.reason


def test_a_valid_submission_and_a_signed_stop_pass() -> None:
    assert check_submission(submission(), FACTS, replicas=2, now_s=NOW, last_nonce=None) == CSP
    stop = submission(spec=STOP, nonce=2)
    assert stop.is_stop
    assert check_submission(stop, FACTS, replicas=None, now_s=NOW, last_nonce=1) == CSP


def test_each_refusal_has_its_reason_and_status() -> None:
    sub = submission()
    tampered = sub.model_copy(update={"nonce": 2})  # signed nonce 1: recovers to someone else
    high_s = bytes.fromhex(sub.signature[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = n - int.from_bytes(high_s[32:64], "big")
    twin = high_s[:32] + s.to_bytes(32, "big") + bytes([55 - high_s[64]])  # the malleable twin
    cases = {
        "bad-signature": sub.model_copy(update={"signature": "0x" + twin.hex()}),
        "wrong-owner": tampered,
        "expired": submission(expiry=NOW),
        "expiry-too-far": submission(expiry=NOW + MAX_VALIDITY_S + 1),
    }
    for expected, bad in cases.items():
        assert reason(bad) == expected
    assert reason(submission(key=OTHER_KEY)) == "wrong-owner"
    assert reason(submission(chain_id=1)) == "wrong-owner"  # signed for another chain: not the CSP here
    assert reason(submission(escrow="0x" + "e6" * 20)) == "wrong-owner"
    assert reason(sub, dataclasses.replace(FACTS, job=None)) == "unknown-job"
    assert reason(sub, dataclasses.replace(FACTS, job=dataclasses.replace(JOB, status=JobStatus.CANCELLED))) == (
        "job-not-active")
    assert reason(sub, dataclasses.replace(FACTS, job=dataclasses.replace(JOB, deposited=TokenUnits(0)))) == (
        "not-funded")
    assert reason(submission(spec=bytes(32 * [1]))) == "spec-mismatch"
    assert reason(sub, replicas=3) == "replicas-mismatch"
    assert reason(sub, dataclasses.replace(FACTS, csp_admitted_until=NOW - 1)) == "csp-not-admitted"
    assert reason(sub, dataclasses.replace(FACTS, csp_status=CspStatus.SUSPENDED)) == "csp-not-admitted"
    assert reason(sub, last=1) == "replayed"
    assert reason(submission(spec=STOP, nonce=1), replicas=None, last=1) == "replayed"  # an old stop too


def test_statuses_are_http_errors() -> None:
    with pytest.raises(Rejected) as caught:
        check_submission(submission(), FACTS, replicas=2, now_s=NOW, last_nonce=5)
    assert caught.value.status == 409
    assert "nonce 1 <= 5" in str(caught.value)


def test_malformed_submissions_are_refused_by_the_model() -> None:
    good = submission().model_dump()
    for field, value in (("job_id", 0), ("spec_hash", "0x12"), ("signature", "0xzz"), ("nonce", -1),
                         ("expiry", "soon")):
        with pytest.raises(ValueError, match=field):
            Submission.model_validate(good | {field: value})
    with pytest.raises(ValueError, match="extra"):
        Submission.model_validate(good | {"note": "x"})


def test_the_nonce_book_survives_a_restart_and_only_moves_up(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nonces.log"
    book = NonceBook(path)
    assert book.last(7) is None
    assert book.record(7, 3)
    assert not book.record(7, 3)
    assert not book.record(7, 2)
    assert book.record(8, 0)
    assert NonceBook(path).last(7) is None  # reserved, not yet on disk
    trio.run(book.flush)
    again = NonceBook(path)  # a restarted node
    assert (again.last(7), again.last(8), again.last(9)) == (3, 0, None)
    assert reason(submission(nonce=3), last=again.last(7)) == "replayed"
    with path.open("a") as f:
        f.write("7 9")  # a crash in the middle of an append: never flushed, so never relayed
    after_crash = NonceBook(path)
    assert after_crash.last(7) == 3
    assert after_crash.record(8, 5)
    trio.run(after_crash.flush)  # the next append starts a line of its own
    assert (NonceBook(path).last(7), NonceBook(path).last(8)) == (3, 5)
    with path.open("a") as f:
        f.write("9 1")  # a write that failed halfway while the node kept running
    assert after_crash.record(8, 6)
    trio.run(after_crash.flush)
    assert (NonceBook(path).last(8), NonceBook(path).last(9)) == (6, 1)
    path.write_text("7 three\n")
    with pytest.raises(ConfigError, match="line 1 is not"):
        NonceBook(path)
    path.write_text("7 -1\n")
    with pytest.raises(ConfigError, match="negative"):
        NonceBook(path)


def test_the_nonce_book_commits_concurrent_records_together_and_compacts_on_load(tmp_path: Path) -> None:
    path = tmp_path / "nonces.log"
    book = NonceBook(path)
    writes: list[int] = []
    append = book._append

    def counted(lines: list[str]) -> None:
        writes.append(len(lines))
        append(lines)
    book._append = counted  # type: ignore[method-assign]

    async def submit_many() -> None:
        async with trio.open_nursery() as nursery:
            for job_id in range(1, 201):
                for nonce in (1, 2, 3):
                    assert book.record(job_id, nonce)
                    nursery.start_soon(book.flush)
    trio.run(submit_many)
    assert writes == [600]  # 600 flushes waiting at once: one write, one fsync
    lines = path.read_text().splitlines()
    assert len(lines) == 600 <= 2 * 200 + COMPACT_SLACK
    restarted = NonceBook(path)
    assert all(restarted.last(job_id) == 3 for job_id in range(1, 201))
    assert path.read_text().splitlines() == lines  # 600 lines for 200 jobs: under the compaction bar
    trio.run(_record_and_flush, restarted, [(job_id, 4) for job_id in range(1, 201)])
    compacted = NonceBook(path)  # 800 lines for 200 jobs: rewritten with one line a job
    assert path.read_text().splitlines() == [f"{job_id} 4" for job_id in range(1, 201)]
    assert compacted.last(200) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nonces.log"]  # no temporary file left behind


async def _record_and_flush(book: NonceBook, records: list[tuple[int, int]]) -> None:
    for job_id, nonce in records:
        assert book.record(job_id, nonce)
    await book.flush()
