"""The audit's reading of published epoch reports (``_audit``): files in, checked structure out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts import (
    JobId,
    JobTotals,
    MerkleTree,
    TokenUnits,
    release_leaf,
)

from ._audit_findings import Check, Finding
from ._report import EpochReport, ReportError, verify_report

# A report with no node pay has no leaves; the oracles post the root of the one zero leaf, zero.
EMPTY_PAY_ROOT = bytes(32)
AMOUNTS_NOT_VERIFIED = ("amounts from availability (a published report in the minimal format cites nothing to "
                        "recompute from)")


# ---------------------------------------------------------------------------------- published reports


@dataclass(frozen=True)
class PayLeaf:
    job_id: int
    license_id: int
    cumulative: int


@dataclass(frozen=True)
class PublishedReport:
    """The fields of a published epoch report the audit checks; ``document`` keeps every field
    (the full format in oracle/_report.py carries more) for ``verify_report_amounts``."""

    epoch: int
    root: bytes
    totals: tuple[JobTotals, ...]
    pay: tuple[PayLeaf, ...]
    source: str
    totals_root: bytes | None = None  # the full format states it too
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_document(cls, doc: Any, source: str) -> PublishedReport:
        """``ValueError`` naming the field if ``doc`` lacks the fields or their types. Totals and pay
        entries may be objects (``job_id``, ``release``, ...) or arrays in that order, as
        oracle/_report.py's ``EpochReport`` stores them."""
        if not isinstance(doc, dict):
            raise ValueError("a report is a JSON object")
        root = _hex32(doc.get("root"), "root")
        totals = tuple(JobTotals(JobId(j), TokenUnits(r), TokenUnits(f), TokenUnits(b))
                       for j, r, f, b in _rows(doc, "totals", ("job_id", "release", "refund", "burn")))
        pay = tuple(PayLeaf(j, lic, c) for j, lic, c in _rows(doc, "pay", ("job_id", "license_id", "cumulative")))
        signed = doc.get("totals_root")
        return cls(_uint(doc.get("epoch"), "epoch"), root, totals, pay, source,
                   None if signed is None else _hex32(signed, "totals_root"), doc)

    @cached_property
    def full(self) -> EpochReport | None:
        """The report in the oracles' full format, or None if it is not in it (parsed once: a
        report of 10,000 nodes takes a while, and the amounts and the inputs checks both read it)."""
        return _epoch_report(self)

    def content(self) -> tuple[bytes, tuple[JobTotals, ...], tuple[PayLeaf, ...]]:
        """What two reports for one epoch must agree on (order-free)."""
        return (self.root, tuple(sorted(self.totals, key=lambda t: t.job_id)),
                tuple(sorted(self.pay, key=lambda p: (p.job_id, p.license_id))))


def load_published_reports(paths: Iterable[Path]) -> tuple[list[PublishedReport], list[Finding]]:
    """Every ``*.json`` in the given directories, and the given files. A file named
    ``<sha256>.json`` must hash to its name (the bytes, or the canonical JSON: sorted keys, no
    spaces). Unreadable or malformed files become findings, not exceptions."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    reports: list[PublishedReport] = []
    findings: list[Finding] = []
    for f in files:
        try:
            raw = f.read_bytes()
            doc = json.loads(raw)
            report = PublishedReport.from_document(doc, str(f))
        except (OSError, ValueError) as exc:
            findings.append(Finding(Check.REPORT_MALFORMED, f"{f}: {exc}"))
            continue
        if _is_sha256(f.stem):
            canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            hashes = {hashlib.sha256(raw).hexdigest(), hashlib.sha256(canonical).hexdigest()}
            if f.stem.lower() not in hashes:
                findings.append(Finding(Check.REPORT_CONTENT_HASH, f"{f.name} holds content hashing to "
                                        f"{hashlib.sha256(raw).hexdigest()}: edited after it was published",
                                        epoch=report.epoch))
        reports.append(report)
    return reports, findings


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdefABCDEF" for c in name)


def _rows(doc: Mapping[str, Any], key: str, names: tuple[str, ...]) -> list[tuple[int, ...]]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list")
    rows: list[tuple[int, ...]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, dict):
            rows.append(tuple(_uint(entry.get(n), f"{key}[{i}].{n}") for n in names))
        elif isinstance(entry, list) and len(entry) == len(names):
            rows.append(tuple(_uint(v, f"{key}[{i}][{n}]") for n, v in enumerate(entry)))
        else:
            raise ValueError(f"{key}[{i}] must be an object with {', '.join(names)} or an array of {len(names)}")
    return rows


def _uint(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isdigit():  # large amounts may be written as decimal strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def _hex32(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) and value.startswith("0x") else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{what} must be a 0x-prefixed 32-byte hex string, not {value!r}")
    return raw


def compute_pay_root(pay: Sequence[PayLeaf]) -> bytes:
    """The Merkle root of a report's pay leaves (``EMPTY_PAY_ROOT`` for none)."""
    leaves = [release_leaf(p.job_id, p.license_id, p.cumulative) for p in pay]
    return MerkleTree(leaves).root if leaves else EMPTY_PAY_ROOT


def verify_report_amounts(report: PublishedReport, previous: PublishedReport | None, *, domain: dict[str, Any],
                          oracles: frozenset[str], threshold: int) -> list[Finding] | None:
    """Recompute every amount of ``report`` from what it cites (``oracle/_report.verify_report``:
    the signed observations, their medians, each job's price and policy, ``previous``'s cumulative
    amounts) and name what differs. ``oracles`` and ``threshold`` are the registry's at the block
    the report landed in. None (not verified) for a report in the minimal format, which cites
    nothing to recompute from. The chain inputs are taken as cited here; ``_audit_inputs`` reads
    them back at the cited block."""
    full = report.full
    if full is None:
        return None
    before = None if previous is None else previous.full
    if full.previous_id is not None and (before is None or before.content_id() != full.previous_id):
        return [Finding(Check.REPORT_AMOUNTS, f"{report.source}: builds on report {full.previous_id}, which is not "
                                              "the published report of the epoch before", epoch=report.epoch)]
    try:
        verify_report(full, domain, oracles, threshold, before)
    except ReportError as exc:
        return [Finding(Check.REPORT_AMOUNTS, f"{report.source}: {exc}", epoch=report.epoch)]
    return []


def _epoch_report(report: PublishedReport) -> EpochReport | None:
    """The report in the oracles' full format, or None if it is not in it."""
    if "observations" not in report.document:
        return None
    try:
        return EpochReport.model_validate_json(json.dumps(dict(report.document)))
    except ValidationError:
        return None


