"""The latest settled report, from wherever it is kept, checked against the chain: what
``deedmesh claim``, ``refund`` and ``burn`` (``_settle``) settle against.

The report comes from files (an oracle's ``<dir>/reports``, or copies of it) or from oracles over
libp2p (``/deedmesh/oracle/1``, ``{"kind": "report"}``); it is used only if its epoch is the latest
settled one and both its node pay and its job totals hash to the roots the chain holds for it, so
a stale, forged or corrupted report cannot cost a reverted transaction.

Errors, beside the chain's (``contracts.ChainError``) and the mesh's (``mesh.MeshError``)::

    SettleError                  a settlement command cannot go on (``exit_code`` for the CLI)
    ├── ReportUnavailable        (epoch, failures): no source had the epoch's report; exit 9
    ├── ReportRootMismatch       (epoch, refusals): reports were found, none matches the chain; exit 16
    └── TargetRefused            (kind, number, reason): a --job or --license that cannot be settled; exit 2
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from contracts import Chain, ChainError, ChainUnreachable, Deployment, Event
from mesh import MeshError, request_once

from ._report import EMPTY_ROOT, NO_TOTALS, EpochReport
from ._service import MAX_MESSAGE_BYTES, PROTOCOL

log = logging.getLogger("deedmesh.settle")

EXIT_REPORT_UNAVAILABLE = 9  # deedmesh's "node error (or a node unreachable)"
EXIT_REPORT_MISMATCH = 16
EXIT_TARGET_REFUSED = 2  # a bad --job or --license is a usage error


@dataclass(frozen=True)
class Settled:
    """A settled epoch as the escrow holds it: the root of node pay and the root of job totals."""

    epoch: int
    root: bytes
    totals_root: bytes


# ------------------------------------------------------------------ errors


class SettleError(Exception):
    """A settlement command cannot go on (module docstring: the subclasses)."""

    exit_code = 1


class ReportUnavailable(SettleError):
    """No source served a report of ``epoch``; ``failures``: (source, why) for each one tried."""

    exit_code = EXIT_REPORT_UNAVAILABLE

    def __init__(self, epoch: int, failures: Sequence[tuple[str, str]]) -> None:
        tried = "; ".join(f"{source}: {why}" for source, why in failures) or "no source given"
        super().__init__(f"no report of epoch {epoch} (the latest settled) from any source: {tried}")
        self.epoch, self.failures = epoch, tuple(failures)


class ReportRootMismatch(SettleError):
    """Reports of ``epoch`` were found and every one was refused; ``refusals``: (source, why)."""

    exit_code = EXIT_REPORT_MISMATCH

    def __init__(self, epoch: int, refusals: Sequence[tuple[str, str]],
                 failures: Sequence[tuple[str, str]] = ()) -> None:
        shown = "; ".join(f"{source}: {why}" for source, why in refusals)
        others = "".join(f"; {source}: {why}" for source, why in failures)
        super().__init__(f"refused every report of epoch {epoch} (nothing was sent): {shown}{others}")
        self.epoch, self.refusals, self.failures = epoch, tuple(refusals), tuple(failures)


class TargetRefused(SettleError):
    """A job or license named on the command line that this command cannot settle: unknown, or
    (refunds) not the CSP's. Checked before anything is sent."""

    exit_code = EXIT_TARGET_REFUSED

    def __init__(self, kind: str, number: int, reason: str) -> None:
        super().__init__(f"{kind} {number}: {reason}")
        self.kind, self.number, self.reason = kind, number, reason


# ------------------------------------------------------------------ reports


def refusal(report: EpochReport, settled: Settled) -> str | None:
    """Why ``report`` cannot be settled against ``settled`` (None: it can). Its pay and its totals
    are hashed again: a report whose root fields are right but whose amounts were edited would
    only make the whole transaction revert."""
    if report.epoch != settled.epoch:
        return f"it is the report of epoch {report.epoch}"
    if report.root_bytes != settled.root:
        return f"its root {report.root} is not the chain's 0x{settled.root.hex()}"
    if report.totals_root_bytes != settled.totals_root:
        return f"its totals root {report.totals_root} is not the chain's 0x{settled.totals_root.hex()}"
    tree = report.tree
    if (tree.root if tree is not None else EMPTY_ROOT) != settled.root:
        return "its pay rows do not hash to its root (edited)"
    totals = report.totals_tree
    if (totals.root if totals is not None else NO_TOTALS) != settled.totals_root:
        return "its totals rows do not hash to its totals root (edited)"
    return None


@dataclass
class _Search:
    """The outcome of looking for one epoch's report across sources."""

    settled: Settled
    failures: list[tuple[str, str]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return self.settled.epoch

    def judge(self, report: EpochReport, source: str) -> bool:
        why = refusal(report, self.settled)
        if why is not None:
            log.warning("refused a report: %s", why, extra={"source": source, "epoch": self.epoch})
            self.refusals.append((source, why))
        return why is None

    def error(self) -> SettleError:
        if self.refusals:
            return ReportRootMismatch(self.epoch, self.refusals, self.failures)
        return ReportUnavailable(self.epoch, self.failures)


def _report_files(paths: Iterable[Path]) -> list[Path]:
    """The ``*.json`` of the given directories and the given files, newest first (the latest
    settled report is usually the newest file: one is parsed, not the whole history)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return sorted(files, key=lambda f: f.stat().st_mtime if f.exists() else 0.0, reverse=True)


def _from_files(search: _Search, paths: Sequence[Path]) -> tuple[EpochReport, str] | None:
    files = _report_files(paths)
    newest: int | None = None
    for path in files:
        try:
            report = EpochReport.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.debug("not a report file", extra={"path": str(path), "error": str(exc)[:200]})
            continue
        newest = report.epoch if newest is None else max(newest, report.epoch)
        if report.epoch == search.epoch and search.judge(report, str(path)):
            return report, str(path)
    if not search.refusals:
        where = ", ".join(str(p) for p in paths)
        there = "" if newest is None else f" (the newest there is of epoch {newest})"
        search.failures.append((where, f"none of {len(files)} files is a report of epoch {search.epoch}{there}"))
    return None


async def fetch_report(oracles: Sequence[str], settled: Settled, *, timeout_s: float) -> tuple[EpochReport, str]:
    """The report of ``settled`` from the first of ``oracles`` (multiaddrs ending in
    ``/p2p/<peer id>``), asked in turn, whose answer matches it (``refusal``), and that oracle.
    ``ReportRootMismatch`` if some answered with reports and none matched, else
    ``ReportUnavailable`` naming why each failed."""
    search = _Search(settled)
    found = await _from_oracles(search, oracles, timeout_s)
    if found is None:
        raise search.error()
    return found


async def _from_oracles(search: _Search, oracles: Sequence[str],
                        timeout_s: float) -> tuple[EpochReport, str] | None:
    request = json.dumps({"kind": "report", "epoch": search.epoch}).encode()
    for oracle in oracles:
        try:
            raw = await request_once(oracle, PROTOCOL, request, timeout_s=timeout_s,
                                     max_response_bytes=MAX_MESSAGE_BYTES)
        except MeshError as exc:
            search.failures.append((oracle, str(exc)))
            continue
        try:
            answer = json.loads(raw)
            if not isinstance(answer, dict) or "report" not in answer:
                why = answer.get("error", "?") if isinstance(answer, dict) else "?"
                search.failures.append((oracle, f"does not serve it (answered {str(why)[:100]!r})"))
                continue
            report = EpochReport.model_validate_json(json.dumps(answer["report"]))
        except ValueError as exc:
            search.failures.append((oracle, f"answered something that is not a report: {str(exc)[:200]}"))
            continue
        if search.judge(report, oracle):
            return report, oracle
    return None


def find_report(settled: Settled, *, report_paths: Sequence[Path] = (), oracles: Sequence[str] = (),
                timeout_s: float = 30.0) -> tuple[EpochReport, str]:
    """The report of ``settled`` (``refusal``) and where it came from: the files first (no
    network), then the oracles in turn. Raises as ``fetch_report``. Not callable from inside a
    trio run (the oracles are asked in one of its own)."""
    search = _Search(settled)
    found = _from_files(search, report_paths) if report_paths else None
    if found is None and oracles:
        found = trio.run(_from_oracles, search, oracles, timeout_s)
    if found is None:
        raise search.error()
    return found


# ------------------------------------------------------------------ the chain


def read_logs(client: Any, event: str, from_block: int) -> list[Event]:
    """``client.logs``, with web3's own errors (it reads logs past ``Chain``'s translation) turned
    into ``ChainError``s: a chain gone down mid-command is "unreachable", not a traceback."""
    try:
        return list(client.logs(event, from_block))
    except ChainError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) or type(exc).__name__ in {"ConnectionError", "ReadTimeout"}:
            raise ChainUnreachable(client.chain.url, str(exc)) from exc
        raise ChainError(f"reading {event} events: {type(exc).__name__}: {exc}") from exc


def latest_settled(chain: Chain, deployment: Deployment) -> Settled | None:
    """The latest settled epoch (by the escrow's ``EpochSettled`` events: a report with no node
    pay lands with a zero root) and the roots the escrow holds for it; None before the first."""
    escrow = deployment.escrow(chain)
    events = read_logs(escrow, "EpochSettled", deployment.block)
    if not events:
        return None
    last = max(events, key=lambda e: int(e.args["epoch"]))
    return Settled(int(last.args["epoch"]), bytes(last.args["root"]), bytes(last.args["totalsRoot"]))
