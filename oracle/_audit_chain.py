"""The audit's reading of the chain (``_audit``): a deployment's whole history, into a frozen
``ChainRecord`` read at one pinned block. (The chain inputs each published report cites are read
at the block it cites, into the same record, by ``_audit_inputs``.)

Calldata is decoded against the escrow's ABI, ``multicall(bytes[])`` unwrapped (each inner call
decoded in turn, nested ones too): the escrow's clients batch ``applyTotals`` with a claim, refund,
burn or close, and a keeper may batch a report with them. A transaction sent to another contract
(a relayer, a multisig) cannot be read this way and is recorded as ``undecodable``. Transactions
whose every ``applyTotals`` entry was skipped (already applied) emit nothing and are not read: they
changed nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from contracts import (
    Chain,
    ChainError,
    ChainUnreachable,
    Claim,
    Deployment,
    Epoch,
    Job,
    JobEscrowClient,
    JobId,
    JobTotals,
    LicenseId,
    OracleRegistryClient,
    TokenClient,
    TokenUnits,
    TotalsProof,
    escrow_domain,
    to_checksum_address,
)

from ._report import ChainInputs

ESCROW_EVENTS = ("JobCreated", "JobToppedUp", "JobScaled", "JobSpecUpdated", "JobCancelled", "JobClosed",
                 "EpochSettled", "JobAllocated", "Claimed", "Forfeited", "RefundTaken",
                 "BurnExecuted")
REGISTRY_EVENTS = ("OracleAdded", "OracleRemoved", "ThresholdChanged")
# Many public JSON-RPC endpoints refuse eth_getLogs over more than 10,000 blocks.
LOG_CHUNK_BLOCKS = 10_000


# ---------------------------------------------------------------------------------- the record


@dataclass(frozen=True, order=True)
class Position:
    """Where a log sits in the chain's history (orders events across transactions and blocks)."""

    block: int
    tx_index: int
    log_index: int


@dataclass(frozen=True)
class ChainEvent:
    name: str
    args: Mapping[str, Any]
    at: Position
    tx_hash: str


@dataclass(frozen=True)
class ReportCall:
    """The arguments of one ``submitReport`` call."""

    epoch: int
    root: bytes
    totals_root: bytes
    signatures: tuple[bytes, ...]


@dataclass(frozen=True)
class PayoutCall:
    """The arguments of one ``claim`` or ``forfeit`` call."""

    function: str
    claims: tuple[Claim, ...]


@dataclass(frozen=True)
class EscrowCalls:
    """The escrow calls one transaction made, in order, ``multicall`` unwrapped: what the audit
    checks its events against (the nth ``EpochSettled`` against the nth report call, the nth
    ``Claimed`` against the nth claim of its ``claim`` calls, each ``JobAllocated`` against its
    ``applyTotals`` entry)."""

    functions: tuple[str, ...]  # every call's name, for the findings
    reports: tuple[ReportCall, ...] = ()
    payouts: tuple[PayoutCall, ...] = ()
    totals: tuple[TotalsProof, ...] = ()  # the entries of every applyTotals call, in order

    def claims_of(self, function: str) -> tuple[Claim, ...]:
        """Every claim of the ``function`` ("claim" or "forfeit") calls, in order."""
        return tuple(c for call in self.payouts if call.function == function for c in call.claims)


class InputsKey(NamedTuple):
    """What a read of the chain inputs a report cites depends on (``_audit_inputs``)."""

    epoch: int
    block: int  # the block the report cites
    nodes: frozenset[str]  # lower-case addresses


@dataclass(frozen=True)
class ChainRecord:
    """A deployment's history and its escrow's state at ``to_block``, as read from the chain."""

    deployment: Deployment
    chain_id: int
    from_block: int
    to_block: int
    oracle_registry: str  # the registry the escrow itself consults (its immutable)
    escrow_events: tuple[ChainEvent, ...]
    registry_events: tuple[ChainEvent, ...]
    calls: Mapping[str, EscrowCalls]  # by transaction hash: those of reports, payouts and applied totals
    undecodable: Mapping[str, str]  # transaction hash -> why its calldata could not be read
    from_epoch: int  # reports and totals of earlier epochs, and payouts before the first later report, not decoded
    jobs: Mapping[int, Job]  # getJob for ids 1..lastJobId
    settled_until: Mapping[int, int]  # settledUntil for ids 1..lastJobId
    roots: Mapping[int, bytes]  # rootOf per settled epoch
    totals_roots: Mapping[int, bytes]  # totalsRootOf per settled epoch
    balances: Mapping[str, int]  # the escrow's balance of each job token
    # the inputs published reports cite, read at their cited blocks, or why the chain did not serve them
    cited_inputs: Mapping[InputsKey, ChainInputs | str] = field(default_factory=dict)
    close_grace_epochs: int = 0  # the escrow's epoch clock: the grace before a close, and again for its rule
    closed_at_epoch: Mapping[int, int] = field(default_factory=dict)  # block of a JobClosed -> the escrow's epoch

    @property
    def domain(self) -> dict[str, Any]:
        return escrow_domain(self.chain_id, self.deployment.job_escrow)


def collect(chain: Chain, deployment: Deployment, *, from_epoch: int = 0, to_block: int | None = None,
            log_chunk_blocks: int = LOG_CHUNK_BLOCKS) -> ChainRecord:
    """Read everything the audit needs, pinned at ``to_block`` (default: the latest block).

    ``DeploymentError`` if the record is for another chain; ``ChainError`` if the chain fails."""
    deployment.check_chain(chain)
    head = chain.block_number() if to_block is None else to_block
    escrow = deployment.escrow(chain)
    _, registry_address = read_at(chain, escrow.contract.functions.registries(), head)
    registry = OracleRegistryClient(chain, str(registry_address))
    escrow_events = _events(chain, escrow, ESCROW_EVENTS, deployment.block, head, log_chunk_blocks)
    registry_events = _events(chain, registry, REGISTRY_EVENTS, deployment.block, head, log_chunk_blocks)

    settled = [e for e in escrow_events if e.name == "EpochSettled"]
    audited = [e for e in settled if e.args["epoch"] >= from_epoch]
    payouts_from = min((e.at for e in audited), default=Position(head + 1, 0, 0))
    wanted = {e.tx_hash for e in escrow_events
              if (e.name in ("EpochSettled", "JobAllocated") and e.args["epoch"] >= from_epoch)
              or (e.name in ("Claimed", "Forfeited") and e.at >= payouts_from)}
    calls: dict[str, EscrowCalls] = {}
    undecodable: dict[str, str] = {}
    for tx_hash in sorted(wanted):
        decoded = _decode_calls(chain, escrow, tx_hash)
        if isinstance(decoded, str):
            undecodable[tx_hash] = decoded
        else:
            calls[tx_hash] = _escrow_calls(decoded)

    last_job_id = int(read_at(chain, escrow.contract.functions.lastJobId(), head))
    job_ids = range(1, last_job_id + 1)
    jobs = {job_id: read_job_at(chain, escrow, job_id, head) for job_id in job_ids}
    settled_until = {job_id: int(read_at(chain, escrow.contract.functions.settledUntil(job_id), head))
                     for job_id in job_ids}
    epochs = sorted({int(e.args["epoch"]) for e in settled})
    roots = {epoch: bytes(read_at(chain, escrow.contract.functions.rootOf(epoch), head)) for epoch in epochs}
    totals_roots = {epoch: bytes(read_at(chain, escrow.contract.functions.totalsRootOf(epoch), head))
                    for epoch in epochs}
    balances = {token: int(read_at(chain, TokenClient(chain, token).contract.functions.balanceOf(escrow.address),
                                 head))
                for token in sorted({job.token for job in jobs.values()})}
    genesis, seconds, grace = read_at(chain, escrow.contract.functions.epochClock(), head)
    closed_at_epoch = {}
    for block in sorted({e.at.block for e in escrow_events if e.name == "JobClosed"}):
        timestamp = int(chain.w3.eth.get_block(block)["timestamp"])
        closed_at_epoch[block] = max(0, timestamp - int(genesis)) // int(seconds)  # as currentEpoch()
    return ChainRecord(deployment=deployment, chain_id=chain.chain_id, from_block=deployment.block, to_block=head,
                       oracle_registry=registry.address, escrow_events=escrow_events,
                       registry_events=registry_events, calls=calls, undecodable=undecodable, from_epoch=from_epoch,
                       jobs=jobs, settled_until=settled_until, roots=roots, totals_roots=totals_roots,
                       balances=balances, close_grace_epochs=int(grace), closed_at_epoch=closed_at_epoch)


def _events(chain: Chain, client: Any, names: Sequence[str], from_block: int, to_block: int,
            chunk: int) -> tuple[ChainEvent, ...]:
    """The contract's logs of ``names``: one eth_getLogs per chunk for all of them, decoded by topic."""
    by_topic = {_bytes(getattr(client.contract.events, n).topic): getattr(client.contract.events, n) for n in names}
    found: list[ChainEvent] = []
    start = from_block
    while start <= to_block:
        end = min(start + chunk - 1, to_block)
        try:
            logs = chain.w3.eth.get_logs({"address": client.address, "fromBlock": start, "toBlock": end})
        except Exception as exc:
            raise chain_error(chain, f"eth_getLogs {client.address} {start}..{end}", exc) from exc
        for log in logs:
            event = by_topic.get(bytes(log["topics"][0])) if log["topics"] else None
            if event is None:
                continue
            decoded = event().process_log(log)
            found.append(ChainEvent(str(decoded["event"]), _plain(decoded["args"]),
                                    Position(int(log["blockNumber"]), int(log["transactionIndex"]),
                                             int(log["logIndex"])),
                                    "0x" + bytes(log["transactionHash"]).hex()))
        start = end + 1
    return tuple(sorted(found, key=lambda e: e.at))


def _decode_calls(chain: Chain, escrow: JobEscrowClient, tx_hash: str) -> list[tuple[str, dict[str, Any]]] | str:
    """(function name, arguments) of each escrow call a transaction made, ``multicall`` unwrapped,
    or why there are none."""
    try:
        tx = chain.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except Exception as exc:
        raise chain_error(chain, f"eth_getTransactionByHash {tx_hash}", exc) from exc
    to = tx.get("to")
    if to is None or to_checksum_address(to) != escrow.address:
        return (f"transaction {tx_hash} was sent to {to}, not the escrow: its calldata is another contract's "
                f"(a relayer or multisig), which this audit cannot read")
    try:
        return decode_calls(escrow, bytes(tx["input"]))
    except Exception as exc:  # eth_abi's decoding errors
        return f"calldata of {tx_hash} does not decode against the escrow's ABI: {exc}"


def decode_calls(escrow: JobEscrowClient, data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The escrow calls ``data`` makes: itself, or each call of a ``multicall`` (which runs calls of
    the escrow on itself, in order), recursively. Raises eth_abi's errors on calldata that does not decode."""
    fn, params = escrow.contract.decode_function_input(data)
    if fn.fn_name != "multicall":
        return [(str(fn.fn_name), _plain(params))]
    return [call for inner in params["data"] for call in decode_calls(escrow, bytes(inner))]


def _escrow_calls(decoded: Sequence[tuple[str, Mapping[str, Any]]]) -> EscrowCalls:
    reports, payouts, totals = [], [], []
    for name, params in decoded:
        if name == "submitReport":
            reports.append(ReportCall(int(params["epoch"]), bytes(params["root"]), bytes(params["totalsRoot"]),
                                      tuple(bytes(s) for s in params["signatures"])))
        elif name in ("claim", "forfeit"):
            payouts.append(PayoutCall(name, tuple(_claim(c) for c in params["claims"])))
        elif name == "applyTotals":
            totals += [_totals_proof(t) for t in params["totals"]]
    return EscrowCalls(tuple(name for name, _ in decoded), tuple(reports), tuple(payouts), tuple(totals))


def _totals_proof(t: Mapping[str, Any]) -> TotalsProof:
    return TotalsProof(JobTotals(JobId(t["jobId"]), TokenUnits(t["release"]), TokenUnits(t["refund"]),
                                 TokenUnits(t["burn"])), Epoch(t["epoch"]), tuple(bytes(p) for p in t["proof"]))


def _claim(c: Mapping[str, Any]) -> Claim:
    return Claim(JobId(c["jobId"]), LicenseId(c["licenseId"]), Epoch(c["epoch"]), TokenUnits(c["cumulative"]),
                 tuple(bytes(p) for p in c["proof"]))


def read_job_at(chain: Chain, escrow: JobEscrowClient, job_id: int, block: int) -> Job:
    """``getJob(job_id)`` as the escrow answered at ``block``."""
    call = escrow.job_call(job_id)
    try:
        raw = chain.w3.eth.call({"to": call.address, "data": call.data}, block_identifier=block)  # type: ignore[typeddict-item]
    except Exception as exc:
        raise chain_error(chain, f"getJob({job_id}) at block {block}", exc) from exc
    return call.decode(bytes(raw))  # type: ignore[no-any-return]


def read_at(chain: Chain, fn: Any, block: int) -> Any:
    """A contract view call (``contract.functions.x(...)``) at ``block``; chain failures as ``ChainError``."""
    try:
        return fn.call(block_identifier=block)
    except Exception as exc:
        raise chain_error(chain, f"{fn.fn_name} at block {block}", exc) from exc


def chain_error(chain: Chain, what: str, exc: Exception) -> ChainError:
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, ConnectionError) or type(exc).__name__ in {"ConnectionError", "ReadTimeout"}:
        return ChainUnreachable(chain.url, str(exc))
    return ChainError(f"{what}: {type(exc).__name__}: {exc}")


def _plain(value: Any) -> Any:
    """web3's AttributeDicts and lists as plain dicts and lists (HexBytes as bytes)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value


def _bytes(value: str | bytes) -> bytes:
    return bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)


