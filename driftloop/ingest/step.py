"""The decode → write half of the ingestion chain, and where it runs (a thread or a subprocess).

The consumer (``IngestService``) only polls Kafka and hands *raw* batches over::

    consumer ─► RawBatch ─► DecodeWriteStep: decode/validate/redact ─► rows streamed into COPY ─► commit
                                   │                                                                │
                                   └─ InvalidMessage ─► reject row (+ DLQ copy)       BatchWritten event ◄┘

``DecodeWriteStep`` is the same code in both placements:

* ``ThreadPipeline`` runs it in the consumer's process (one worker thread). Used for SQLite, where
  one process writing keeps the single-writer database simple.
* ``ProcessPipeline`` runs it in a child process, so that kafka-python's record parsing (the
  consumer's main cost) and decoding + the COPY run on different cores instead of sharing one
  GIL. Default on PostgreSQL. The child dies with its parent (``PR_SET_PDEATHSIG``), so a
  ``kill -9`` of ``driftloop ingest`` leaves no writer behind.

Topics of a mapped format (``kafka.topic_formats``: OTLP traces or logs, OpenAI, LiteLLM) go
through :func:`driftloop.ingest.formats.convert` first: one message becomes N v1 records, each then
decoded like a v1 message (same validation and redaction), all with the message's offset. A message
that cannot be read at all is rejected whole; a bad item inside a good one is a reject of its own
(its row's ``raw`` is the item, so the reject key tells the items of one offset apart) and costs
nothing else. Items that are not LLM calls (other spans) are counted as skipped.

Whatever the placement, a batch is written in one transaction together with the next offsets,
and the consumer learns about it only through a ``BatchWritten`` event; nothing is acknowledged
to Kafka before that.

The invariant: a batch is committed only when *every* message of it is either a stored row or
a ``rejected_messages`` row. Decoding isolates each message (a decoder bug rejects that message
as ``internal_error``), the dead-letter copy cannot fail the batch (``driftloop.ingest.dlq``), and
the batch is checked to be complete before it commits; a batch that is not (a bug) fails the
step instead of being written with the whole batch's offsets.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import logging
import os
import pickle
import queue
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from driftloop.ingest.decode import (
    INTERNAL_ERROR,
    INVALID_JSON,
    OVERSIZE,
    DecodePolicy,
    Decoder,
    InvalidMessage,
    Source,
)
from driftloop.ingest.dlq import DeadLetterSender, DlqItem, clean_headers
from driftloop.ingest.formats import convert
from driftloop.ingest.kafka_guard import Unparseable
from driftloop.ingest.redact import Redactor
from driftloop.ingest.writer import Batch, BatchWriter, Row, WriteResult
from driftloop.retry import RetryCallState, retrying
from driftloop.settings import Settings, TopicFormat

log = logging.getLogger("driftloop.ingest")


# -- what travels between the consumer and the step ---------------------------------------------
@dataclass(slots=True)
class RawChunk:
    """Consecutive messages of one partition, as polled (kept as parallel lists: cheap to pickle)."""

    topic: str
    partition: int
    offsets: list[int]
    timestamps: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    headers: list[list[tuple[str, bytes | None]]] | None = None  # None when no message had headers
    #: index -> what a marker record stands for (a record batch the client could not parse)
    unparseable: dict[int, Unparseable] | None = None


@dataclass(slots=True)
class RawBatch:
    """Messages handed to the step in one go; written in one transaction."""

    seq: int
    generation: int
    chunks: list[RawChunk] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    n_messages: int = 0


@dataclass(frozen=True, slots=True)
class BatchWritten:
    """A batch is committed to the database (or dropped as stale: ``dropped=True``)."""

    seq: int
    generation: int
    offsets: dict[tuple[str, int], int]
    n_messages: int
    inserted: int = 0
    duplicates: int = 0
    feedback_inserted: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    committed_at: float = 0.0  # wall clock
    dropped: bool = False
    dlq_failures_by_reason: dict[str, int] = field(default_factory=dict)
    merged: int = 0  # records that filled in a row of the same request_id (writer's merge rule)
    skipped: int = 0  # items of mapped formats that are not LLM calls (e.g. an HTTP span)


@dataclass(frozen=True, slots=True)
class WriteRetried:
    """A batch write failed and will be retried after ``delay_s``."""

    attempt: int
    delay_s: float
    error: str


class _DecodingStopped(RuntimeError):
    """Decoding a batch broke off: a bug, never retried (the step fails, nothing is committed)."""


@dataclass(frozen=True, slots=True)
class BatchAbandoned:
    """A batch was given up during shutdown (not committed; it will be read again)."""

    seq: int
    n_messages: int


@dataclass(frozen=True, slots=True)
class StepFailed:
    """The step cannot go on (a bug, or its process died); the consumer must not commit more."""

    error: str


@dataclass(frozen=True, slots=True)
class StepClosed:
    """The step finished its shutdown."""

    peak_rss_mb: float
    cpu_s: float = 0.0  # CPU time of the writer process (user + system)


Event = BatchWritten | WriteRetried | BatchAbandoned | StepFailed | StepClosed


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class DecodeWriteStep:
    """Decode, validate and redact raw batches, send rejects to the DLQ, write batches atomically.

    One worker thread decodes each batch while streaming its rows into the database (PostgreSQL
    processes the COPY while the rest is decoded). ``emit`` is called from it with every event.
    """

    def __init__(self, settings: Settings, emit: Callable[[Event], None], engine: Any = None) -> None:
        from driftloop.store.db import create_engine_from_url

        self.settings = settings
        self.emit = emit
        k, ing = settings.kafka, settings.ingest
        self.group_id = k.group_id
        self.dlq_topic = k.dlq_topic
        self.engine = engine or create_engine_from_url(settings.database.url, pool_size=settings.database.pool_size)
        self.writer = BatchWriter(self.engine, self.group_id)
        self.decoder = Decoder(
            DecodePolicy(
                max_message_bytes=ing.max_message_bytes,
                max_field_chars=ing.max_field_chars,
                min_timestamp=datetime.fromisoformat(ing.min_timestamp).astimezone(UTC),
                max_future_skew=timedelta(seconds=ing.max_future_skew_s),
                workload=ing.workload,  # names each record's workload (ingest.workload)
            ),
            Redactor.from_settings(settings.pii),
        )
        self._inbox: queue.Queue[RawBatch | None] = queue.Queue()
        self.generation = 0
        self.closing = threading.Event()  # shutdown: give up a batch whose write keeps failing
        self.dlq: DeadLetterSender | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> DecodeWriteStep:
        from driftloop.broker import make_producer

        k, ing = self.settings.kafka, self.settings.ingest
        popts = {
            "max_request_size": max(16 * 1024 * 1024, ing.max_message_bytes + 65536),
            # bounded waits: a missing DLQ topic or a dead broker must cost seconds, not minutes per batch
            "max_block_ms": int(min(ing.dlq_timeout_s, 10.0) * 1000),
            "bootstrap_timeout_ms": int(min(ing.dlq_timeout_s, 10.0) * 1000),
            "delivery_timeout_ms": int(ing.dlq_timeout_s * 1000),
            "request_timeout_ms": int(max(1.0, ing.dlq_timeout_s - 1.0) * 1000),
            **k.producer,
        }
        self.dlq = DeadLetterSender(lambda: make_producer(k.bootstrap_servers, **popts), self.dlq_topic,
                                    ing.dlq_timeout_s)  # fmt: skip
        t = threading.Thread(target=self._work_loop, name="driftloop-decode-write", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def submit(self, raw: RawBatch) -> None:
        """Queue a raw batch (the consumer bounds how many are in flight)."""
        self._inbox.put(raw)

    def set_generation(self, generation: int) -> None:
        """Batches of older generations (from before a rebalance) are dropped, not written."""
        self.generation = generation

    def close(self, timeout_s: float) -> None:
        """Finish queued batches (giving up on one whose write keeps failing), then stop."""
        self.closing.set()
        self._inbox.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            log.error("the database writer is still busy after %.0fs; abandoning uncommitted batches "
                      "(they will be read again)", timeout_s)  # fmt: skip
            self.generation = sys.maxsize  # whatever is still queued is stale now
        if self.dlq is not None:
            self.dlq.close()

    # -- the worker thread ----------------------------------------------------------------------
    def _work_loop(self) -> None:
        try:
            while True:
                raw = self._inbox.get()
                if raw is None:
                    return
                self._handle(raw)
        except BaseException as e:  # pragma: no cover - a bug: stop loudly
            log.exception("decode/write thread crashed")
            self.emit(StepFailed(f"decode/write thread crashed: {type(e).__name__}: {e}"))

    def _handle(self, raw: RawBatch) -> None:
        """Decode ``raw`` while streaming its rows into the database, commit, report; retry on errors.

        Rows go into the COPY as they are decoded, so PostgreSQL works on the batch while it is
        still being decoded (one thread: no hand-off between a decode and a writer thread). The
        decoded rows are kept, so a failed first attempt is retried from them. Write failures are
        retried with the project policy (:mod:`driftloop.retry`, ``db_retry_initial_s`` doubling up
        to ``db_retry_max_s``) without a limit: nothing is committed until the batch is. On shutdown
        the wait is cut short and a batch whose write fails again is abandoned (it is read again).
        """
        ing = self.settings.ingest
        batch = Batch(generation=raw.generation, offsets=dict(raw.offsets), n_messages=raw.n_messages)
        rejected: dict[str, int] = {}
        stream: Iterator[Row] | None = self._decode_iter(raw, batch, rejected)

        def write() -> WriteResult | None:
            """One attempt; None when the batch is from before a rebalance (dropped, not written)."""
            nonlocal stream
            if raw.generation < self.generation:
                return None
            try:
                return self.writer.write(batch, stream=stream, before_commit=lambda: self._complete(batch))
            except Exception as e:
                if stream is not None:
                    for _ in stream:  # finish decoding: the retries write the kept rows
                        pass
                    stream = None
                if batch.decoded != batch.n_messages:
                    # decoding itself broke off (a bug: every message is isolated): never write a part
                    # of the batch with the whole batch's offsets; fail the step, nothing is committed
                    raise _DecodingStopped(f"decoding stopped after {batch.decoded} of {batch.n_messages} "
                                           f"messages: {type(e).__name__}: {e}") from e  # fmt: skip
                raise

        def retried(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            self.emit(WriteRetried(state.attempt_number, delay, first_line))

        policy = retrying(what=f"batch write ({raw.n_messages} messages)", initial_s=ing.db_retry_initial_s,
                          max_s=max(ing.db_retry_max_s, ing.db_retry_initial_s), retry_on=Exception,
                          give_up_on=lambda e: isinstance(e, _DecodingStopped), interrupt=self.closing,
                          stop_when=lambda st: self.closing.is_set() and st.attempt_number > 1,
                          before_sleep=retried, logger=log, level=logging.ERROR)  # fmt: skip
        try:
            res = policy(write)
        except _DecodingStopped:
            raise
        except Exception as e:  # the policy stopped: shutting down
            log.error("shutting down while the write keeps failing (%s); abandoning the batch "
                      "of %d messages: it was not committed and will be read again", e, raw.n_messages)  # fmt: skip
            self.emit(BatchAbandoned(raw.seq, raw.n_messages))
            return
        if res is None:
            log.info("dropping a batch of %d messages from before a rebalance", raw.n_messages)
            self.emit(BatchWritten(raw.seq, raw.generation, raw.offsets, raw.n_messages, dropped=True))
            return
        dlq_failed: dict[str, int] = {}
        for item in batch.dlq_items:
            if item.failure_reason:
                dlq_failed[item.failure_reason] = dlq_failed.get(item.failure_reason, 0) + 1
        self.emit(BatchWritten(
            raw.seq, raw.generation, raw.offsets, raw.n_messages, res.inserted, res.duplicates,
            res.feedback_inserted, rejected, time.time(), dlq_failures_by_reason=dlq_failed, merged=res.merged,
            skipped=batch.skipped,
        ))  # fmt: skip

    def _complete(self, batch: Batch) -> None:
        """Inside the batch's transaction: check every message is accounted for, settle the DLQ copies."""
        if batch.decoded != batch.n_messages:
            raise RuntimeError(f"batch incomplete: {batch.decoded} of {batch.n_messages} messages decoded")
        assert self.dlq is not None
        self.dlq.settle(batch.dlq_items)

    def _decode_iter(self, raw: RawBatch, batch: Batch, rejected: dict[str, int]) -> Iterator[Row]:
        """Decode every message of ``raw``; yield interaction rows, keeping everything in ``batch``.

        Exhausting the iterator completes ``batch`` (interactions, feedback, rejects; rejects are
        already on their way to the DLQ).
        """
        decode = self.decoder.decode
        now = datetime.now(UTC)
        inter, fb = batch.interactions, batch.feedback
        format_of = self.settings.kafka.format_of
        for ch in raw.chunks:
            src = Source(ch.topic, ch.partition, 0, None)  # one per chunk; the decoder copies what it keeps
            offsets, timestamps, bad = ch.offsets, ch.timestamps, ch.unparseable
            fmt = format_of(ch.topic)
            mapped = fmt != "v1"
            for i, value in enumerate(ch.values):
                if bad is not None and i in bad:
                    info = bad[i]
                    err = InvalidMessage(info.reason, f"record batch offsets {info.first_offset}..{info.last_offset} "
                                                      f"({info.records} records) could not be parsed: {info.error}")
                    self._reject(ch, i, err, batch, now, info)
                    rejected[info.reason] = rejected.get(info.reason, 0) + info.records
                    continue
                src.offset = offsets[i]
                src.timestamp_ms = timestamps[i]
                if mapped:
                    yield from self._decode_mapped(fmt, ch, i, src, now, batch, rejected)
                    continue
                try:
                    kind, row, fbs = decode(value, src, now)
                except InvalidMessage as e:
                    self._reject(ch, i, e, batch, now)
                    rejected[e.reason] = rejected.get(e.reason, 0) + 1
                    continue
                if kind == "interaction":
                    inter.append(row)
                    if fbs:
                        fb.extend(fbs)
                    yield row
                else:
                    fb.append(row)
            batch.decoded += len(ch.values)

    def _decode_mapped(self, fmt: TopicFormat, ch: RawChunk, i: int, src: Source, now: datetime, batch: Batch,
                       rejected: dict[str, int]) -> Iterator[Row]:  # fmt: skip
        """Message ``i`` of a mapped-format topic: convert it, then decode each record like a v1 message.

        The message is rejected whole when it cannot be read (``convert`` raises, or a mapper bug:
        ``internal_error``); otherwise each item the mapper or the Decoder rejects is a reject of
        its own, and the message's good records are kept.
        """
        value = ch.values[i]

        def reject(err: InvalidMessage, item: bytes | None = None, kind: str | None = None) -> None:
            self._reject(ch, i, err, batch, now, item=item, item_kind=kind, fmt=fmt)
            rejected[err.reason] = rejected.get(err.reason, 0) + 1

        try:
            if value is None:
                raise InvalidMessage(INVALID_JSON, "message has no value (tombstone)")
            limit = self.decoder.policy.max_message_bytes
            if len(value) > limit:
                raise InvalidMessage(OVERSIZE, f"message is {len(value)} bytes (max {limit})")
            conv = convert(fmt, value, content_type=_content_type(ch, i))
        except InvalidMessage as e:
            reject(e)
            return
        except Exception as e:  # a mapper bug costs this message only
            reject(InvalidMessage(INTERNAL_ERROR, f"{fmt} mapper: {type(e).__name__}: {e}"))
            return
        batch.skipped += conv.skipped
        for n, (reason, detail) in enumerate(conv.rejected):
            # the mapper keeps no copy of the bad item: its position and the error identify it
            item = _encode({"format": fmt, "item": n, "reason": reason, "error": detail})
            reject(InvalidMessage(reason, detail), item, "mapper-error")
        decode = self.decoder.decode
        for rec in conv.records:
            try:
                item = _encode(rec)
            except Exception as e:  # a mapper bug: a value JSON cannot hold
                reject(InvalidMessage(INTERNAL_ERROR, f"{fmt} mapper made an unencodable record: {e}"),
                       repr(rec)[:10_000].encode("utf-8", "replace"), "mapper-error")  # fmt: skip
                continue
            try:
                kind, row, fbs = decode(item, src, now)
            except InvalidMessage as e:
                reject(e, item, "record")
                continue
            if kind == "interaction":
                batch.interactions.append(row)
                if fbs:
                    batch.feedback.extend(fbs)
                yield row
            else:
                batch.feedback.append(row)

    def _reject(self, ch: RawChunk, i: int, err: InvalidMessage, batch: Batch, now: datetime,
                unparseable: Unparseable | None = None, item: bytes | None = None, item_kind: str | None = None,
                fmt: str | None = None) -> None:  # fmt: skip
        """Record a reject row and start its dead-letter copy (which never raises).

        ``item``: one item of a mapped-format message was rejected, not the message; it is what
        is kept (row and dead-letter copy), ``item_kind`` says what it is (``record``: the v1
        record the Decoder rejected; ``mapper-error``: the mapper's account of the item).
        """
        value = ch.values[i] if item is None else item
        raw = value if value is not None else b""
        offset = ch.offsets[i] if unparseable is None else unparseable.first_offset
        headers: list[tuple[str, bytes]] = [
            ("dlq.reason", err.reason.encode()),
            ("dlq.error", err.detail[:1000].encode("utf-8", "replace")),
            ("dlq.source.topic", ch.topic.encode()),
            ("dlq.source.partition", str(ch.partition).encode()),
            ("dlq.source.offset", str(offset).encode()),
            ("dlq.consumer.group", self.group_id.encode()),
            ("dlq.rejected.at", now.isoformat().encode()),
        ]
        if unparseable is not None:
            headers += [("dlq.source.offset.last", str(unparseable.last_offset).encode()),
                        ("dlq.format", b"kafka-record-batch")]  # fmt: skip
        if fmt is not None:
            headers.append(("dlq.source.format", fmt.encode()))
        if item_kind is not None:
            headers.append(("dlq.item", item_kind.encode()))
        if unparseable is None and ch.headers is not None:
            kept, nulls = clean_headers([(k, v) for k, v in ch.headers[i] if not k.startswith("dlq.")])
            headers.extend(kept)
            if nulls:  # a producer cannot send a null header value: say which ones were null
                headers.append(("dlq.null_headers", ",".join(nulls).encode("utf-8", "replace")))
        keep = self.settings.ingest.store_raw_reject_bytes
        row = {
            "source_topic": ch.topic,
            "source_partition": ch.partition,
            "source_offset": offset,
            "source_offset_last": unparseable.last_offset if unparseable is not None else None,
            "reason": err.reason,
            "error": err.detail.replace("\x00", "\\x00")[:4000],
            "raw": raw[:keep] if keep else None,
            "raw_size": len(raw),
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
            "dlq_topic": self.dlq_topic,
            "rejected_at": now,
            "dlq_status": None,
            "dlq_error": None,
        }  # fmt: skip
        batch.rejects.append(row)
        dlq_item = DlqItem(value, ch.keys[i], headers, row)
        batch.dlq_items.append(dlq_item)
        assert self.dlq is not None
        self.dlq.send(dlq_item)
        log.debug("rejected %s[%d]@%d: %s", ch.topic, ch.partition, offset, err)


_encode = msgspec.json.Encoder().encode


def _content_type(ch: RawChunk, i: int) -> str | None:
    """The message's ``content-type`` header, if the producer set one (else the mapper sniffs)."""
    if ch.headers is None:
        return None
    for k, v in ch.headers[i]:
        if k.lower() == "content-type" and v:
            return v.decode("latin-1")
    return None


# -- placements ---------------------------------------------------------------------------------
class ThreadPipeline:
    """The step inside the consumer's process."""

    def __init__(self, settings: Settings, events: queue.Queue[Event], engine: Any = None) -> None:
        self.step = DecodeWriteStep(settings, events.put, engine)
        self.events = events

    def start(self) -> ThreadPipeline:
        self.step.start()
        return self

    def submit(self, raw: RawBatch) -> None:
        self.step.submit(raw)

    def set_generation(self, generation: int) -> None:
        self.step.set_generation(generation)

    def close(self, timeout_s: float) -> None:
        self.step.close(timeout_s)
        self.events.put(StepClosed(peak_rss_mb()))


class ProcessPipeline:
    """The step in a child process (``spawn``): batches go through a tmpfs spool, control messages
    and events through a pipe."""

    def __init__(self, settings: Settings, events: queue.Queue[Event]) -> None:
        self.settings = settings
        self.events = events
        self._conn: Any = None
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._closing = False
        self._spool = ""
        self._start_timeout_s = 60.0

    def start(self, timeout_s: float = 60.0) -> ProcessPipeline:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._spool = make_spool_dir()
        parent, child = ctx.Pipe(duplex=True)
        level = logging.getLogger("driftloop").getEffectiveLevel()
        self._proc = ctx.Process(target=_child_main, args=(child, self.settings, level), name="driftloop-ingest-writer",
                                 daemon=True)  # fmt: skip
        self._proc.start()
        child.close()
        self._conn = parent
        self._start_timeout_s = timeout_s
        # The child needs ~1 s to import and connect; we wait for its "ready" only when the first
        # batch is due, so that its start-up overlaps the consumer's group join.
        return self

    def _ensure_ready(self) -> None:
        if self._reader is not None:
            return
        if not self._conn.poll(self._start_timeout_s):
            self._proc.kill()
            raise RuntimeError(f"the ingest writer process did not start within {self._start_timeout_s:.0f}s")
        try:
            hello = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"the ingest writer process exited at start (code {self._proc.exitcode})") from None
        if isinstance(hello, StepFailed):
            self._proc.join(5)
            raise RuntimeError(f"the ingest writer process could not start: {hello.error}")
        self._reader = threading.Thread(target=self._read_events, name="driftloop-writer-events", daemon=True)
        self._reader.start()
        log.info("decode + database writes run in process %d", self._proc.pid)

    def _read_events(self) -> None:
        while True:
            try:
                ev = self._conn.recv()
            except (EOFError, OSError):
                if not self._closing:
                    self._proc.join(2)
                    self.events.put(StepFailed(f"the ingest writer process died (exit code {self._proc.exitcode})"))
                return
            self.events.put(ev)
            if isinstance(ev, StepClosed):
                return

    def _send(self, msg: Any) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def submit(self, raw: RawBatch) -> None:
        self._ensure_ready()
        # The batch (~5 MB) goes through a file on tmpfs and only its name through the pipe: a pipe
        # moves it in ~200 KB pieces, and each piece makes both processes wait for their GIL again
        # (measured: the consumer then spends a third of its time blocked in send).
        path = os.path.join(self._spool, f"{raw.seq}.batch")
        try:
            # pickled straight into the file (in frames), never as one more copy of the batch in memory
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb", buffering=1 << 20) as f:
                pickle.dump(raw, f, protocol=pickle.HIGHEST_PROTOCOL)
            self._send(("batch_file", path))
        except (BrokenPipeError, OSError) as e:
            raise RuntimeError(f"the ingest writer process is gone or its spool is unwritable ({e})") from None

    def set_generation(self, generation: int) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._send(("generation", generation))

    def close(self, timeout_s: float) -> None:
        """Ask the child to finish and wait; kill it if it does not (its open transaction rolls back)."""
        if self._proc is None:
            return
        try:
            self._ensure_ready()
        except RuntimeError as e:
            log.error("%s", e)
        with contextlib.suppress(BrokenPipeError, OSError):
            self._send(("close", timeout_s))
        if self._reader is not None:
            self._reader.join(timeout_s + 15)
        self._closing = True
        self._proc.join(5)
        if self._proc.is_alive():
            log.error("the ingest writer process did not exit; killing it (its open transaction rolls back)")
            self._proc.kill()
            self._proc.join(5)
            self.events.put(StepClosed(0.0))
        with contextlib.suppress(OSError):
            self._conn.close()
        shutil.rmtree(self._spool, ignore_errors=True)


_SPOOL_PREFIX = "driftloop-ingest-"


def make_spool_dir(base: str | None = None) -> str:
    """A private directory for batches on their way to the writer process (tmpfs when available).

    Directories left behind by consumers that were killed (``kill -9``) are removed first.
    """
    if base is None:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(_SPOOL_PREFIX):
            continue
        pid = name[len(_SPOOL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-", dir=base)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tune_gc() -> None:
    """Fewer garbage-collector passes in a process that only ingests (its objects are short-lived).

    Every batch allocates hundreds of thousands of container objects (Kafka records, decoded
    structs, row dicts) that plain reference counting frees; with CPython's default threshold the
    collector still walks them every 700 allocations. Objects alive after start-up (modules,
    settings) are moved out of its sight (``gc.freeze``) and the young generation is collected
    every 50 000 allocations. Measured: +14 % end-to-end throughput (bench/ingest.py), same RSS.
    Called by ``driftloop ingest`` and the writer process only, never in a library user's process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a kill -9 of the consumer takes us along)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _child_main(conn: Any, settings: Settings, log_level: int) -> None:
    """Entry point of the writer process: serve ``batch``/``generation``/``close`` messages."""
    _die_with_parent()
    tune_gc()
    # The parent decides when to stop: Ctrl-C hits the whole process group and systemd signals the
    # whole cgroup; the parent then drains this process with a "close" message (and we die with it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s",
                        stream=sys.stderr)  # fmt: skip
    logging.getLogger("kafka").setLevel(logging.WARNING)
    lock = threading.Lock()

    def emit(ev: Event) -> None:
        with lock:
            conn.send(ev)

    try:
        step = DecodeWriteStep(settings, emit).start()
    except Exception as e:
        conn.send(StepFailed(f"{type(e).__name__}: {e}"))
        return
    conn.send("ready")
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:  # the parent is gone
                return
            if kind == "batch_file":
                with open(payload, "rb", buffering=1 << 20) as f:
                    raw = pickle.load(f)  # frame by frame: no second copy of the batch in memory
                os.unlink(payload)
                step.submit(raw)
            elif kind == "generation":
                step.set_generation(payload)
            elif kind == "close":
                step.close(float(payload))
                emit(StepClosed(peak_rss_mb(), cpu_seconds()))
                return
    except BaseException as e:  # pragma: no cover - a bug: report it before dying
        with contextlib.suppress(Exception):
            emit(StepFailed(f"writer process crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise
    finally:
        with contextlib.suppress(Exception):
            step.engine.dispose()
