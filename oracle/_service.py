"""An oracle at work: it watches the mesh and, with the other registered oracles, agrees on one
report per epoch and lands its root on chain.

Each oracle runs a mesh participant of its own (``mesh.open_node`` with its registered key) and:

1. **watches** (``_watch.Watcher``): every epoch's log of nodes up and down and replica holders;
2. once an epoch has ended (plus ``settle_s``, for the last beats to arrive), **observes** it: the
   log replayed, ``_observe.compute_observation``, signed (``_report.sign_observation``) and kept;
3. **agrees**, in rounds. Round r of epoch e is led by ``_report.leader(e, r, oracles)``; the
   leader asks every oracle for its observation over ``PROTOCOL`` (libp2p streams to the oracles'
   own participants), keeps the usable ones (``select_observations``: signed by distinct
   registered oracles, complete, not equivocating), reads the chain inputs at the latest block
   (``_inputs.read_inputs``), builds the report (``build_report``, cumulative over the previous
   settled report) and asks every oracle to sign it. A follower signs only what it re-derives
   itself (``verify_report``, and the inputs at the cited block: read as soon as it observed the
   epoch, ``prefetch``, or again if the leader cites another block) and that agrees with
   what it saw itself (``disagreement``: colluders cannot finalize with honest signatures); with t signatures,
   its own included, the leader submits the root on chain. A round that has not landed within
   ``round_s`` gives way to the next leader in line, so a silent, slow or faulty leader costs one
   round; fewer than t honest oracles finalize nothing (the epoch stays locked: SETTLEMENT.md);
4. **publishes**: every settled report is kept content-addressed (``<dir>/reports/<sha256>.json``)
   and served over ``PROTOCOL`` ("report"); an oracle that did not take part fetches it, since the
   next report builds on it.

Chain calls are blocking (web3) and go through one lock-guarded worker thread (eth-tester is not
thread-safe). Keys never leave the process and are never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_account import Account

from contracts import Chain, ChainError, Deployment, recover, reverts, sign
from mesh import ChainWorker, Message, Node, TaskStatus

from ._inputs import InputsCache, read_inputs
from ._observe import compute_observation
from ._report import (
    EpochReport,
    Observation,
    ReportError,
    build_report,
    leader,
    select_observations,
    sign_observation,
    verify_report,
)
from ._watch import EpochClock, Watcher, epoch_log, replay

log = logging.getLogger("deedmesh.oracle")

PROTOCOL = "/deedmesh/oracle/1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a report of 10,000 nodes is ~12 MB (BENCHMARKS.md)


@dataclass(frozen=True)
class OracleConfig:
    settle_s: float = 0.5  # after an epoch ends, how long until it is observed: two samples of the watcher
    round_s: float = 10.0  # a leader's time to land the root before the next one takes over
    request_s: float = 5.0  # one exchange with another oracle
    poll_s: float = 0.5  # how often the chain is asked whether an epoch landed


AVAILABILITY_TOLERANCE = 16  # of 255: how far an agreed availability may be from an oracle's own
TENURE_TOLERANCE_BPS = 600  # of the epoch: how far an agreed tenure (or alive time) may be from its own


def disagreement(report: EpochReport, own: Observation | None) -> str | None:
    """Why an oracle that watched the whole epoch (``own`` complete) will not sign ``report``: an
    agreed value further from its own than honest oracles' measurements differ (the sampling and
    the liveness detection make them differ by a few percent). With at most f oracles lying and
    the medians over more than 2f observations this never trips; when liars are as many as the
    honest oracles a median can be theirs, and then the honest oracles refuse it: colluders
    cannot finalize with honest signatures (None: no objection)."""
    if own is None or not own.complete:
        return None
    mine = dict(own.availability)
    for node, value in report.availability:
        if abs(value - mine.get(node, 0)) > AVAILABILITY_TOLERANCE:
            return f"availability of {node}: agreed {value}, seen {mine.get(node, 0)}"
    slack = (own.end_ms - own.start_ms) * TENURE_TOLERANCE_BPS // 10_000
    held = {tuple(row[:3]): tuple(row[3:]) for row in own.tenure}
    agreed_rows = {tuple(row[:3]): tuple(row[3:]) for row in report.tenure}
    width = max((len(v) for v in (*held.values(), *agreed_rows.values())), default=0)
    for key in sorted(set(held) | set(agreed_rows)):  # a replica's holder left out is a disagreement too
        agreed, seen = agreed_rows.get(key, (0,) * width), held.get(key, (0,) * width)
        if any(abs(a - b) > slack for a, b in zip(agreed, seen, strict=False)):
            return f"tenure of {key}: agreed {agreed}, seen {seen}"
    return None


def _nodes_named(rows: Iterable[Observation | EpochReport]) -> set[str]:
    """Every node an observation or report gives an availability or a tenure row for."""
    return {n for r in rows for n, _ in r.availability} | {t[2] for r in rows for t in r.tenure}


def _signature_of(answer: dict[str, Any], message: dict[str, Any]) -> tuple[str, bytes] | None:
    """(signer, signature) from a follower's answer, if the signature recovers to the signer it names."""
    signer, signature = answer.get("oracle"), answer.get("signature")
    if not isinstance(signer, str) or not isinstance(signature, str):
        return None
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        if len(raw) != 65 or recover(message, raw).lower() != signer.lower():
            return None
    except ValueError:
        return None
    return signer.lower(), raw


ChainGate = ChainWorker  # blocking chain calls, one at a time, in a worker thread (the node's own kind)


@dataclass
class Oracle:
    """One oracle (module docstring). ``private_key`` signs observations, reports and its
    ``submitReport`` transactions; ``chain`` must be able to send from it (``Chain.add_signer``)."""

    node: Node
    private_key: bytes
    chain: Chain
    deployment: Deployment
    clock: EpochClock
    directory: Path
    gate: ChainGate
    config: OracleConfig = OracleConfig()
    observations: dict[int, Observation] = field(default_factory=dict)  # epoch -> ours
    reports: dict[int, EpochReport] = field(default_factory=dict)  # epoch -> the settled report we hold
    settled: set[int] = field(default_factory=set)  # epochs the chain is past (landed, or passed over)
    led: list[tuple[int, int, str]] = field(default_factory=list)  # (epoch, round, outcome) of rounds we led
    # told each epoch's outcome: {"event": "settled", "epoch", "root", "rounds"}, {"event": "no-quorum", ...}
    # (we gave it up) or {"event": "passed-over", ...} (a later epoch landed before it: no report of its own)
    on_event: Callable[[dict[str, Any]], None] = lambda _: None

    def __post_init__(self) -> None:
        self.address = Account.from_key(self.private_key).address
        self.domain = self.deployment.escrow(self.chain).domain()
        self.watcher = Watcher(self.node, self.clock, self.directory / "watch")
        self.inputs_cache = InputsCache(self.chain, self.deployment)  # kept between epochs
        self._landed_seen: set[int] = set()  # epochs whose EpochSettled we read, up to block _events_read_to
        self._events_read_to = self.deployment.block - 1
        self._set_read: tuple[float, frozenset[str], int] | None = None  # (when, oracles, threshold)
        self.node.transport.set_handler(PROTOCOL, self.answer, max_request_bytes=MAX_MESSAGE_BYTES,
                                        timeout_s=self.config.round_s)
        (self.directory / "reports").mkdir(parents=True, exist_ok=True)
        self._load_stored()

    def _load_stored(self) -> None:
        """The settled reports kept before a restart (each is checked against the chain's root
        before it is served as settled or built on: ``_keep_settled``)."""
        for path in sorted((self.directory / "reports").glob("*.json")):
            try:
                report = EpochReport.model_validate_json(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("an unreadable stored report is ignored",
                            extra={"path": str(path), "error": str(exc)[:200]})
                continue
            if report.content_id() == path.stem:
                self.reports[report.epoch] = report

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch, and settle every epoch in order as it ends: one whose agreement ran long (no
        quorum waits for the next epoch's end) is followed at once by the next, never skipped.
        The first is the chain's next unsettled epoch or the one that just ended, whichever is
        later: older ones are the other oracles' (or were given up)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.watcher.run)
            task_status.started()
            unsettled = await self.gate.run(self.deployment.escrow(self.chain).next_epoch)
            cursor = max(int(unsettled), self.clock.epoch_at(self.node.now_ms()) - 1, 0)
            while True:
                while cursor < self.clock.epoch_at(self.node.now_ms()):
                    await self.settle(cursor)
                    cursor += 1
                _, end = self.clock.bounds(cursor)
                await trio.sleep(max(0.0, (end - self.node.now_ms()) / 1000))

    async def settle(self, epoch: int) -> None:
        """Take part in ``epoch``'s agreement until its root is on chain (module docstring, 2-4)."""
        if epoch in self.settled:
            return
        _, end = self.clock.bounds(epoch)  # the epoch's last samples are still being written for settle_s
        await trio.sleep(max(0.0, (end - self.node.now_ms()) / 1000))
        await self._oracle_set(max_age_s=0)  # meanwhile: a leader asks at once, a follower signs at once
        await trio.sleep(max(0.0, (end - self.node.now_ms()) / 1000 + self.config.settle_s))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.prefetch, epoch)
            await self._agree(epoch)

    async def prefetch(self, epoch: int) -> None:
        """Read ``epoch``'s chain inputs for the nodes we observed, at the latest block, as soon as
        we observed it: a leader citing that block (the usual case: ``InputsCache``) then builds,
        and followers check, with no chain read of their own on the way."""
        own = self.observe(epoch)
        if own is None:
            return
        nodes = _nodes_named([own])
        try:
            await self.gate.run(read_inputs, self.chain, self.deployment, epoch, nodes, None, self.inputs_cache)
        except ChainError as exc:  # the leader's and followers' own reads will say it again, where it matters
            log.debug("no early read of the chain inputs: %s", str(exc)[:200], extra={"epoch": epoch})

    async def _agree(self, epoch: int) -> None:
        self.observe(epoch)
        round_ = 0
        while not await self._landed(epoch):
            oracles, threshold = await self._oracle_set()
            if round_ >= len(oracles) or self.clock.epoch_at(self.node.now_ms()) > epoch + 1:
                # every oracle led a round, or the next epoch ended meanwhile: no quorum for this
                # one; its amounts stay locked (SETTLEMENT.md) and the agreement moves on. Expected
                # (info) when we watched too little of it ourselves: the epoch we came up in
                own = self.observe(epoch)
                watched = own is not None and own.complete
                log.log(logging.WARNING if watched else logging.INFO,
                        "no quorum for an epoch; it stays locked" if watched else
                        "no quorum for an epoch we watched too little of ourselves; it stays locked",
                        extra={"epoch": epoch, "rounds": round_})
                self.on_event({"event": "no-quorum", "epoch": epoch, "rounds": round_})
                return
            leading = leader(epoch, round_, oracles).lower() == self.address.lower()
            with trio.move_on_after(self.config.round_s) as round_scope:
                if leading:
                    outcome = await self._lead(epoch, round_, oracles, threshold)
                    self.led.append((epoch, round_, outcome))
                    log.info("led a round: %s", outcome, extra={"epoch": epoch, "round": round_, "outcome": outcome})
                    leading = False
                while not await self._landed(epoch):  # noqa: ASYNC110 (the chain has no event to wait on)
                    await trio.sleep(self.config.poll_s)
            if round_scope.cancelled_caught and leading:  # cut short inside _lead
                self.led.append((epoch, round_, "the round's time ran out"))
                log.info("led a round: its time ran out", extra={"epoch": epoch, "round": round_})
            round_ += 1
        if epoch not in await self._landed_epochs():
            # a later epoch's report landed first (reports may skip epochs): this one has no report
            # of its own; like an epoch given up, its amounts stay locked (SETTLEMENT.md). (Its root
            # cannot tell: a report with no node pay lands with a zero root too.)
            log.info("a later epoch landed first; this one has no report", extra={"epoch": epoch})
            self.on_event({"event": "passed-over", "epoch": epoch, "rounds": round_})
            return
        root = await self.gate.run(self.deployment.escrow(self.chain).root_of, epoch)
        await self._keep_settled(epoch, root)
        self.on_event({"event": "settled", "epoch": epoch, "rounds": round_, "root": "0x" + root.hex(),
                       "led": [outcome for e, _, outcome in self.led if e == epoch]})

    def observe(self, epoch: int) -> Observation | None:
        """Our signed observation of ``epoch`` (made once, from the watch log), or None if we saw none."""
        if epoch in self.observations:
            return self.observations[epoch]
        path = epoch_log(self.watcher.dir, epoch)
        if not path.exists():
            return None
        start, end = self.clock.bounds(epoch)
        seen = replay(path.read_text().splitlines(), start, end)
        observed = compute_observation(start, end, watched=seen.watched, alive=seen.alive, held=seen.held)
        self.observations[epoch] = sign_observation(self.domain, epoch, observed, self.private_key)
        return self.observations[epoch]

    # ------------------------------------------------------------------ leading
    async def _lead(self, epoch: int, round_: int, oracles: frozenset[str], threshold: int) -> str:
        escrow = self.deployment.escrow(self.chain)
        began = trio.current_time()

        def phase(name: str) -> None:  # where a leader's round goes (debug; bench_oracle's breakdown)
            log.debug("lead: %s", name, extra={"epoch": epoch, "round": round_,
                                               "at_s": round(trio.current_time() - began, 3)})
        collected = [o for o in [self.observe(epoch)] if o is not None]
        for answer in await self._ask_all(oracles, {"kind": "observation", "epoch": epoch}):
            if isinstance(answer.get("observation"), dict):
                try:
                    collected.append(Observation.model_validate_json(json.dumps(answer["observation"])))
                except ValueError:
                    continue
        phase("observations")
        start, end = self.clock.bounds(epoch)
        chosen = select_observations(collected, self.domain, oracles, epoch, start, end).observations
        if len(chosen) < threshold:
            return f"{len(chosen)} usable observations, {threshold} needed"
        previous = await self._previous(epoch)
        nodes = _nodes_named(chosen)
        phase("previous report")
        inputs = await self.gate.run(read_inputs, self.chain, self.deployment, epoch, nodes, None, self.inputs_cache)
        phase("chain inputs")
        try:
            report = build_report(epoch, chosen, inputs, previous, threshold)
        except ReportError as exc:
            return f"no report: {exc}"
        if (objection := disagreement(report, self.observe(epoch))) is not None:
            return f"our own report is not what we saw: {objection}"
        message = report.message(self.domain)
        signatures = {self.address.lower(): sign(message, self.private_key)}
        phase("report built")
        members = {o.lower() for o in oracles}
        refusals = []

        def take(answer: dict[str, Any]) -> bool:
            """Keep a follower's signature (checked here: one bad signature would revert the lot)
            or its reason to refuse; True once t signatures are in (the slowest need not be awaited)."""
            signature = _signature_of(answer, message)
            if signature is not None and signature[0] in members:
                signatures[signature[0]] = signature[1]
            elif isinstance(answer.get("error"), str):
                refusals.append(answer["error"][:200])
            return len(signatures) >= threshold

        await self._ask_all(oracles, {"kind": "sign", "report": json.loads(report.model_dump_json())}, take)
        phase("signatures")
        if len(signatures) < threshold:
            because = f" (refused: {'; '.join(sorted(set(refusals)))})" if refusals else ""
            return f"{len(signatures)} signatures, {threshold} needed{because}"
        while True:
            try:
                await self.gate.run(lambda: escrow.submit_report(epoch, report.root_bytes,
                                                                 bytes.fromhex(report.totals_root[2:]),
                                                                 list(signatures.values()), sender=self.address))
                break
            except reverts.JobEscrowEpochNotEnded as exc:
                # our clock passed the epoch's end, the chain's latest block not yet (a quiet chain
                # mines on demand): the next transaction's block is later; retry within the round
                phase(f"the chain's clock is behind: {exc}")
                await trio.sleep(self.config.poll_s)
            except ChainError as exc:
                return f"submission failed: {exc}"
        # only a report that landed: the next one builds on it. Its totals reach each job's accounts
        # when a claim, refund, burn or close applies them (escrow.applyTotals): landing costs the
        # same whatever the number of jobs (BENCHMARKS.md, end-to-end gas)
        self._store(report)
        return "submitted"

    async def _ask_all(self, oracles: frozenset[str], message: dict[str, Any],
                       enough: Callable[[dict[str, Any]], bool] = lambda _: False) -> list[dict[str, Any]]:
        """``message`` to every other oracle at once; the answers that came in time, or until
        ``enough`` (told each answer as it comes) says so."""
        answers: list[dict[str, Any]] = []
        data = json.dumps(message).encode()
        done = trio.CancelScope()

        async def ask(address: str) -> None:
            with trio.move_on_after(self.config.request_s):
                try:
                    peer = await self.node.peer_of(address)
                    raw = await self.node.transport.request(peer, PROTOCOL, data, timeout_s=self.config.request_s,
                                                            max_response_bytes=MAX_MESSAGE_BYTES)
                    answer = json.loads(raw)
                except Exception as exc:  # an oracle that is down, slow or speaks nonsense is one answer less
                    log.debug("no answer from an oracle: %s", str(exc)[:200], extra={"oracle": address})
                    return
                if isinstance(answer, dict):
                    answers.append(answer)
                    if enough(answer):
                        done.cancel()

        with done:
            async with trio.open_nursery() as nursery:
                for address in sorted(oracles):
                    if address.lower() != self.address.lower():
                        nursery.start_soon(ask, address)
        return answers

    # ------------------------------------------------------------------ answering
    async def answer(self, request: Message) -> bytes:
        """The other oracles' requests (module docstring): our observation, our signature on a
        report we re-derive, or a settled report."""
        if request.oversized:
            return json.dumps({"error": "oversized"}).encode()
        try:
            message = json.loads(request.data)
            kind, epoch = message["kind"], int(message.get("epoch", message.get("report", {}).get("epoch", -1)))
        except (ValueError, KeyError, TypeError, AttributeError):
            return json.dumps({"error": "malformed"}).encode()
        if kind == "observation":
            mine = self.observe(epoch) if epoch < self.clock.epoch_at(self.node.now_ms()) else None
            body: dict[str, Any] = ({"error": "none"} if mine is None
                                    else {"observation": json.loads(mine.model_dump_json())})
        elif kind == "sign":
            body = await self._sign(message["report"])
        elif kind == "report":
            held = self.reports.get(epoch)
            body = {"error": "none"} if held is None else {"report": json.loads(held.model_dump_json())}
        else:
            body = {"error": "unknown kind"}
        return json.dumps(body).encode()

    async def _sign(self, raw: Any) -> dict[str, Any]:
        """Sign a proposed report only if it follows from what it cites and the chain agrees."""
        try:
            report = EpochReport.model_validate_json(json.dumps(raw))
            oracles, threshold = await self._oracle_set()
            verify_report(report, self.domain, oracles, threshold, await self._previous(report.epoch))
            nodes = {n.node for n in report.inputs.nodes} | _nodes_named([report])
            ours = await self.gate.run(read_inputs, self.chain, self.deployment, report.epoch, nodes,
                                       report.inputs.block, self.inputs_cache)
            if ours != report.inputs:
                raise ReportError(f"chain inputs differ from the chain at the cited block {report.inputs.block}")
            if (objection := disagreement(report, self.observe(report.epoch))) is not None:
                raise ReportError(f"not what this oracle saw: {objection}")
        except (ReportError, ValueError, ChainError) as exc:
            log.warning("refused to sign a report: %s", str(exc)[:300])
            return {"error": str(exc)[:300]}
        return {"oracle": self.address, "signature": "0x" + sign(report.message(self.domain), self.private_key).hex()}

    # ------------------------------------------------------------------ the chain and the store
    async def _oracle_set(self, *, max_age_s: float | None = None) -> tuple[frozenset[str], int]:
        """The registered oracles and the threshold, read at most ``max_age_s`` ago (default: a
        round): each oracle reads them once as an epoch ends, not once per round and request (a
        change takes effect from the next epoch; the escrow checks the quorum itself)."""
        max_age = self.config.round_s if max_age_s is None else max_age_s
        now = trio.current_time()
        if self._set_read is None or now - self._set_read[0] > max_age:
            registry = self.deployment.oracles(self.chain)
            members = frozenset(await self.gate.run(registry.oracles))
            self._set_read = (now, members, int(await self.gate.run(registry.threshold)))
        return self._set_read[1], self._set_read[2]

    async def _landed(self, epoch: int) -> bool:
        if epoch in self.settled:
            return True
        escrow = self.deployment.escrow(self.chain)
        if await self.gate.run(escrow.next_epoch) > epoch:
            self.settled.add(epoch)
            return True
        return False

    async def _previous(self, epoch: int) -> EpochReport | None:
        """The settled report the one for ``epoch`` builds on: the latest settled epoch before it."""
        if epoch - 1 in self.reports:  # we hold only reports that landed: the usual case, no chain read
            return self.reports[epoch - 1]
        # a report with no node pay lands with a zero root: the chain's events say which landed
        earlier = max((e for e in await self._landed_epochs() if e < epoch), default=None)
        if earlier is None:
            return None
        return self.reports.get(earlier) or await self._fetch(earlier)

    async def _landed_epochs(self) -> set[int]:
        """Every epoch whose report landed (``EpochSettled``), reading only blocks not read before."""
        escrow = self.deployment.escrow(self.chain)

        def read() -> None:
            latest = self.chain.block_number()
            if latest > self._events_read_to:
                found = escrow.logs("EpochSettled", self._events_read_to + 1, latest)
                self._landed_seen.update(int(e.args["epoch"]) for e in found)
                self._events_read_to = latest
        await self.gate.run(read)
        return self._landed_seen

    async def _keep_settled(self, epoch: int, root: bytes) -> None:
        """Hold the report that landed for ``epoch`` with ``root`` (another leader's, if ours did not land)."""
        held = self.reports.get(epoch)
        if held is None or held.root_bytes != root:
            self.reports.pop(epoch, None)
            await self._fetch(epoch)

    async def _fetch(self, epoch: int) -> EpochReport | None:
        """A settled report we do not hold, from any oracle that does (checked against the chain)."""
        oracles, _ = await self._oracle_set()
        escrow = self.deployment.escrow(self.chain)
        root = await self.gate.run(escrow.root_of, epoch)
        for answer in await self._ask_all(oracles, {"kind": "report", "epoch": epoch}):
            try:
                report = EpochReport.model_validate_json(json.dumps(answer["report"]))
            except (KeyError, ValueError):
                continue
            if report.epoch == epoch and report.root_bytes == root:
                self._store(report)
                return report
        return None

    def _store(self, report: EpochReport) -> None:
        self.reports[report.epoch] = report
        path = self.directory / "reports" / f"{report.content_id()}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(report.model_dump_json())
            tmp.replace(path)
