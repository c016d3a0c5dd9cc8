"""Kafka → database ingestion, as one chain of small steps.

    poll ─► raw batch ─► [decode/validate/redact ─► DB transaction] ─► BatchWritten ─► Kafka offset commit
                              │      (driftloop.ingest.step: a subprocess on PostgreSQL, threads on SQLite)
                              └─ InvalidMessage ─► dead-letter topic (raw bytes + reason headers) + rejected_messages row

* The next offset per partition is stored in the same database transaction as the batch; on
  partition assignment the consumer seeks to it. Kafka offsets are committed too (after the DB
  commit) so that lag tools work, but the database is the source of truth.
* Polling, decoding and the database write overlap: the consumer only polls and hands raw batches
  to ``DecodeWriteStep``, which decodes on one thread and writes on another (in a child process by
  default on PostgreSQL, so kafka-python's parsing and the decode/COPY use two cores). At most
  ``ingest.max_pending_batches`` batches are in flight; beyond that the consumer pauses its
  partitions and keeps polling (staying in the group) until the writer catches up — e.g. while the
  database is down and the writer retries with backoff. A writer process that dies is restarted
  and every partition re-read from the offsets stored in the database.
* A rejected message is committed only as a ``rejected_messages`` row (reason, error, raw bytes up
  to the cap, SHA-256) in the batch's transaction. Its dead-letter copy is awaited (bounded) before
  the commit; a DLQ that refuses it is recorded on the row and counted, never a reason to lose or
  re-read the batch (``driftloop.ingest.dlq``).
* A record batch kafka-python cannot parse (bad CRC, undecodable or unsupported compression, a
  non-UTF-8 header key) becomes one reject for its offset range instead of an exception that
  would stop ``poll()`` forever (``driftloop.ingest.kafka_guard``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError
from sqlalchemy import Engine

from driftloop.ingest import kafka_guard
from driftloop.ingest import metrics as m
from driftloop.ingest.kafka_guard import UNPARSEABLE, Unparseable
from driftloop.ingest.step import (
    BatchAbandoned,
    BatchWritten,
    Event,
    ProcessPipeline,
    RawBatch,
    RawChunk,
    StepClosed,
    StepFailed,
    ThreadPipeline,
    WriteRetried,
    cpu_seconds,
    peak_rss_mb,
)
from driftloop.ingest.writer import BatchWriter
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url

log = logging.getLogger("driftloop.ingest")


# positions in kafka-python's ConsumerRecord namedtuple, looked up once (a renamed field fails at import)
def _record_fields() -> tuple[int, int, int, int, int, int]:
    from kafka.consumer.fetcher import ConsumerRecord

    f = ConsumerRecord._fields
    return (f.index("offset"), f.index("timestamp"), f.index("key"), f.index("value"), f.index("headers"),
            f.index("timestamp_type"))  # fmt: skip


_F_OFFSET, _F_TIMESTAMP, _F_KEY, _F_VALUE, _F_HEADERS, _F_TSTYPE = _record_fields()


@dataclass(frozen=True)
class BatchPolicy:
    """When to hand a batch to the writer: at ``max_size`` messages or ``max_ms`` after its first."""

    max_size: int
    max_ms: int

    def new_state(self) -> BatchPolicyState:
        return BatchPolicyState(self)


@dataclass
class BatchPolicyState:
    """Mutable companion of a BatchPolicy for the batch being built."""

    policy: BatchPolicy
    started: float | None = None
    size: int = 0

    def add(self, n: int = 1) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.size += n

    def should_flush(self, now: float | None = None) -> bool:
        if self.size >= self.policy.max_size:
            return True
        if self.started is None:
            return False
        return ((now or time.monotonic()) - self.started) * 1000 >= self.policy.max_ms

    def reset(self) -> None:
        self.started = None
        self.size = 0


@dataclass
class IngestStats:
    """Counters for progress output (Prometheus metrics are kept in parallel)."""

    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    merged: int = 0  # records that filled in a stored row of the same request_id (e.g. OTel log content)
    skipped: int = 0  # items of mapped-format messages that are not LLM calls (neither rows nor rejects)
    feedback: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    dlq_failures: int = 0  # rejects whose dead-letter copy failed (their rows are stored)
    dlq_failures_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    db_retries: int = 0
    offset_resets: int = 0
    first_message_at: float | None = None  # wall clock (time.time()) of the first consumed message
    last_commit_at: float | None = None  # wall clock of the last batch commit
    pipeline: str = ""  # where decode + write ran: "process" or "thread"
    writer_restarts: int = 0
    peak_rss_mb: float = 0.0  # the consumer process
    writer_peak_rss_mb: float = 0.0  # the writer process (0 when it runs in the consumer's process)
    cpu_s: float = 0.0  # CPU time of the consumer process
    writer_cpu_s: float = 0.0  # CPU time of the writer process
    started_at: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        d = {k: v for k, v in self.__dict__.items() if k != "started_at"}
        d["rejected_by_reason"] = dict(self.rejected_by_reason)
        d["dlq_failures_by_reason"] = dict(self.dlq_failures_by_reason)
        return d

    def summary(self) -> str:
        el = max(time.monotonic() - self.started_at, 1e-9)
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_reason.items())) or "none"
        return (
            f"consumed={self.consumed} stored={self.stored} duplicates={self.duplicates} merged={self.merged} "
            f"skipped={self.skipped} feedback={self.feedback} "
            f"rejected={self.rejected} ({reasons}) dlq_failures={self.dlq_failures} batches={self.batches} "
            f"db_retries={self.db_retries} "
            f"rate={self.consumed / el:.0f} msg/s"
        )


class _Stop(Exception):
    pass


@dataclass
class _Loop:
    """Flags and timers of one ``IngestService.run`` loop (monotonic seconds)."""

    max_pending: int
    poll_gap_s: float
    paused: bool = False
    last_poll: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    last_lag: float = field(default_factory=time.monotonic)
    last_topic_check: float = field(default_factory=time.monotonic)


class IngestService:
    """Consume the configured topics into the database until ``stop`` is set.

    ``run(stop)`` blocks; it returns after a graceful shutdown (the batch in flight is either
    committed whole or abandoned whole, never half-written).
    """

    #: a writer process that dies more often than this within ``_RESTART_WINDOW_S`` stops the service
    _MAX_RESTARTS = 5
    _RESTART_WINDOW_S = 300.0

    def __init__(self, settings: Settings, engine: Engine | None = None, *, instance: str | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine_from_url(settings.database.url, pool_size=settings.database.pool_size)
        k, ing = settings.kafka, settings.ingest
        self.group_id = k.group_id
        self.topics = list(k.topics)
        self.dlq_topic = k.dlq_topic
        self.instance = instance or f"ingest-{id(self):x}"
        self.writer = BatchWriter(self.engine, self.group_id)  # here only to read the stored offsets
        self.batch_policy = BatchPolicy(ing.batch_size, ing.batch_max_ms)
        self.stats = IngestStats()
        self.pipeline_kind = self._pipeline_kind()
        self.stats.pipeline = self.pipeline_kind
        self.pipeline: ThreadPipeline | ProcessPipeline | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._in_flight = 0  # raw batches handed to the step and not finished yet
        self._seq = 0
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer_error: BaseException | None = None
        self._restarts: deque[float] = deque()
        self._pending: RawBatch | None = None
        self.consumer: Any = None
        self._assigned: set[Any] = set()
        self.idle_since: float = time.monotonic()

    def _pipeline_kind(self) -> str:
        mode = self.settings.ingest.pipeline
        if mode == "auto":
            # SQLite: one writing process keeps the embedded database simple; PostgreSQL: use two cores
            return "process" if self.engine.dialect.name == "postgresql" else "thread"
        return mode

    # -- wiring -------------------------------------------------------------------------------
    def _make_clients(self) -> None:
        from kafka import KafkaConsumer

        from driftloop.broker import ensure_topics

        k, ing = self.settings.kafka, self.settings.ingest
        kafka_guard.install()
        if k.create_topics:
            ensure_topics(k.bootstrap_servers, [*self.topics, self.dlq_topic], k.topic_partitions, k.replication_factor)
        opts: dict[str, Any] = {
            "bootstrap_servers": k.bootstrap_servers,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "none",  # we position every partition ourselves (see _on_assigned)
            "max_poll_records": ing.max_poll_records,
            "allow_auto_create_topics": False,
            "client_id": self.instance,
        }
        opts.update(k.consumer)
        self.consumer = KafkaConsumer(**opts)
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))

    def _start_pipeline(self) -> None:
        if self.pipeline_kind == "process":
            self.pipeline = ProcessPipeline(self.settings, self._events).start()
        else:
            self.pipeline = ThreadPipeline(self.settings, self._events, self.engine).start()
        self.pipeline.set_generation(self._generation)

    # -- rebalance ----------------------------------------------------------------------------
    def _on_revoked(self, revoked: set[Any]) -> None:
        # Let batches already handed over finish (their offsets land in the DB), then drop the
        # one being built: after re-assignment we seek to the DB offsets and read it again.
        deadline = time.monotonic() + max(1.0, self.settings.kafka.consumer.get("max_poll_interval_ms", 10000) / 2000)
        while self._in_flight and time.monotonic() < deadline:
            self._drain_events(commit=False)
            time.sleep(0.01)
        if self._in_flight:
            log.warning("partitions revoked while the writer is still busy; abandoning queued batches")
            self._bump_generation()
        self._current = self._new_batch()
        self._pending = None
        self._state.reset()
        self._assigned -= set(revoked)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    def _on_assigned(self, assigned: set[Any]) -> None:
        self._assigned |= set(assigned)
        self._seek_to_stored(assigned)

    def _seek_to_stored(self, assigned: set[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in assigned]
        try:
            stored = self.writer.stored_offsets(tps)
        except Exception as e:  # DB down: Kafka's committed offsets trail the DB's, replays dedupe
            log.warning("cannot read stored offsets (%s); falling back to Kafka committed offsets", e)
            return
        positions = []
        for tp in assigned:
            off = stored.get((tp.topic, tp.partition))
            if off is None:
                # Nothing from this partition was ever stored in this database: start at the beginning.
                self.consumer.seek_to_beginning(tp)
                positions.append(f"{tp.topic}[{tp.partition}]@beginning")
            else:
                self.consumer.seek(tp, off)
                positions.append(f"{tp.topic}[{tp.partition}]@{off}")
        log.info("partitions assigned: %s", ", ".join(sorted(positions)))

    def _bump_generation(self) -> None:
        with self._gen_lock:
            self._generation += 1
        if self.pipeline is not None:
            self.pipeline.set_generation(self._generation)

    # -- the chain ----------------------------------------------------------------------------
    def _new_batch(self) -> RawBatch:
        self._seq += 1
        return RawBatch(self._seq, self._generation)

    def _add(self, records: dict[Any, list[Any]], batch: RawBatch) -> int:
        """Append one poll's messages to the raw batch; returns how many."""
        n = 0
        for tp, msgs in records.items():
            if not msgs:
                continue
            # ConsumerRecord is a namedtuple: transpose the poll in C instead of five appends per message
            cols = list(zip(*msgs, strict=True))
            offsets = list(cols[_F_OFFSET])
            headers = cols[_F_HEADERS]
            chunk = RawChunk(tp.topic, tp.partition, offsets, list(cols[_F_TIMESTAMP]), list(cols[_F_KEY]),
                             list(cols[_F_VALUE]), list(headers) if any(headers) else None)  # fmt: skip
            if UNPARSEABLE in cols[_F_TSTYPE]:  # a record batch the client could not parse (see kafka_guard)
                chunk.unparseable = {
                    i: Unparseable.from_headers(headers[i]) for i, t in enumerate(cols[_F_TSTYPE]) if t == UNPARSEABLE
                }
                for info in chunk.unparseable.values():
                    m.UNPARSEABLE_BATCHES.labels(reason=info.reason).inc()
            batch.chunks.append(chunk)
            batch.offsets[(tp.topic, tp.partition)] = offsets[-1] + 1
            n += len(msgs)
        batch.n_messages += n
        return n

    def _submit(self, batch: RawBatch) -> None:
        assert self.pipeline is not None
        self._in_flight += 1
        self.pipeline.submit(batch)

    # -- events from the step -----------------------------------------------------------------
    def _drain_events(self, commit: bool = True, wait_s: float = 0.0) -> None:
        """Account finished batches and retries; commit their offsets to Kafka (for lag tools).

        ``wait_s``: block up to this long for the first event.
        """
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict[tuple[str, int], int] = {}
        while True:
            try:
                if wait_s:
                    ev = self._events.get(timeout=wait_s)
                    wait_s = 0.0
                else:
                    ev = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, BatchWritten):
                self._in_flight -= 1
                if not ev.dropped:
                    self._account(ev)
                    offsets.update(ev.offsets)
            elif isinstance(ev, WriteRetried):
                self.stats.db_retries += 1
                m.DB_RETRIES.inc()
            elif isinstance(ev, BatchAbandoned):
                self._in_flight -= 1
            elif isinstance(ev, StepClosed):
                if self.pipeline_kind == "process":
                    self.stats.writer_peak_rss_mb = max(self.stats.writer_peak_rss_mb, ev.peak_rss_mb)
                    self.stats.writer_cpu_s += ev.cpu_s
            elif isinstance(ev, StepFailed):
                self._step_failed(ev)
        if not commit:
            return
        kafka_offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in self._assigned
        }
        if kafka_offsets:
            try:
                self.consumer.commit_async(kafka_offsets)
            except Exception as e:  # the DB holds the truth; Kafka's copy is for lag tools
                log.debug("Kafka offset commit skipped: %s", e)

    def _account(self, ev: BatchWritten) -> None:
        s = self.stats
        s.last_commit_at = ev.committed_at
        s.batches += 1
        s.stored += ev.inserted
        s.duplicates += ev.duplicates
        s.merged += ev.merged
        s.skipped += ev.skipped
        s.feedback += ev.feedback_inserted
        m.STORED.inc(ev.inserted)
        m.DUPLICATES.inc(ev.duplicates)
        m.MERGED.inc(ev.merged)
        m.SKIPPED.inc(ev.skipped)
        m.FEEDBACK.inc(ev.feedback_inserted)
        m.BATCHES.inc()
        for reason, k in ev.rejected_by_reason.items():
            s.rejected += k
            s.rejected_by_reason[reason] = s.rejected_by_reason.get(reason, 0) + k
            m.REJECTS.labels(reason=reason).inc(k)
        for reason, k in ev.dlq_failures_by_reason.items():
            s.dlq_failures += k
            s.dlq_failures_by_reason[reason] = s.dlq_failures_by_reason.get(reason, 0) + k
            m.DLQ_FAILURES.labels(reason=reason).inc(k)

    def _step_failed(self, ev: StepFailed) -> None:
        """The writer died: restart it and re-read everything not committed, or give up."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self._RESTART_WINDOW_S:
            self._restarts.popleft()
        if self._stop.is_set() or len(self._restarts) >= self._MAX_RESTARTS or self.pipeline_kind != "process":
            log.error("the database writer failed: %s", ev.error)
            self._writer_error = RuntimeError(ev.error)
            self._stop.set()
            return
        self._restarts.append(now)
        self.stats.writer_restarts += 1
        log.error("%s; restarting it and re-reading every partition from the offsets stored in the database "
                  "(restart %d of at most %d in %.0f min)", ev.error, len(self._restarts), self._MAX_RESTARTS,
                  self._RESTART_WINDOW_S / 60)  # fmt: skip
        self._bump_generation()
        self._in_flight = 0
        self._pending = None
        self._current = self._new_batch()
        self._state.reset()
        # events of the dead writer that are still queued belong to the old generation: ignore them
        while True:
            try:
                old = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(old, BatchWritten) and not old.dropped:
                self._account(old)  # committed before the writer died: count it
        self._start_pipeline()
        if self._assigned:
            self._seek_to_stored(set(self._assigned))

    def _positions(self) -> dict[Any, tuple[int | None, int | None]]:
        """(high watermark, position) per assigned partition; None where not known yet."""
        out: dict[Any, tuple[int | None, int | None]] = {}
        for tp in list(self._assigned):
            try:
                pos = self.consumer.position(tp, timeout_ms=0)
            except Exception:
                pos = None
            out[tp] = (self.consumer.highwater(tp), pos)
        return out

    def _update_lag(self) -> None:
        """Export lag per partition; detect positions beyond the log end (the broker lost data)."""
        beyond: dict[Any, int] = {}
        for tp, (hw, pos) in self._positions().items():
            if hw is None or pos is None:
                continue
            if pos > hw:
                # Some brokers (Tansu) answer a fetch beyond the log end with an empty batch instead of
                # OFFSET_OUT_OF_RANGE: waiting would silently skip the first (pos - hw) new records.
                beyond[tp] = pos
            m.LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(max(hw - pos, 0))
        if beyond:
            self._offset_out_of_range(OffsetOutOfRangeError(beyond))

    def lag(self) -> int | None:
        """Total messages behind the high watermark over assigned partitions (None if unknown)."""
        total = 0
        positions = self._positions()
        for hw, p in positions.values():
            if hw is None or p is None:
                return None
            total += max(hw - p, 0)
        return total if positions else None

    # -- main loop ----------------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        *,
        stop_when_idle_s: float | None = None,
        progress_every_s: float | None = None,
        shutdown_timeout_s: float = 15.0,
    ) -> IngestStats:
        """Consume until ``stop`` is set (or idle for ``stop_when_idle_s`` with no lag)."""
        self._stop = stop
        self._current = self._new_batch()
        self._state = self.batch_policy.new_state()
        self._pending = None
        self._start_pipeline()
        # longest wait for the writer without polling: well inside max.poll.interval.ms
        poll_gap_s = self.settings.kafka.consumer.get("max_poll_interval_ms", 300_000) / 1000 / 4
        loop = _Loop(max_pending=self.settings.ingest.max_pending_batches, poll_gap_s=poll_gap_s)
        self.idle_since = time.monotonic()
        try:
            self._make_clients()
            log.info("ingesting %s into %s as group %r (decode + write: %s)", self.topics,
                     self.engine.url.render_as_string(hide_password=True), self.group_id,
                     self.pipeline_kind)  # fmt: skip
            while not stop.is_set() and self._turn(loop, stop_when_idle_s, progress_every_s):
                pass
            self._hand_over()
        finally:
            self._stop.set()
            self._finish_pipeline(shutdown_timeout_s)
            self._close_clients()
        if self._writer_error:
            raise RuntimeError(f"database writer failed: {self._writer_error}") from self._writer_error
        log.info("stopped: %s", self.stats.summary())
        return self.stats

    def _turn(self, loop: _Loop, stop_when_idle_s: float | None, progress_every_s: float | None) -> bool:
        """One turn of the main loop: events, the pending batch, a poll, housekeeping; False to stop."""
        self._drain_events()
        if self._stop.is_set():  # the writer failed for good
            return False
        now = time.monotonic()
        if self._pending is not None and self._wait_for_writer(loop, self._pending, now):
            return True
        records = self._poll(loop)
        if records is None:
            return True
        self._take(records, now)
        now = time.monotonic()
        self._housekeeping(loop, now, progress_every_s)
        if stop_when_idle_s is not None and self._idle_for(stop_when_idle_s, now):
            log.info("idle for %.1fs with no lag; stopping", stop_when_idle_s)
            return False
        return True

    def _wait_for_writer(self, loop: _Loop, pending: RawBatch, now: float) -> bool:
        """Hand ``pending`` over if the writer has room; else wait for it (True: do not poll now)."""
        if self._in_flight < loop.max_pending:
            self._submit(pending)
            self._pending = None
            return False
        if now - loop.last_poll < loop.poll_gap_s:
            # the writer is behind: wait for it (kafka-python heartbeats on its own thread)
            self._drain_events(wait_s=0.05)
            return True
        # behind for long (e.g. the database is down): stay in the group without fetching
        if not loop.paused and self._assigned:
            self.consumer.pause(*self._assigned)
            loop.paused = True
            log.info("writer is behind; pausing consumption")
        self.consumer.poll(timeout_ms=50)
        loop.last_poll = time.monotonic()
        return True

    def _poll(self, loop: _Loop) -> dict[Any, list[Any]] | None:
        """Fetched records (resuming paused partitions first); None after an offset reset."""
        if loop.paused:
            self.consumer.resume(*self.consumer.paused())
            loop.paused = False
        try:
            records: dict[Any, list[Any]] = self.consumer.poll(timeout_ms=100)
            loop.last_poll = time.monotonic()
        except OffsetOutOfRangeError as e:
            self._offset_out_of_range(e)
            return None
        except NoOffsetForPartitionError as e:
            log.warning("no stored or committed offset for %s; starting at the beginning", e)
            self.consumer.seek_to_beginning()
            return None
        return records

    def _take(self, records: dict[Any, list[Any]], now: float) -> None:
        """Add fetched records to the current batch; make it the pending one when the policy says flush."""
        n = self._add(records, self._current) if records else 0
        if n:
            if self.stats.first_message_at is None:
                self.stats.first_message_at = time.time()
            self.stats.consumed += n
            m.CONSUMED.inc(n)
            self._state.add(n)
            self.idle_since = now
        if self._state.should_flush() and self._pending is None:
            self._pending = self._current
            self._current = self._new_batch()
            self._state.reset()

    def _housekeeping(self, loop: _Loop, now: float, progress_every_s: float | None) -> None:
        """Lag (every second), progress lines, and topics re-created while none is assigned (every 10 s)."""
        if now - loop.last_lag > 1.0:
            self._update_lag()
            loop.last_lag = now
        if progress_every_s and now - loop.last_progress >= progress_every_s:
            log.info("progress: %s", self.stats.summary())
            loop.last_progress = now
        if now - loop.last_topic_check > 10.0:
            loop.last_topic_check = now
            if not self._assigned and self.settings.kafka.create_topics:
                self._recreate_topics()

    def _idle_for(self, idle_s: float, now: float) -> bool:
        """Nothing pending, buffered or in flight for ``idle_s``, partitions assigned and no lag."""
        return (
            self._pending is None
            and self._state.size == 0
            and self._in_flight == 0
            and now - self.idle_since >= idle_s
            and bool(self._assigned)
            and self.lag() == 0
        )

    def _hand_over(self) -> None:
        """Graceful shutdown: hand what was read to the writer (it gets a bounded time in ``_finish_pipeline``)."""
        if self._writer_error is None:
            if self._pending is not None:
                self._submit(self._pending)
            if self._current.n_messages:
                self._submit(self._current)

    def _finish_pipeline(self, timeout: float) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.close(timeout)
            except Exception as e:
                log.error("stopping the writer: %s", e)
        self._drain_events(commit=self.consumer is not None)
        if self._in_flight > 0:
            log.error("%d batch(es) were not committed; they will be read again", self._in_flight)
        self.stats.peak_rss_mb = peak_rss_mb()
        self.stats.cpu_s = cpu_seconds()

    def _close_clients(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as e:
                log.warning("closing the consumer: %s", e)

    def _offset_out_of_range(self, e: Any) -> None:
        parts = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
        self.stats.offset_resets += 1
        m.OFFSET_RESETS.inc()
        for tp, off in parts.items():
            log.error(
                "OFFSET OUT OF RANGE: %s[%d] position %s is outside the broker's log (the broker lost data "
                "or the topic was re-created). Resetting to the earliest offset; already stored records are "
                "deduplicated by request_id.", tp.topic, tp.partition, off,
            )  # fmt: skip
            self.consumer.seek_to_beginning(tp)

    def _recreate_topics(self) -> None:
        from driftloop.broker import ensure_topics

        k = self.settings.kafka
        try:
            ensure_topics(k.bootstrap_servers, [*self.topics, self.dlq_topic], k.topic_partitions,
                          k.replication_factor, timeout_s=5)  # fmt: skip
        except Exception as e:
            log.warning("no partitions assigned and topics could not be ensured: %s", e)


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python ConsumerRebalanceListener forwarding to the service."""

    def __init__(self, svc: IngestService) -> None:
        self.svc = svc

    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        self.svc._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self.svc._on_assigned(assigned)
