"""Job records and claim sets over neighbour sync (memory transport, fake clock): an accepted job
reaches every node at once, a newer action replaces it everywhere, replays and forgeries are
refused and counted, and a node that cannot verify jobs does not relay them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import trio
import trio.testing
from eth_account import Account

from contracts import escrow_domain, job_submission, keccak, sign
from mesh._envelope import MAX_ENVELOPE_BYTES, canonical, seal
from mesh._jobspec import spec_hash
from mesh._jobspec_load import load_spec
from mesh._node import Node, NodeConfig
from mesh._submission import STOP, Rejected, Submission
from mesh._sync import encode_frames
from mesh._transport import MemoryNetwork
from mesh._wire_claim import MAX_CLAIMS, ClaimEntry, Claims
from mesh._wire_claim import TOPIC as CLAIMS
from mesh._wire_heartbeat import TOPIC as HEARTBEAT
from mesh._wire_job import MAX_NONCE, JobRecord, job_seq, job_subject
from mesh._wire_job import TOPIC as JOBS

from .test_node_memory import IDS, all_alive, mesh, until, wall_now

CSP_KEY = "0x" + "c5" * 32
CSP = Account.from_key(CSP_KEY).address
ESCROW = (31337, "0x" + "e5" * 20)
SPEC = load_spec(Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml")


def submission(nonce: int, spec: bytes = spec_hash(SPEC), key: str = CSP_KEY, job_id: int = 7) -> Submission:
    expiry = wall_now() // 1000 + 600
    message = job_submission(escrow_domain(*ESCROW), job_id, spec, nonce, expiry)
    return Submission(job_id=job_id, spec_hash="0x" + spec.hex(), nonce=nonce, expiry=expiry,
                      signature="0x" + sign(message, key).hex())


def line(ids: list) -> MemoryNetwork:
    network = MemoryNetwork(auto_connect=False)
    for a, b in itertools.pairwise(ids):
        network.link(a.address, b.address)
    return network


def job_of(node: Node) -> int | None:
    known = node.jobs.get((7, CSP.lower()))
    return None if known is None else known.nonce


async def test_a_job_reaches_every_node_at_once_and_a_stop_replaces_it(
        autojump_clock: trio.testing.MockClock) -> None:
    ids = IDS[:4]
    async with mesh(line(ids), ids, config=NodeConfig(target_peers=0), escrow=ESCROW) as nodes:
        await until(lambda: all_alive(nodes))
        sent = trio.current_time()
        nodes[0].announce_job(submission(1), CSP, SPEC)
        await until(lambda: all(job_of(n) == 1 for n in nodes))
        assert trio.current_time() - sent < nodes[0]._sync_delay_s  # three hops, no batching delay
        assert nodes[3].jobs[(7, CSP.lower())].spec == SPEC
        nodes[3].announce_job(submission(2, STOP), CSP, None)  # the CSP stops it through another node
        await until(lambda: all(job_of(n) == 2 for n in nodes))
        assert all(n.jobs[(7, CSP.lower())].spec is None for n in nodes)
        with pytest.raises(Rejected, match="replayed"):
            nodes[1].announce_job(submission(1), CSP, SPEC)  # the old submission, replayed elsewhere
        assert nodes[1].gossip.counters[(JOBS, "ACCEPT", "ok")] == 2


async def test_forged_job_records_are_rejected_counted_and_their_relay_cut(
        autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with mesh(network, IDS[:2], eligible={IDS[0].address, IDS[1].address, IDS[5].address},
                    escrow=ESCROW) as nodes:
        await until(lambda: all_alive(nodes))
        node, counters = nodes[0], nodes[0].gossip.counters
        relay = network.endpoint(IDS[5].address)  # a licensed node relaying records it made up

        def forged(sub: Submission, spec: dict | None, subject: str) -> bytes:
            rec = JobRecord(submission=sub, csp=CSP.lower(), spec=spec)
            return seal(IDS[5].private_key, JOBS, sub.nonce + 1, wall_now(), rec, subject=subject).encode()

        good = SPEC.model_dump(mode="json")
        records = [
            forged(submission(1, key="0x" + "d6" * 32), good, job_subject(7, CSP)),  # not the CSP's signature
            forged(submission(2, job_id=9), good | {"replicas": 3}, job_subject(9, CSP)),  # not the signed spec
            forged(submission(3), good, job_subject(8, CSP)),  # about another job than it says
            # a newer record of one job in the same frame replaces the older one unchecked
            forged(submission(4, key="0x" + "d6" * 32, job_id=11), good, job_subject(11, CSP)),
            forged(submission(5, job_id=11), good, job_subject(11, CSP)),
            # a forged record claiming to be newer does not push out the real one it races
            forged(submission(9, key="0x" + "d6" * 32, job_id=13), good, job_subject(13, CSP)),
            forged(submission(8, job_id=13), good, job_subject(13, CSP)),
            # the signed spec, but not as the CSP hashed it: a default left out parses to the same
            # spec, yet the relayed bytes must be the hashed ones
            forged(submission(1, job_id=15), {k: v for k, v in good.items() if k != "env"}, job_subject(15, CSP)),
            # bytes the CSP did sign (and fund), which are no spec
            forged(submission(1, spec=keccak(canonical(good | {"replicas": "two"})), job_id=17),
                   good | {"replicas": "two"}, job_subject(17, CSP)),
        ]
        await relay.send(IDS[0].address, encode_frames(records)[0])
        await until(lambda: counters[(JOBS, "REJECT", "wrong-owner")] == 2
                    and counters[(JOBS, "REJECT", "spec-mismatch")] == 3
                    and counters[(JOBS, "REJECT", "record-mismatch")] == 1)
        await until(lambda: IDS[5].address not in node.transport.peers())
        assert counters[("peer", "REJECT", "relayed-invalid")] == 1
        assert counters[(JOBS, "IGNORE", "superseded")] == 1
        assert {key: known.nonce for key, known in node.jobs.items()} == {(11, CSP.lower()): 5, (13, CSP.lower()): 8}
        assert job_of(nodes[1]) is None


async def test_a_node_without_the_escrow_neither_keeps_nor_relays_jobs(
        autojump_clock: trio.testing.MockClock) -> None:
    ids = IDS[:3]
    async with mesh(line(ids), ids, config=NodeConfig(target_peers=0), escrow=ESCROW,
                    no_escrow=frozenset({ids[1].address})) as nodes:
        await until(lambda: all_alive(nodes))
        nodes[0].announce_job(submission(1), CSP, SPEC)
        await until(lambda: nodes[1].gossip.counters[(JOBS, "IGNORE", "no-escrow")] >= 1)
        # node 0's next heartbeat came through node 1 to node 2: had node 1 kept the job, it would be there too
        beat = nodes[0].store.seq_of(HEARTBEAT, ids[0].address)
        await until(lambda: nodes[2].store.seq_of(HEARTBEAT, ids[0].address) > beat)
        assert job_of(nodes[1]) is None
        assert job_of(nodes[2]) is None


async def test_claim_sets_reach_every_node(autojump_clock: trio.testing.MockClock) -> None:
    async with mesh(MemoryNetwork(), IDS[:3], escrow=ESCROW) as nodes:
        await until(lambda: all_alive(nodes))
        claims = Claims.of((ClaimEntry(job_id=7, replica=0, generation=1, lease_until_ms=wall_now() + 30_000),))
        nodes[1].set_claims(claims)
        await until(lambda: all(n.claims.get(IDS[1].address) == claims for n in nodes))
        assert nodes[0].claims[IDS[1].address].as_claims(IDS[1].address)[0].node == IDS[1].address


def test_a_claim_set_names_each_replica_once_and_stays_small() -> None:
    entry = ClaimEntry(job_id=7, replica=0, generation=1, lease_until_ms=1)
    with pytest.raises(ValueError, match="two entries for one replica"):
        Claims.of((entry, entry.model_copy(update={"generation": 2})))
    with pytest.raises(ValueError, match=f"at most {MAX_CLAIMS}"):
        Claims.of(ClaimEntry(job_id=j, replica=0, generation=1, lease_until_ms=1) for j in range(1, MAX_CLAIMS + 2))
    with pytest.raises(ValueError, match="share one lease"):
        Claims.of((entry, entry.model_copy(update={"replica": 1, "lease_until_ms": 2})))
    # a full set of a busy node (job ids an escrow counts up to, late generations, restarts) is one
    # record: compact entries, one lease
    full = Claims.of(ClaimEntry(job_id=10**9 + j, replica=j % 64, generation=999, lease_until_ms=2**62,
                                state="oom-killed", restarts=99_999) for j in range(MAX_CLAIMS))
    raw = seal(IDS[0].private_key, CLAIMS, 1, 1, full).encode()
    assert len(raw) < MAX_ENVELOPE_BYTES
    assert json.loads(raw)["payload"]["entries"][0] == [10**9, 0, 999, "oom-killed", 99_999]
    again = Claims.model_validate_json(canonical(json.loads(raw)["payload"]))
    assert again == full
    assert again.claims[5] == full.claims[5] == ClaimEntry(job_id=10**9 + 5, replica=5, generation=999,
                                                           lease_until_ms=2**62, state="oom-killed", restarts=99_999)


async def test_a_nonce_beyond_what_a_record_can_order_is_malformed() -> None:
    assert job_seq(submission(MAX_NONCE)) == MAX_NONCE + 1
    with pytest.raises(Rejected, match="malformed"):
        job_seq(submission(MAX_NONCE + 1))
