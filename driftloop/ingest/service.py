"""Kafka → database ingestion, as one chain of small steps.

    poll ─► decode/validate/redact ─► batch ─► (writer thread) DB transaction ─► Kafka offset commit
                 │
                 └─ InvalidMessage ─► dead-letter topic (raw bytes + reason headers) + rejected_messages row

* The next offset per partition is stored in the same database transaction as the batch; on
  partition assignment the consumer seeks to it. Kafka offsets are committed too (after the DB
  commit) so that lag tools work, but the database is the source of truth.
* The database write runs on its own thread so that polling and decoding overlap with it. The
  queue between them is bounded; when it is full the consumer pauses its partitions and keeps
  polling (staying in the group) until the writer catches up — e.g. while the database is down
  and the writer retries with backoff.
* A batch's dead-letter sends are acknowledged by the broker before its transaction commits, so
  a rejected message is never acknowledged without being in the DLQ.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import ConsumerRebalanceListener
from sqlalchemy import Engine

from driftloop.ingest import metrics as m
from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source
from driftloop.ingest.redact import Redactor
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.writer import Batch, BatchWriter, WriteResult

log = logging.getLogger("driftloop.ingest")


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
class DlqItem:
    """A rejected message on its way to the dead-letter topic."""

    raw: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    future: Any = None
    acked: bool = False


@dataclass
class IngestStats:
    """Counters for progress output (Prometheus metrics are kept in parallel)."""

    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    feedback: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    db_retries: int = 0
    offset_resets: int = 0
    first_message_at: float | None = None  # wall clock (time.time()) of the first consumed message
    last_commit_at: float | None = None  # wall clock of the last batch commit
    started_at: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        d = {k: v for k, v in self.__dict__.items() if k != "started_at"}
        d["rejected_by_reason"] = dict(self.rejected_by_reason)
        return d

    def summary(self) -> str:
        el = max(time.monotonic() - self.started_at, 1e-9)
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected_by_reason.items())) or "none"
        return (
            f"consumed={self.consumed} stored={self.stored} duplicates={self.duplicates} feedback={self.feedback} "
            f"rejected={self.rejected} ({reasons}) batches={self.batches} db_retries={self.db_retries} "
            f"rate={self.consumed / el:.0f} msg/s"
        )


class _Stop(Exception):
    pass


class IngestService:
    """Consume the configured topics into the database until ``stop`` is set.

    ``run(stop)`` blocks; it returns after a graceful shutdown (the batch in flight is either
    committed whole or abandoned whole, never half-written).
    """

    def __init__(self, settings: Settings, engine: Engine | None = None, *, instance: str | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine_from_url(settings.database.url, pool_size=settings.database.pool_size)
        k, ing = settings.kafka, settings.ingest
        self.group_id = k.group_id
        self.topics = list(k.topics)
        self.dlq_topic = k.dlq_topic
        self.instance = instance or f"ingest-{id(self):x}"
        self.decoder = Decoder(
            DecodePolicy(
                max_message_bytes=ing.max_message_bytes,
                max_field_chars=ing.max_field_chars,
                min_timestamp=datetime.fromisoformat(ing.min_timestamp).astimezone(UTC),
                max_future_skew=timedelta(seconds=ing.max_future_skew_s),
            ),
            Redactor.from_settings(settings.pii),
        )
        self.writer = BatchWriter(self.engine, self.group_id)
        self.batch_policy = BatchPolicy(ing.batch_size, ing.batch_max_ms)
        self.stats = IngestStats()
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=ing.max_pending_batches)
        self._done: queue.Queue[tuple[int, dict[tuple[str, int], int]]] = queue.Queue()
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer_error: BaseException | None = None
        self.consumer: Any = None
        self.producer: Any = None
        self._assigned: set[Any] = set()
        self.idle_since: float = time.monotonic()

    # -- wiring -------------------------------------------------------------------------------
    def _make_clients(self) -> None:
        from kafka import KafkaConsumer

        from driftloop.broker import ensure_topics, make_producer

        k, ing = self.settings.kafka, self.settings.ingest
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
        popts = {"max_request_size": max(16 * 1024 * 1024, ing.max_message_bytes + 65536), **k.producer}
        self.producer = make_producer(k.bootstrap_servers, **popts)
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))

    # -- rebalance ----------------------------------------------------------------------------
    def _on_revoked(self, revoked: set[Any]) -> None:
        # Let batches already handed over finish (their offsets land in the DB), then drop the
        # one being built: after re-assignment we seek to the DB offsets and read it again.
        deadline = time.monotonic() + max(1.0, self.settings.kafka.consumer.get("max_poll_interval_ms", 10000) / 2000)
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._queue.unfinished_tasks:
            log.warning("partitions revoked while the writer is still busy; abandoning queued batches")
            self._bump_generation()
        self._current = Batch(generation=self._generation)
        self._state.reset()
        self._assigned -= set(revoked)
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    def _on_assigned(self, assigned: set[Any]) -> None:
        # Runs on kafka-python's IO thread: no blocking consumer calls here (seek is local).
        self._assigned |= set(assigned)
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

    # -- the chain ----------------------------------------------------------------------------
    def _reject(self, msg: Any, err: InvalidMessage, batch: Batch) -> None:
        raw: bytes = msg.value if msg.value is not None else b""
        now = datetime.now(UTC)
        headers = [
            ("dlq.reason", err.reason.encode()),
            ("dlq.error", err.detail[:1000].encode("utf-8", "replace")),
            ("dlq.source.topic", msg.topic.encode()),
            ("dlq.source.partition", str(msg.partition).encode()),
            ("dlq.source.offset", str(msg.offset).encode()),
            ("dlq.consumer.group", self.group_id.encode()),
            ("dlq.rejected.at", now.isoformat().encode()),
        ]
        headers.extend((k, v) for k, v in (msg.headers or []) if not k.startswith("dlq."))
        item = DlqItem(raw, msg.key, headers)
        self._send_dlq(item)
        batch.dlq_futures.append(item)
        keep = self.settings.ingest.store_raw_reject_bytes
        batch.rejects.append({
            "source_topic": msg.topic,
            "source_partition": msg.partition,
            "source_offset": msg.offset,
            "reason": err.reason,
            "error": err.detail.replace("\x00", "\\x00")[:4000],
            "raw": raw[:keep] if keep else None,
            "raw_size": len(raw),
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
            "dlq_topic": self.dlq_topic,
            "rejected_at": now,
        })  # fmt: skip
        self.stats.rejected += 1
        self.stats.rejected_by_reason[err.reason] = self.stats.rejected_by_reason.get(err.reason, 0) + 1
        m.REJECTS.labels(reason=err.reason).inc()
        log.debug("rejected %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, err)

    def _send_dlq(self, item: DlqItem) -> None:
        item.future = self.producer.send(self.dlq_topic, value=item.raw, key=item.key, headers=item.headers)

    def _process(self, msg: Any, batch: Batch) -> None:
        src = Source(msg.topic, msg.partition, msg.offset, msg.timestamp)
        try:
            kind, row, fbs = self.decoder.decode(msg.value, src)
        except InvalidMessage as e:
            self._reject(msg, e, batch)
        else:
            if kind == "interaction":
                batch.interactions.append(row)
                if fbs:
                    batch.feedback.extend(fbs)
            else:
                batch.feedback.append(row)
        batch.offsets[(msg.topic, msg.partition)] = msg.offset + 1
        batch.n_messages += 1

    # -- writer thread ------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        ing = self.settings.ingest
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                delay = ing.db_retry_initial_s
                attempt = 0
                while True:
                    if batch.generation != self._generation:
                        log.info("dropping a batch of %d messages from before a rebalance", batch.n_messages)
                        break
                    try:
                        self._await_dlq(batch)
                        res = self.writer.write(batch)
                    except Exception as e:
                        attempt += 1
                        self.stats.db_retries += 1
                        m.DB_RETRIES.inc()
                        if self._stop.is_set() and attempt > 1 and self._abandon_on_stop:
                            log.error("shutting down while the write keeps failing (%s); abandoning the batch "
                                      "of %d messages: it was not committed and will be read again", e,
                                      batch.n_messages)  # fmt: skip
                            break
                        log.error("batch write failed (attempt %d, retry in %.1fs): %s", attempt, delay,
                                  str(e).splitlines()[0][:300])  # fmt: skip
                        time.sleep(delay)
                        delay = min(delay * 2, ing.db_retry_max_s)
                        continue
                    self._account(batch, res)
                    self._done.put((batch.generation, batch.offsets))
                    break
            except BaseException as e:  # pragma: no cover - a bug: stop the service loudly
                self._writer_error = e
                log.exception("writer thread crashed")
                self._stop.set()
                return
            finally:
                self._queue.task_done()

    def _await_dlq(self, batch: Batch) -> None:
        for item in batch.dlq_futures:
            if item.acked:
                continue
            try:
                item.future.get(timeout=30)
            except Exception as e:
                log.error("dead-letter send failed (%s); re-sending", e)
                self._send_dlq(item)
                raise
            item.acked = True

    def _account(self, batch: Batch, res: WriteResult) -> None:
        s = self.stats
        s.last_commit_at = time.time()
        s.batches += 1
        s.stored += res.inserted
        s.duplicates += res.duplicates
        s.feedback += res.feedback_inserted
        m.STORED.inc(res.inserted)
        m.DUPLICATES.inc(res.duplicates)
        m.FEEDBACK.inc(res.feedback_inserted)
        m.BATCHES.inc()

    # -- Kafka commits ------------------------------------------------------------------------
    def _commit_done(self) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict[Any, Any] = {}
        while True:
            try:
                _gen, offs = self._done.get_nowait()
            except queue.Empty:
                break
            for (t, p), o in offs.items():
                offsets[TopicPartition(t, p)] = OffsetAndMetadata(o, "", -1)
        offsets = {tp: o for tp, o in offsets.items() if tp in self._assigned}
        if offsets:
            try:
                self.consumer.commit_async(offsets)
            except Exception as e:  # the DB holds the truth; Kafka's copy is for lag tools
                log.debug("Kafka offset commit skipped: %s", e)

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
            from kafka.errors import OffsetOutOfRangeError

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
        from kafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

        self._stop = stop
        self._abandon_on_stop = False
        self._make_clients()
        writer = threading.Thread(target=self._writer_loop, name="driftloop-db-writer", daemon=True)
        writer.start()
        self._current = Batch(generation=self._generation)
        self._state = self.batch_policy.new_state()
        pending: Batch | None = None
        paused = False
        last_progress = last_lag = last_topic_check = time.monotonic()
        self.idle_since = time.monotonic()
        log.info("ingesting %s into %s as group %r", self.topics, self.engine.url.render_as_string(hide_password=True),
                 self.group_id)  # fmt: skip
        try:
            while not stop.is_set():
                self._commit_done()
                now = time.monotonic()
                if pending is not None:
                    try:
                        self._queue.put_nowait(pending)
                        pending = None
                    except queue.Full:
                        if not paused and self._assigned:
                            self.consumer.pause(*self._assigned)
                            paused = True
                            log.info("writer is behind; pausing consumption")
                        self.consumer.poll(timeout_ms=100)  # keeps the group membership alive
                        continue
                if paused:
                    self.consumer.resume(*self.consumer.paused())
                    paused = False
                try:
                    records = self.consumer.poll(timeout_ms=100)
                except OffsetOutOfRangeError as e:
                    self._offset_out_of_range(e)
                    continue
                except NoOffsetForPartitionError as e:
                    log.warning("no stored or committed offset for %s; starting at the beginning", e)
                    self.consumer.seek_to_beginning()
                    continue
                batch = self._current
                n = 0
                for msgs in records.values():
                    for msg in msgs:
                        self._process(msg, batch)
                    n += len(msgs)
                if n:
                    if self.stats.first_message_at is None:
                        self.stats.first_message_at = time.time()
                    self.stats.consumed += n
                    m.CONSUMED.inc(n)
                    self._state.add(n)
                    self.idle_since = now
                if self._state.should_flush():
                    pending = batch
                    self._current = Batch(generation=self._generation)
                    self._state.reset()
                now = time.monotonic()
                if now - last_lag > 1.0:
                    self._update_lag()
                    last_lag = now
                if progress_every_s and now - last_progress >= progress_every_s:
                    log.info("progress: %s", self.stats.summary())
                    last_progress = now
                if now - last_topic_check > 10.0:
                    last_topic_check = now
                    if not self._assigned and self.settings.kafka.create_topics:
                        self._recreate_topics()
                if (
                    stop_when_idle_s is not None
                    and pending is None
                    and self._state.size == 0
                    and self._queue.unfinished_tasks == 0
                    and now - self.idle_since >= stop_when_idle_s
                    and self._assigned
                    and self.lag() == 0
                ):
                    log.info("idle for %.1fs with no lag; stopping", stop_when_idle_s)
                    break
            # graceful shutdown: hand over what we have, give the writer a bounded time
            if pending is not None:
                self._put_with_timeout(pending, shutdown_timeout_s)
            if self._current.n_messages:
                self._put_with_timeout(self._current, shutdown_timeout_s)
        finally:
            self._abandon_on_stop = True
            self._finish_writer(writer, shutdown_timeout_s)
            self._commit_done()
            self._close_clients()
        if self._writer_error:
            raise RuntimeError("database writer failed") from self._writer_error
        log.info("stopped: %s", self.stats.summary())
        return self.stats

    def _put_with_timeout(self, batch: Batch, timeout: float) -> None:
        try:
            self._queue.put(batch, timeout=timeout)
        except queue.Full:
            log.error("writer did not accept the last batch within %.0fs; abandoning %d uncommitted messages "
                      "(they will be read again)", timeout, batch.n_messages)  # fmt: skip

    def _finish_writer(self, writer: threading.Thread, timeout: float) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline and writer.is_alive():
            time.sleep(0.02)
        if self._queue.unfinished_tasks:
            log.error("writer still busy after %.0fs; abandoning uncommitted batches (they will be read again)",
                      timeout)  # fmt: skip
            self._bump_generation()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        writer.join(timeout=5)

    def _close_clients(self) -> None:
        if self.producer is not None:
            try:
                self.producer.flush(timeout=10)
                self.producer.close(timeout=5)
            except Exception as e:
                log.warning("closing the DLQ producer: %s", e)
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
