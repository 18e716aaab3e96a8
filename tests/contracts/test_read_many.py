"""``Chain.read_many``: prepared views in one trip (a JSON-RPC batch on a URL) answer what web3's
own call path answers, and every way it can fail is a ``ChainError``."""

from __future__ import annotations

import pytest
from web3 import Web3

from contracts import Chain, ChainError, ChainUnreachable, CspStatus, JobStatus
from contracts._anvil import free_port
from contracts._chain import ViewCall

from .world import World, build_world


def test_prepared_views_answer_what_web3_answers(world: World) -> None:
    first, second = world.new_job(replicas=1), world.new_job(replicas=3)
    escrow = world.escrow
    calls = [escrow.job_call(first), escrow.job_call(999), escrow.admitted_until_call(world.csp),
             escrow.csp_status_call(world.csp), escrow.job_call(second)]
    job, missing, until, status, other = world.chain.read_many(calls)
    via_web3 = escrow.contract.functions.getJob(first).call()
    assert (job.csp, job.replicas, job.spec_hash, job.deposited) == (via_web3[0], 1, via_web3[9], via_web3[11])
    assert job.status is JobStatus.ACTIVE
    assert job.deposited > 0
    assert job.csp == world.csp  # checksummed, as web3 gives addresses
    assert missing.status is JobStatus.NONE
    assert until == escrow.contract.functions.admittedUntil(world.csp).call() > 0
    assert status is CspStatus.ACTIVE
    assert (other.job_id, other.replicas) == (second, 3)
    assert world.chain.read_many([]) == []


def test_a_call_that_reverts_is_a_chain_error_naming_it(world: World) -> None:
    bogus = ViewCall("noSuchView", world.escrow.address, bytes.fromhex("deadbeef"), lambda raw: raw)
    with pytest.raises(ChainError, match="noSuchView"):
        world.chain.read_many([world.escrow.job_call(1), bogus])


def test_an_answer_that_does_not_decode_is_a_chain_error(world: World) -> None:
    nowhere = "0x" + "00" * 19 + "42"  # no contract: eth_call answers no bytes at all
    call = world.escrow.job_call(1)
    with pytest.raises(ChainError, match=r"getJob at .* 0 bytes that do not decode"):
        world.chain.read_many([ViewCall(call.name, Web3.to_checksum_address(nowhere), call.data, call.decode)])


def test_an_unreachable_url_is_a_named_error(world: World) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    dead = Chain(w3=Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 2})), kind="rpc", url=url)
    with pytest.raises(ChainUnreachable):
        dead.read_many([world.escrow.job_call(1)])


@pytest.mark.anvil
def test_an_endpoint_that_refuses_batches_is_read_one_call_at_a_time(anvil_url: str) -> None:
    world = build_world(Chain.connect(anvil_url))
    job = world.new_job(replicas=2)
    provider = world.chain.w3.provider
    batches: list[int] = []

    def refuse(requests: list[object]) -> dict[str, object]:  # what such endpoints answer a batch with
        batches.append(len(requests))
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch requests not supported"}}
    provider.make_batch_request = refuse  # type: ignore[method-assign]
    read_job, until = world.chain.read_many([world.escrow.job_call(job), world.escrow.admitted_until_call(world.csp)])
    assert batches == [2]  # asked once as a batch, then one call at a time
    assert (read_job.job_id, read_job.replicas, read_job.csp) == (job, 2, world.csp)
    assert until == world.escrow.contract.functions.admittedUntil(world.csp).call()
    assert world.escrow.get_job(job) == read_job  # a single read is never a batch
    assert batches == [2]
