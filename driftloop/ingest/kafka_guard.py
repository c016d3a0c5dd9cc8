"""Turn record batches that kafka-python cannot parse into one marker record instead of an exception.

Why: kafka-python parses fetched record batches lazily inside ``poll()``. A batch with a bad CRC,
a payload its codec cannot decompress (or a codec module that is missing), or a header key that is
not UTF-8 (Go clients can send one) raises from ``poll()`` *every time* the partition is read
again, before any record of the batch is returned: the consumer can neither store it nor skip
it, and a restarting service crash-loops on it forever.

``install()`` wraps the batches a fetch yields (``Fetcher.PartitionRecords._unpack_records``) so
that a batch that fails to parse ends the way a poison message does: the records before the
failure are returned as usual and the rest of the batch becomes a single *marker* record whose
offset is the batch's last offset (so the position moves past it), whose ``timestamp_type`` is
``UNPARSEABLE`` and whose value is the raw batch bytes. Its header ``driftloop.unparseable``
holds JSON ``{"first_offset", "last_offset", "records", "reason", "error"}``. The ingestion
chain records it in ``rejected_messages`` (offset range, reason, raw bytes, SHA-256) and the
DLQ, counts it and goes on.

This hooks one private method of kafka-python (pinned to < 4 in pyproject); ``install`` checks
the hook point exists and refuses to start otherwise, and a test runs real broken batches
through a real broker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("driftloop.ingest")

#: ``timestamp_type`` of a marker record (Kafka uses -1, 0 and 1)
UNPARSEABLE = -99
MARKER_HEADER = "driftloop.unparseable"

_installed = False


@dataclass(frozen=True, slots=True)
class Unparseable:
    """What a marker record says about the records it stands for."""

    first_offset: int
    last_offset: int
    records: int
    reason: str
    error: str

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes | None]]) -> Unparseable:
        for k, v in headers:
            if k == MARKER_HEADER and v is not None:
                d = json.loads(v)
                return cls(int(d["first_offset"]), int(d["last_offset"]), int(d["records"]), str(d["reason"]),
                           str(d["error"]))  # fmt: skip
        raise ValueError("not a marker record")

    def header(self) -> tuple[str, bytes]:
        d = {"first_offset": self.first_offset, "last_offset": self.last_offset, "records": self.records,
             "reason": self.reason, "error": self.error}  # fmt: skip
        return MARKER_HEADER, json.dumps(d).encode()


def classify(exc: BaseException) -> str:
    """A stable reason for a parse failure (used in rejected_messages.reason and metric labels)."""
    from kafka.errors import CorruptRecordError, UnsupportedCodecError

    if isinstance(exc, UnsupportedCodecError | NotImplementedError):
        return "unsupported_codec"
    if isinstance(exc, UnicodeDecodeError) or "UnicodeDecodeError" in str(exc):
        return "bad_header"
    if isinstance(exc, CorruptRecordError):
        return "corrupt_batch"
    return "undecodable_batch"  # a codec that failed on the payload (gzip, lz4, zstd, snappy errors)


class _MarkerRecord:
    """Quacks like kafka-python's DefaultRecord for the fetcher's generator."""

    __slots__ = ("headers", "offset", "size_in_bytes", "timestamp", "value")
    key = None
    checksum = None
    timestamp_type = UNPARSEABLE

    def __init__(self, info: Unparseable, raw: bytes, timestamp: int) -> None:
        self.offset = info.last_offset
        self.timestamp = timestamp
        self.value = raw
        self.headers = [info.header()]
        self.size_in_bytes = len(raw)

    def validate_crc(self) -> bool:
        return True


class _GuardedBatch:
    """A record batch whose iteration never raises: a failure becomes one marker record."""

    __slots__ = ("_batch", "_crc_ok", "_guard")

    def __init__(self, batch: Any, guard: _GuardedRecords) -> None:
        self._batch = batch
        self._guard = guard
        self._crc_ok: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        # the fetcher raises CorruptRecordError on False; we answer True and emit a marker instead
        self._crc_ok = bool(self._batch.validate_crc())
        return True

    def __iter__(self) -> Iterator[Any]:
        batch, guard = self._batch, self._guard
        raw_buf = getattr(batch, "_buffer", None)  # the wire bytes; decompression replaces, not mutates, it
        first = max(guard.next_offset, int(getattr(batch, "base_offset", 0) or 0))
        last = _last_offset(batch, first)
        first = min(first, last)
        if self._crc_ok is False:
            yield guard.marker(batch, raw_buf, first, last, "corrupt_batch",
                               f"record batch at offset {batch.base_offset} failed its CRC check")  # fmt: skip
            return
        done = first - 1  # offset of the last record handed out (a local: this runs once per record)
        try:
            for record in batch:
                done = record.offset
                yield record
        except Exception as e:
            first = max(first, done + 1)
            if first > last:  # the failure came after the batch's last record (e.g. trailing bytes)
                last = first
            yield guard.marker(batch, raw_buf, first, last, classify(e), f"{type(e).__name__}: {e}")
        guard.next_offset = max(guard.next_offset, done + 1, last + 1)


def _last_offset(batch: Any, fallback: int) -> int:
    last = getattr(batch, "last_offset", None)  # v2 batches
    if last is None:
        last = getattr(batch, "base_offset", None)  # v0/v1: a compressed wrapper carries its last offset
    return int(last) if last is not None else fallback


class _GuardedRecords:
    """Wraps kafka-python's MemoryRecords: batches come back guarded; a broken frame ends the fetch
    with a marker for one offset (the next fetch starts after it, so the consumer always moves on)."""

    __slots__ = ("_records", "next_offset", "tp")

    def __init__(self, records: Any, tp: Any, fetch_offset: int) -> None:
        self._records = records
        self.tp = tp
        self.next_offset = fetch_offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    def next_batch(self) -> Any:
        try:
            batch = self._records.next_batch()
        except Exception as e:
            return _BrokenFrame(self, e)
        return None if batch is None else _GuardedBatch(batch, self)

    def marker(self, batch: Any, raw_buf: Any, first: int, last: int, reason: str, error: str) -> _MarkerRecord:
        records = last - first + 1
        count = getattr(batch, "records_count", None)
        if isinstance(count, int) and 0 < count < records:
            records = count
        info = Unparseable(first, last, records, reason, error[:2000])
        log.error("UNPARSEABLE RECORD BATCH %s[%d] offsets %d..%d (%s): %s; it is recorded as rejected and "
                  "skipped", self.tp.topic, self.tp.partition, first, last, reason, error)  # fmt: skip
        ts = getattr(batch, "max_timestamp", None) or getattr(batch, "first_timestamp", None) or -1
        self.next_offset = last + 1
        return _MarkerRecord(info, bytes(raw_buf) if raw_buf is not None else b"", int(ts))


class _BrokenFrame:
    """Stands for bytes that are not even a record batch frame: one marker, then the fetch ends."""

    magic = 2
    is_control_batch = False
    leader_epoch = -1

    def __init__(self, guard: _GuardedRecords, exc: Exception) -> None:
        self._guard = guard
        self._exc = exc
        self._records = guard._records
        guard._records = _Exhausted()
        off = guard.next_offset
        self.base_offset = self.last_offset = off
        self.next_offset = off + 1

    def validate_crc(self) -> bool:
        return True

    def has_producer_id(self) -> bool:
        return False

    def __iter__(self) -> Iterator[Any]:
        off = self.base_offset
        yield self._guard.marker(self, None, off, off, "corrupt_batch", f"{type(self._exc).__name__}: {self._exc}")


class _Exhausted:
    def next_batch(self) -> None:
        return None


def install() -> None:
    """Guard kafka-python's batch parsing in this process (idempotent)."""
    global _installed
    if _installed:
        return
    import kafka
    from kafka.consumer.fetcher import Fetcher

    cls = getattr(Fetcher, "PartitionRecords", None)
    orig = getattr(cls, "_unpack_records", None)
    if cls is None or orig is None:
        raise RuntimeError(
            f"kafka-python {kafka.__version__} has no Fetcher.PartitionRecords._unpack_records: driftloop cannot "
            "guard against unparseable record batches with this version (supported: kafka-python >= 3.0, < 4)"
        )

    def _unpack_records(self: Any, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any) -> Any:
        return orig(self, tp, _GuardedRecords(records, tp, self.fetch_offset), key_deserializer, value_deserializer)

    cls._unpack_records = _unpack_records
    _installed = True
