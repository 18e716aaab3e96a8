"""``POST /jobs`` on a node: a CSP's submission is checked against the chain facts and the nonces
seen, relayed on success, refused with its HTTP status otherwise (chain facts given; the escrow
itself is exercised in the contracts suite and by ``job fund`` against anvil)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import trio

from contracts import ChainUnreachable
from mesh._api import NodeApi
from mesh._identity import NodeIdentity
from mesh._job_desk import JobDesk
from mesh._jobspec import spec_hash
from mesh._jobspec_load import load_spec
from mesh._node import NodeConfig, open_node
from mesh._nonces import NonceBook
from mesh._process import EscrowFacts
from mesh._submission import STOP, ChainFacts
from mesh._transport import MemoryNetwork

from ._asgi import call
from .test_node_memory import capacity
from .test_submission import CSP, FACTS, JOB, NOW, submission

SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml")
HASH = spec_hash(SPEC)
FUNDED = dataclasses.replace(FACTS, job=dataclasses.replace(JOB, spec_hash=HASH))


def body(sub: object, spec: object) -> bytes:
    return json.dumps({"submission": sub, "spec": spec}).encode()


async def test_submissions_are_checked_recorded_and_relayed(tmp_path: Path) -> None:
    ident = NodeIdentity(b"\x32" * 32)
    facts: list[ChainFacts | Exception] = [FUNDED]

    async def read_facts(job_id: int, csp: str) -> ChainFacts:
        await trio.lowlevel.checkpoint()
        assert (job_id, csp) == (7, CSP)
        if isinstance(facts[0], Exception):
            raise facts[0]
        return facts[0]

    async with open_node(NodeConfig(), ident, MemoryNetwork().endpoint(ident.address), capacity(),
                         lambda _: True, escrow=(FACTS.chain_id, FACTS.escrow)) as node:
        book = NonceBook(tmp_path / "nonces.log")
        desk = JobDesk(node, FACTS.chain_id, FACTS.escrow, read_facts, book, now_s=lambda: NOW)
        app = NodeApi(node, peer_id="16Uiu2HAtest", addrs=list, operator_token="t", desk=desk)
        spec = SPEC.model_dump(mode="json")

        status, answer = await call(app, "POST", "/jobs", body(submission(spec=HASH, nonce=3).model_dump(), spec))
        assert (status, answer["job_id"], answer["csp"], answer["accepted_by"]) == (202, 7, CSP, ident.address)
        assert book.last(7) == 3
        status, jobs = await call(app, "GET", "/jobs")
        assert [(j["job_id"], j["nonce"], j["name"], j["stopped"]) for j in jobs] == [(7, 3, "web", False)]

        refusals = {
            "replayed": body(submission(spec=HASH, nonce=3).model_dump(), spec),
            "spec-mismatch": body(submission(spec=bytes(32 * [9]), nonce=4).model_dump(), spec),
            "malformed": b'{"submission": {}, "spec": null}',
        }
        for reason, request in refusals.items():
            status, answer = await call(app, "POST", "/jobs", request)
            assert answer["error"] == reason, answer
            assert status == {"replayed": 409, "spec-mismatch": 409, "malformed": 422}[reason]
        status, answer = await call(app, "POST", "/jobs", body(submission(spec=HASH, nonce=4).model_dump(), None))
        assert (status, answer["error"]) == (422, "malformed")  # a spec-less submission must be a stop
        assert "must be a stop" in answer["message"]
        bad_spec = spec | {"replicas": 0}
        status, answer = await call(app, "POST", "/jobs", body(submission(nonce=4).model_dump(), bad_spec))
        assert (status, answer["error"]) == (422, "malformed")
        assert "replicas" in answer["message"]

        facts[0] = ChainUnreachable("http://127.0.0.1:9", "refused")
        status, answer = await call(app, "POST", "/jobs", body(submission(spec=HASH, nonce=5).model_dump(), spec))
        assert (status, answer["error"]) == (503, "chain-unreachable")
        assert book.last(7) == 3  # nothing recorded on a refusal
        facts[0] = FUNDED

        status, answer = await call(app, "POST", "/jobs", body(submission(spec=STOP, nonce=6).model_dump(), None))
        assert (status, answer["stop"]) == (202, True)
        assert node.jobs[(7, CSP.lower())].spec is None
        assert NonceBook(tmp_path / "nonces.log").last(7) == 6  # on disk for a restart

        # one nonce sent twice at once (both pass the check before either records it): one is refused
        answers: list[tuple[int, dict[str, object]]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(_append, answers, call(app, "POST", "/jobs", body(
                    submission(spec=HASH, nonce=7).model_dump(), spec)))
        assert sorted((status, answer.get("error")) for status, answer in answers) == [(202, None), (409, "replayed")]

        # a disk that cannot take the nonce: 503, nothing relayed; the nonce stays reserved
        (tmp_path / "blocker").write_text("a file where the book's folder should be")
        book.path = tmp_path / "blocker" / "nonces.log"
        status, answer = await call(app, "POST", "/jobs", body(submission(spec=HASH, nonce=8).model_dump(), spec))
        assert (status, answer["error"]) == (503, "nonce-book-unwritable")
        assert node.jobs[(7, CSP.lower())].nonce == 7
        book.path = tmp_path / "nonces.log"
        status, answer = await call(app, "POST", "/jobs", body(submission(spec=HASH, nonce=9).model_dump(), spec))
        assert status == 202
        assert NonceBook(tmp_path / "nonces.log").last(7) == 9
        assert (await call(app, "POST", "/jobs", b"x" * 70_000))[0] == 413


async def _append(answers: list[tuple[int, dict[str, object]]], answer: Awaitable[tuple[int, Any]]) -> None:
    answers.append(await answer)


def test_escrow_facts_read_the_job_each_time_and_the_csps_admission_at_most_once_per_ttl() -> None:
    from contracts import Chain, CspStatus
    from contracts._chain import ViewCall

    from ..contracts.world import build_world

    world = build_world(Chain.embedded())
    job_id, other = world.new_job(), world.new_job()
    trips: list[list[str]] = []
    real = world.escrow.chain.read_many

    def counted(views: list[ViewCall]) -> list[object]:  # count the chain reads, then make them
        trips.append([v.name for v in views])
        return real(views)
    world.escrow.chain.read_many = counted  # type: ignore[method-assign]
    clock = [100.0]
    facts = EscrowFacts(world.escrow, csp_ttl_s=5.0, clock=lambda: clock[0])
    first = facts(job_id, world.csp)
    assert first.job is not None
    assert first.job.job_id == job_id
    assert first.csp_status is CspStatus.ACTIVE
    assert facts(999, world.csp).job is None  # no such job: read, not cached
    world.escrow.set_csp_status(world.csp, CspStatus.SUSPENDED, sender=world.admin)
    clock[0] += 4.9
    assert facts(job_id, world.csp).csp_status is CspStatus.ACTIVE  # within the TTL: the cached admission
    clock[0] += 0.1
    assert facts(job_id, world.csp).csp_status is CspStatus.SUSPENDED  # read again: the suspension bites
    assert trips == [["getJob", "admittedUntil", "cspStatus"], ["getJob"], ["getJob"],
                     ["getJob", "admittedUntil", "cspStatus"]]
    # many jobs in one trip, the stale CSP read once for all of them
    clock[0] += 5.0
    many = facts.many([(job_id, world.csp), (999, world.csp), (other, world.csp)])
    assert trips[-1] == ["getJob", "getJob", "getJob", "admittedUntil", "cspStatus"]
    assert [f.job and f.job.job_id for f in many] == [job_id, None, other]
    assert {f.csp_status for f in many} == {CspStatus.SUSPENDED}
