"""The node's book of the highest submission nonce seen per job, kept on disk so that a replayed
submission is refused after a restart too (``_submission``).

One small JSON file, rewritten atomically (temporary file, fsync, rename) on every change: a crash
leaves the old book or the new one, never half of one. Submissions are rare (a CSP's deploys and
stops), so a rewrite per change costs nothing worth optimizing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ._errors import ConfigError


class NonceBook:
    """job id -> highest nonce seen; ``record`` only moves a job's nonce up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._highest: dict[int, int] = self._load()

    def _load(self) -> dict[int, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(str(self.path), f"unreadable nonce book: {exc}") from exc
        if not isinstance(raw, dict) or not all(isinstance(v, int) and v >= 0 for v in raw.values()):
            raise ConfigError(str(self.path), "nonce book is not a mapping of job id to nonce")
        try:
            return {int(k): v for k, v in raw.items()}
        except ValueError as exc:
            raise ConfigError(str(self.path), f"nonce book has a key that is not a job id: {exc}") from exc

    def last(self, job_id: int) -> int | None:
        return self._highest.get(job_id)

    def record(self, job_id: int, nonce: int) -> bool:
        """Remember ``nonce`` for ``job_id`` if it is the highest yet; True if it was."""
        if nonce <= self._highest.get(job_id, -1):
            return False
        self._highest[job_id] = nonce
        self._save()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({str(k): v for k, v in sorted(self._highest.items())}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
