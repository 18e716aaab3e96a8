"""The errors of an epoch report's round: observations (``_observation``) and reports (``_report``).

::

    ReportError                   an observation or a report the rules refuse
    ├── ObservationRejected       (oracle, reason): unsigned, foreign, of another epoch, incomplete, twice
    ├── NotEnoughObservations     (have, need): fewer usable observations than the threshold
    └── ReportMismatch            (field, detail): a report field that does not follow from what it cites
"""

from __future__ import annotations


class ReportError(Exception):
    """An observation or a report the rules refuse (module docstring: the subclasses)."""


class ObservationRejected(ReportError):
    def __init__(self, oracle: str, reason: str) -> None:
        super().__init__(f"observation of {oracle}: {reason}")
        self.oracle, self.reason = oracle, reason


class NotEnoughObservations(ReportError):
    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} usable observations, {need} needed")
        self.have, self.need = have, need


class ReportMismatch(ReportError):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"report field {field!r} does not follow from what it cites: {detail}")
        self.field, self.detail = field, detail
