"""Job logs through any node, on the memory transport and trio's fake clock: a node that holds no
replica gathers every replica's log from its holders; forged, tampered, expired, foreign and
malformed requests are refused with their statuses, by the node asked and again by each holder;
a holder that is down, stuck, without a runner or with a failing engine is a clear per-replica
error. Also: the LogRequest digest pinned by an independent EIP-712 computation, and ``clip``."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from docker.errors import APIError
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from contracts import digest, escrow_domain, job_submission, sign
from mesh._jobspec import spec_hash
from mesh._logs import PROTOCOL, LogConfig, LogDesk, LogFetch, LogReader, clip
from mesh._node import Node
from mesh._submission import MAX_LOG_VALIDITY_S, Submission, log_request_message, sign_log_request
from mesh._transport import MemoryNetwork

from .test_job_check import ChainSays
from .test_jobs_gossip import CSP, CSP_KEY, ESCROW
from .test_node_memory import until, wall_now
from .test_scheduler import SPEC, announce, placed, scheduled

# logs are read in worker threads; the fake clock jumps while they run, so ordinary tests give the
# engine and holders deadlines far out of reach (the tests of those deadlines use the defaults)
FAR = LogConfig(engine_timeout_s=3600, holder_timeout_s=7200)
OTHER_KEY = "0x" + "d7" * 32
READS: list[tuple[str, int, int, int]] = []  # (reading node, job, replica, tail)


def reader(address: str) -> LogReader:
    def read(job_id: int, replica: int, tail: int) -> str:
        READS.append((address, job_id, replica, tail))
        return "".join(f"{address} job {job_id} replica {replica} line {n}\n" for n in range(tail))

    return read


def expected(holder: str, replica: int, tail: int = 3) -> str:
    return "".join(f"{holder} job 7 replica {replica} line {n}\n" for n in range(tail))


def install(node: Node, read: LogReader | None, config: LogConfig = FAR) -> LogDesk:
    """A log desk on ``node``, answering holders' requests (replaces any earlier one)."""
    desk = LogDesk(node, *ESCROW, read, now_s=lambda: wall_now() // 1000, config=config)
    node.transport.set_handler(PROTOCOL, desk.serve, max_request_bytes=config.max_request_bytes,
                               timeout_s=config.holder_timeout_s)
    return desk


@asynccontextmanager
async def placed_job(network: MemoryNetwork, n: int = 3) -> AsyncIterator[tuple[list[Node], dict[int, str], Node]]:
    """``n`` scheduled nodes with log desks, job 7 (2 replicas) placed: the nodes, replica ->
    holder, and a node that holds none."""
    READS.clear()
    async with scheduled(network, n) as nodes:
        for node in nodes:
            install(node, reader(node.address))
        announce(nodes[0], 1, SPEC)
        await until(lambda: (p := placed(nodes)) is not None and len(p) == 2)
        where = placed(nodes)
        assert where is not None
        bystander = next(node for node in nodes if node.address not in where.values())
        yield nodes, where, bystander


def signed(replica: int | None = None, tail: int = 3, key: str = CSP_KEY, expiry: int | None = None,
           job_id: int = 7) -> dict[str, Any]:
    until_s = wall_now() // 1000 + 60 if expiry is None else expiry
    return sign_log_request(bytes.fromhex(key[2:]), *ESCROW, job_id, replica, tail, until_s).model_dump()


def by(nodes: list[Node], address: str) -> Node:
    return next(n for n in nodes if n.address == address)


async def test_a_node_holding_no_replica_gathers_every_replica_from_its_holder(
        autojump_clock: trio.testing.MockClock) -> None:
    async with placed_job(MemoryNetwork()) as (nodes, where, bystander):
        desk = install(bystander, reader(bystander.address))
        status, answer = await desk.read(7, signed())
        assert status == 200, answer
        assert answer == {"job_id": 7, "replicas": [
            {"replica": r, "node": where[r], "logs": expected(where[r], r), "truncated": False} for r in (0, 1)]}
        # each holder read its own replica, with the tail asked for; the node asked read nothing
        assert sorted(READS) == sorted((where[r], 7, r, 3) for r in (0, 1))
        # one replica, through the holder of the other: read over the mesh, not locally
        READS.clear()
        other = install(by(nodes, where[1]), reader(where[1]))
        status, answer = await other.read(7, signed(replica=0, tail=5))
        assert (status, answer["replicas"]) == (200, [{"replica": 0, "node": where[0],
                                                       "logs": expected(where[0], 0, 5), "truncated": False}])
        assert [(where[0], 7, 0, 5)] == READS
        # and a replica through its own holder: read locally
        READS.clear()
        status, answer = await other.read(7, signed(replica=1))
        assert (status, answer["replicas"][0]["logs"]) == (200, expected(where[1], 1))
        assert [(where[1], 7, 1, 3)] == READS


def high_s(signature: str) -> str:
    """The malleable twin of a signature (s -> n - s, v flipped): valid math, refused as non-canonical."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    raw = bytes.fromhex(signature[2:])
    s = n - int.from_bytes(raw[32:64], "big")
    return "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes([55 - raw[64]])).hex()


async def test_requests_are_refused_with_their_status_by_the_node_asked(
        autojump_clock: trio.testing.MockClock) -> None:
    async with placed_job(MemoryNetwork()) as (nodes, _where, bystander):
        desk = install(bystander, reader(bystander.address))
        now_s = wall_now() // 1000
        good = signed()
        cases: list[tuple[int, dict[str, Any], int, str]] = [
            (7, signed(key=OTHER_KEY), 403, "wrong-owner"),  # signed by someone else
            (7, good | {"tail": 4}, 403, "wrong-owner"),  # tampered: recovers to another address
            (7, good | {"signature": high_s(good["signature"])}, 401, "bad-signature"),
            (7, good | {"signature": "0x" + "00" * 65}, 401, "bad-signature"),
            (7, signed(expiry=now_s), 410, "expired"),
            (7, signed(expiry=now_s + MAX_LOG_VALIDITY_S + 1), 422, "expiry-too-far"),
            (8, signed(job_id=8), 404, "unknown-job"),
            (7, signed(job_id=8), 422, "malformed"),  # the path names another job
            (7, signed(replica=5), 404, "no-replica"),
            (7, {"job_id": 7, "tail": 3}, 422, "malformed"),
            (7, good | {"tail": 0}, 422, "malformed"),
        ]
        for job_id, request, status, reason in cases:
            got = await desk.read(job_id, request)
            assert (got[0], got[1]["error"]) == (status, reason), (request, got)
        assert READS == []  # nothing was read for any of them
        # a second CSP naming the job (a forged record only a licensed node could relay): nobody
        # can tell the owner without the chain, so nobody reads
        other = Account.from_key(OTHER_KEY).address
        expiry = wall_now() // 1000 + 600
        sub = Submission(job_id=7, spec_hash="0x" + spec_hash(SPEC).hex(), nonce=5, expiry=expiry,
                         signature="0x" + sign(job_submission(escrow_domain(*ESCROW), 7, spec_hash(SPEC), 5, expiry),
                                               OTHER_KEY).hex())
        nodes[0].announce_job(sub, other, SPEC)
        await until(lambda: len([k for k in bystander.jobs if k[0] == 7]) == 2)
        got = await desk.read(7, signed())
        assert (got[0], got[1]["error"]) == (409, "job-contested")
        assert READS == []
        # once the nodes' chain checks have read both records, the owner reads and the forger does not
        for node in nodes:
            node.chain_check = check = ChainSays({(7, CSP.lower()): True, (7, other.lower()): False})
            check.want(k for k in node.jobs.values() if k.job_id == 7)
        got = await desk.read(7, signed(key=OTHER_KEY))
        assert (got[0], got[1]["error"]) == (403, "wrong-owner")
        assert "on chain" in got[1]["message"]
        assert READS == []
        got = await desk.read(7, signed())
        assert got[0] == 200, got
        assert READS != []  # the owner's request was read


async def test_a_stopped_job_has_no_logs(autojump_clock: trio.testing.MockClock) -> None:
    async with placed_job(MemoryNetwork()) as (nodes, _where, bystander):
        desk = install(bystander, reader(bystander.address))
        announce(nodes[0], 2, None)
        await until(lambda: bystander.jobs[(7, CSP.lower())].spec is None)
        got = await desk.read(7, signed())
        assert (got[0], got[1]["error"]) == (404, "no-replica")
        assert "stopped" in got[1]["message"]


async def test_holders_check_the_request_against_their_own_view(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with placed_job(network) as (_nodes, where, bystander):
        async def ask(transport: Any, fetch: dict[str, Any] | bytes) -> tuple[int, str]:
            data = fetch if isinstance(fetch, bytes) else LogFetch.model_validate(fetch).model_dump_json().encode()
            raw = await transport.request(where[0], PROTOCOL, data, timeout_s=10, max_response_bytes=1 << 20)
            answer = json.loads(raw)
            return answer["status"], answer["body"].get("error") or answer["body"]["logs"]

        mine = bystander.transport
        assert await ask(mine, {"request": signed(), "replica": 0, "max_bytes": 1000}) == (200, expected(where[0], 0))
        # a licensed node relaying a forged request: the holder checks the signature itself
        assert await ask(mine, {"request": signed(key=OTHER_KEY), "replica": 0, "max_bytes": 1000}) == (
            403, "wrong-owner")
        # a request signed for replica 1 does not open replica 0
        assert await ask(mine, {"request": signed(replica=1), "replica": 0, "max_bytes": 1000}) == (
            422, "malformed")
        assert await ask(mine, b"{not json") == (422, "malformed")
        assert await ask(mine, b"x" * 5000) == (413, "too-large")
        # a job the holder does not know (the asker's word is not enough)
        assert await ask(mine, {"request": signed(job_id=8), "replica": 0, "max_bytes": 1000}) == (
            404, "unknown-job")
        # a client (not a node) is sent to a node's API instead
        client = network.endpoint("cli-client")
        assert await ask(client, {"request": signed(), "replica": 0, "max_bytes": 1000}) == (403, "not-a-node")
        assert client.local_id not in bystander.transport.peers()  # a client is no mesh peer
        # the answer is clipped to the budget the asker gave, newest lines kept
        status, logs = await ask(mine, {"request": signed(tail=100), "replica": 0, "max_bytes": 200})
        assert status == 200
        assert expected(where[0], 0, 100).endswith(logs)
        assert 0 < len(logs) <= 198  # 200 bytes of JSON: the quotes and escapes count
        assert [r for r in READS if r[0] == where[0]][-1] == (where[0], 7, 0, 100)


async def test_a_holder_down_stuck_or_without_a_working_engine_is_a_clear_error(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with placed_job(network) as (nodes, where, bystander):
        desk = install(bystander, reader(bystander.address), LogConfig())  # the real deadlines

        async def outcome(replica: int | None = None) -> tuple[int, list[tuple[int, str]]]:
            status, answer = await desk.read(7, signed(replica=replica))
            return status, [(r["replica"], r.get("error") or r["logs"]) for r in answer["replicas"]]

        # holder of replica 0 has no runner; holder of replica 1's engine fails
        install(by(nodes, where[0]), None)

        def broken(job_id: int, replica: int, tail: int) -> str:
            raise APIError("engine exploded")

        install(by(nodes, where[1]), broken)
        assert await outcome() == (503, [(0, "no-runner"), (1, "runner-failed")])
        # the engine hangs: the holder gives up after engine_timeout_s and says so
        release = threading.Event()

        def hung(job_id: int, replica: int, tail: int) -> str:
            release.wait(30)
            return "too late"

        install(by(nodes, where[1]), hung, LogConfig())
        started = trio.current_time()
        assert await outcome(1) == (502, [(1, "runner-failed")])
        assert trio.current_time() - started == pytest.approx(LogConfig().engine_timeout_s, abs=0.01)
        release.set()
        # the holder is stuck (its handler never answers): the asker's deadline, 504
        install(by(nodes, where[1]), reader(where[1]))

        async def stuck(msg: Any) -> bytes:
            await trio.sleep_forever()
            raise AssertionError

        by(nodes, where[0]).transport.set_handler(PROTOCOL, stuck, max_request_bytes=4096, timeout_s=3600)
        started = trio.current_time()
        assert await outcome() == (200, [(0, "holder-timeout"), (1, expected(where[1], 1))])  # one of two: 200
        assert trio.current_time() - started == pytest.approx(LogConfig().holder_timeout_s, abs=0.01)
        # the holder is cut off: 502 at once, naming it
        network.partition({where[0]}, {n.address for n in nodes} - {where[0]})
        started = trio.current_time()
        status, answer = await desk.read(7, signed(replica=0))
        assert (status, answer["error"]) == (502, "holder-unreachable")
        assert where[0] in answer["message"]
        assert trio.current_time() == started


def test_the_log_request_digest_is_eip712_over_the_escrow_domain() -> None:
    chain_id, escrow = ESCROW
    message = log_request_message(chain_id, escrow, 7, None, 100, 1_850_000_000)

    def h(text: str) -> bytes:
        return keccak(text.encode())

    domain = keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint256", "address"], [
        h("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
        h("deedmesh JobEscrow"), h("1"), chain_id, to_checksum_address(escrow)]))
    struct = keccak(abi_encode(["bytes32", "uint256", "uint8", "uint32", "uint64"], [
        h("LogRequest(uint256 jobId,uint8 replica,uint32 tail,uint64 expiry)"), 7, 255, 100, 1_850_000_000]))
    assert digest(message) == keccak(b"\x19\x01" + domain + struct)
    # pinned: a change to the type or the domain is a protocol change
    assert digest(message).hex() == "880f61cfb71ec16a8df1b1bd05d4871dcb129f40044b3ea3ce11014c13bb053a"
    assert escrow_domain(chain_id, escrow) == message["domain"]


def test_clip_keeps_the_newest_text_within_the_json_budget() -> None:
    assert clip("short", 100) == ("short", False)
    text, cut = clip("".join(f"line {n}\n" for n in range(1000)), 100)
    assert cut
    assert text.endswith("line 999\n")
    assert 90 <= len(json.dumps(text)) <= 100  # as much as fits
    text, cut = clip("é\x00" * 1000, 100)  # escapes: 6 bytes of JSON for 1 or 2 of text
    assert cut
    assert text.endswith("é\x00")
    assert 88 <= len(json.dumps(text)) <= 100
    assert clip("é" * 10, 2) == ("", True)
