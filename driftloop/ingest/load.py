"""Load JSONL files into the database without a broker (``driftloop load``).

Every line goes through the code the Kafka consumer uses (:class:`driftloop.ingest.step.DecodeWriteStep`):
the same decoder, limits and redaction, the same batch writer with its ``request_id`` and feedback
event-key deduplication, and the same ``rejected_messages`` rows for lines that can never be stored.
A file is treated as one partition of a topic named after it (``file:<absolute path>``, ``stdin`` for
``-``) whose offsets are line numbers, so a reject row says which line it was; loading a file again
stores nothing twice (rejects included: they are keyed by source, line and content). There is no
dead-letter topic: a reject row's ``dlq_topic`` and ``dlq_status`` stay empty. No consumer offsets
are written (a file is not a Kafka partition).
"""

from __future__ import annotations

import gzip
import io
import queue
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftloop.ingest.dlq import DeadLetterSender, DlqItem
from driftloop.ingest.step import (
    BatchAbandoned,
    BatchWritten,
    DecodeWriteStep,
    Event,
    RawBatch,
    RawChunk,
    StepFailed,
    WriteRetried,
)
from driftloop.settings import Settings

#: reject details kept for the report (the counts are always complete)
MAX_REJECT_DETAILS = 1000
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class RejectedLine:
    """A line that was rejected: where it is, and why."""

    source: str
    line: int
    reason: str
    detail: str


@dataclass
class LoadStats:
    """What a load did (stored and duplicates count interaction records)."""

    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    feedback: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejects: list[RejectedLine] = field(default_factory=list)  # the first MAX_REJECT_DETAILS

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_reason.items()))
        return (f"read {self.lines} line(s): stored {self.stored}, duplicates {self.duplicates}, "
                f"feedback {self.feedback}, rejected {self.rejected}" + (f" ({reasons})" if reasons else ""))  # fmt: skip


class _NoDeadLetters(DeadLetterSender):
    """Stands in for the dead-letter sender: a file has no dead-letter topic; rejects are noted for the report."""

    def __init__(self, stats: LoadStats) -> None:
        super().__init__(make_producer=lambda: None, topic="", timeout_s=0.0)
        self.stats = stats

    def send(self, item: DlqItem) -> None:
        item.row["dlq_topic"] = None
        item.done = True
        if len(self.stats.rejects) < MAX_REJECT_DETAILS:
            r = item.row
            self.stats.rejects.append(RejectedLine(r["source_topic"], int(r["source_offset"]), r["reason"], r["error"]))

    def settle(self, items: Iterable[DlqItem]) -> None:
        return None

    def close(self) -> None:
        return None


def source_name(path: str) -> str:
    """The topic name a file's rows and rejects are stored under."""
    return "stdin" if path == "-" else f"file:{Path(path).resolve()}"[:255]


def _open(path: str) -> gzip.GzipFile | io.BufferedReader:
    """The file (or stdin for ``-``), decompressed when it is gzip (by its first bytes, not its name)."""
    raw: Any = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed by the caller
    buf = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
    return gzip.GzipFile(fileobj=buf) if buf.peek(2)[:2] == _GZIP_MAGIC else buf


def numbered_lines(f: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its end) of every non-blank line."""
    for n, line in enumerate(f, start=1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield n, line


class Loader:
    """Feeds files to one DecodeWriteStep, at most two batches in flight, and collects what happened."""

    def __init__(self, settings: Settings, engine: Any = None, *, progress: Callable[[str], None] | None = None,
                 progress_every_s: float = 5.0) -> None:  # fmt: skip
        self.stats = LoadStats()
        self.events: queue.Queue[Event] = queue.Queue()
        self.step = DecodeWriteStep(settings, self.events.put, engine)
        self._own_engine = engine is None
        self.batch_size = settings.ingest.batch_size
        self.progress = progress
        self.progress_every_s = progress_every_s
        self._in_flight = 0
        self._seq = 0
        self._last_progress = time.monotonic()

    def load(self, paths: Iterable[str]) -> LoadStats:
        """Load every file in order; raises RuntimeError if the writer fails (nothing half-written)."""
        self.step.start()
        self.step.dlq = _NoDeadLetters(self.stats)  # before the first batch: the worker has none yet
        try:
            for path in paths:
                with _open(path) as f:
                    self._load_one(source_name(path), numbered_lines(f))
            while self._in_flight:
                self._handle(self.events.get())
        finally:
            self.step.close(timeout_s=60.0)
            if self._own_engine:
                self.step.engine.dispose()
        return self.stats

    def _load_one(self, name: str, lines: Iterator[tuple[int, bytes]]) -> None:
        chunk = RawChunk(name, 0, [], [], [], [])
        for n, line in lines:
            chunk.offsets.append(n)
            chunk.values.append(line)
            if len(chunk.values) >= self.batch_size:
                self._submit(chunk)
                chunk = RawChunk(name, 0, [], [], [], [])
        if chunk.values:
            self._submit(chunk)

    def _submit(self, chunk: RawChunk) -> None:
        n = len(chunk.values)
        chunk.timestamps[:] = [-1] * n  # no broker timestamp: a record without one is stamped now
        chunk.keys[:] = [None] * n
        self._seq += 1
        self.stats.lines += n
        self.step.submit(RawBatch(self._seq, 0, [chunk], {}, n))  # no offsets: a file is not a partition
        self._in_flight += 1
        while self._in_flight >= 2:
            self._handle(self.events.get())

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, StepFailed):
            raise RuntimeError(f"loading stopped: {ev.error}")
        if isinstance(ev, WriteRetried) and self.progress:
            self.progress(f"database write failed ({ev.error}); retry {ev.attempt} in {ev.delay_s:.1f}s")
        if isinstance(ev, BatchAbandoned):
            raise RuntimeError(f"a batch of {ev.n_messages} lines could not be written")
        if not isinstance(ev, BatchWritten):
            return
        self._in_flight -= 1
        s = self.stats
        s.stored += ev.inserted
        s.duplicates += ev.duplicates
        s.feedback += ev.feedback_inserted
        for k, v in ev.rejected_by_reason.items():
            s.rejected_by_reason[k] = s.rejected_by_reason.get(k, 0) + v
        if self.progress and time.monotonic() - self._last_progress >= self.progress_every_s:
            self._last_progress = time.monotonic()
            self.progress(f"... {s.lines} line(s) read, {s.stored} stored, {s.rejected} rejected")


def load_files(settings: Settings, paths: Iterable[str], engine: Any = None,
               progress: Callable[[str], None] | None = None) -> LoadStats:  # fmt: skip
    """Load JSONL files (``-``: stdin; gzip or plain) through the ingestion decoder and writer."""
    return Loader(settings, engine, progress=progress).load(paths)
