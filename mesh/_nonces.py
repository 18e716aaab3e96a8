"""The node's book of the highest submission nonce seen per job, kept on disk so that a replayed
submission is refused after a restart too (``_submission``).

An append-only log, one line ``<job id> <nonce>`` per accepted submission; the highest nonce per
job wins on load. ``record`` reserves a nonce in memory at once (so two concurrent submissions of
one nonce cannot both pass); ``flush`` makes every reserved nonce durable, and the desk relays a
submission only after it. Writes are group commits in a worker thread: whoever finds the writer
idle writes every line queued so far with one fsync, and the others wait for that write. So the
event loop never blocks on the disk, and a burst of N submissions costs a few fsyncs, not N
rewrites of the whole book (a rewrite per submission made a burst of 1,000 quadratic and held the
node's loop ~25 ms each, BENCHMARKS.md "Placement").

A crash mid-append leaves a last line without its newline: it was never flushed, so nothing was
relayed on it, and it is ignored (and dropped by a compaction on load, so that the next append
starts a line of its own; a write that failed halfway at run time gets its newline before the
next one). The log is compacted (temporary file, fsync, rename) on load when it holds more than
twice as many lines as jobs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import trio

from ._errors import ConfigError

COMPACT_SLACK = 256  # lines beyond 2x the jobs a log may hold before a load compacts it


class NonceBook:
    """job id -> highest nonce seen; ``record`` only moves a job's nonce up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._highest, lines, torn = self._load()
        if torn or lines > 2 * len(self._highest) + COMPACT_SLACK:
            self._compact()  # a torn last line must not run into the next append
        self._queued: list[str] = []
        self._recorded = 0  # lines recorded since load ...
        self._durable = 0  # ... and how many of them are on disk
        self._writing = False
        self._written = trio.Event()  # set (and replaced) after each write attempt

    def _load(self) -> tuple[dict[int, int], int, bool]:
        """The highest nonce per job, the number of whole lines, and whether a torn one ends the file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}, 0, False
        except (OSError, ValueError) as exc:
            raise ConfigError(str(self.path), f"unreadable nonce book: {exc}") from exc
        lines = text.split("\n")
        highest: dict[int, int] = {}
        for number, line in enumerate(lines[:-1], 1):  # the last piece lacks its newline: unflushed
            try:
                job_id, nonce = (int(part) for part in line.split(" "))
            except ValueError:
                raise ConfigError(str(self.path), f"line {number} is not '<job id> <nonce>': {line[:80]!r}") from None
            if job_id < 0 or nonce < 0:
                raise ConfigError(str(self.path), f"line {number} has a negative number: {line[:80]!r}")
            highest[job_id] = max(nonce, highest.get(job_id, -1))
        return highest, len(lines) - 1, lines[-1] != ""

    def _compact(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(f"{job_id} {nonce}\n" for job_id, nonce in sorted(self._highest.items())))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def last(self, job_id: int) -> int | None:
        return self._highest.get(job_id)

    def record(self, job_id: int, nonce: int) -> bool:
        """Reserve ``nonce`` for ``job_id`` if it is the highest yet; True if it was. It is on disk
        once ``flush`` returns."""
        if nonce <= self._highest.get(job_id, -1):
            return False
        self._highest[job_id] = nonce
        self._queued.append(f"{job_id} {nonce}\n")
        self._recorded += 1
        return True

    async def flush(self) -> None:
        """Return once every nonce recorded so far is on disk; ``OSError`` if the write fails (the
        lines stay queued, and the next flush tries again)."""
        target = self._recorded
        while self._durable < target:
            if self._writing:
                await self._written.wait()
                continue
            self._writing = True
            batch, self._queued = self._queued, []
            try:
                await trio.to_thread.run_sync(self._append, batch)
            except BaseException:
                self._queued = batch + self._queued
                raise
            else:
                self._durable += len(batch)
            finally:
                self._writing = False
                written, self._written = self._written, trio.Event()
                written.set()

    def _append(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # an earlier write failed halfway: end its torn line first
                    lines = ["\n", *lines]
            f.write("".join(lines).encode())
            f.flush()
            os.fsync(f.fileno())
