"""Log your own LLM calls to driftloop: v1 log records sent to Kafka without ever blocking your app.

::

    from driftloop.client import DriftloopLogger, wrap_openai

    dl = DriftloopLogger("kafka:9092", "driftloop.logs", model_id="support-bot", model_version="gpt-4o-2024-08")
    create = wrap_openai(openai_client.chat.completions.create, dl)
    resp = create(model="gpt-4o", messages=[{"role": "user", "content": "Where is my order 1234?"}])
    dl.feedback(resp.id, score=1)          # later, when the user rates the answer
    dl.close()                              # at exit: deliver what is buffered (bounded by a timeout)

Records go into a bounded in-memory buffer; a background thread sends them with kafka-python. When the
broker is unreachable the records wait in the buffer and are retried with backoff until it returns; when
the buffer is full new records are dropped and counted (``stats().dropped``). ``log`` and ``feedback``
never block on the network and never raise because of Kafka. Only kafka-python is needed (no openai).

Oversized records are **truncated, not dropped** (see :func:`fit_record`): text fields longer than
``max_field_chars`` and records larger than ``max_record_bytes`` (default 1,000,000 bytes, below Kafka's
default ``message.max.bytes`` and driftloop's ``ingest.max_message_bytes``) are cut, with a marker in the
text and ``metadata["driftloop_truncated"] = {field: original size in bytes}``, so monitoring still sees the
interaction. A record the producer or broker refuses for a reason of its own (too large, invalid) is dropped
and counted by reason (``stats().rejected_reasons``), never retried: one bad record cannot stall the others.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from driftloop.records import (
    INTERACTION_FIELDS,
    FeedbackEventV1,
    LogRecordV1,
    now_rfc3339,
    to_wire,
)
from driftloop.retry import retrying

__all__ = ["DriftloopLogger", "LoggerStats", "RecordLogger", "feedback_record", "fit_record", "now_rfc3339",
           "wrap_openai"]  # fmt: skip

log = logging.getLogger("driftloop.client")

#: kafka-python options that keep a dead broker from holding the sender thread for long (overridable).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger_ms": 50,
    "max_block_ms": 2000,
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 10000,
    "bootstrap_timeout_ms": 2000,
    "reconnect_backoff_max_ms": 1000,
}

#: Default cap of one serialised record: under Kafka's default ``message.max.bytes`` (1,048,588 per batch) and
#: ingestion's ``max_message_bytes`` (1 MiB), with room for the key and the batch overhead.
DEFAULT_MAX_RECORD_BYTES = 1_000_000
#: Default cap of one text field, in characters: ingestion rejects longer ones (``ingest.max_field_chars``).
DEFAULT_MAX_FIELD_CHARS = 200_000
#: ``metadata`` key listing what was truncated: ``{"prompt": 2400000, "metadata.blob": 17000000}``.
TRUNCATED_KEY = "driftloop_truncated"
#: Appended to a truncated text.
TRUNCATION_MARKER = "…[truncated by driftloop]"

#: Reasons a record is dropped without retrying (``LoggerStats.rejected_reasons`` keys).
TOO_LARGE = "record too large"
INVALID = "invalid record"
RETRIES_EXHAUSTED = "retries exhausted"

_TEXT_FIELDS = ("prompt", "response", "reference", "correction", "comment", "user_id")
_MARKER_BYTES = len(TRUNCATION_MARKER.encode())


# ------------------------------------------------------------------------------------------- record size cap


class RecordTooLarge(Exception):
    """A record that cannot be truncated under the cap (e.g. thousands of small fields)."""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _cut(text: str, keep_chars: int) -> str:
    return text[: max(0, keep_chars)] + TRUNCATION_MARKER


@dataclass
class _Slot:
    """One truncatable value: ``container[key]``, named ``path`` in the truncation note."""

    container: Any
    key: Any
    path: str
    strings_only: bool

    @property
    def value(self) -> Any:
        return self.container[self.key]


def _slots(rec: dict[str, Any], meta: dict[str, Any] | None) -> Iterator[_Slot]:
    for name in _TEXT_FIELDS:
        if isinstance(rec.get(name), str):
            yield _Slot(rec, name, name, True)
    msgs = rec.get("messages")
    if isinstance(msgs, list):
        for i, m in enumerate(msgs):
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                yield _Slot(m, "content", f"messages.{i}.content", True)
    if meta is not None:
        for k in meta:
            if k != TRUNCATED_KEY:
                yield _Slot(meta, k, f"metadata.{k}", False)
    elif rec.get("metadata") is not None:  # not an object (ingestion would refuse it anyway): cut as a whole
        yield _Slot(rec, "metadata", "metadata", False)


def _has_long_text(record: Mapping[str, Any], max_chars: int | None) -> bool:
    if max_chars is None:
        return False
    if any(isinstance(record.get(n), str) and len(record[n]) > max_chars for n in _TEXT_FIELDS):
        return True
    msgs = record.get("messages")
    return isinstance(msgs, list) and any(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and len(m["content"]) > max_chars for m in msgs
    )


def fit_record(record: Mapping[str, Any], max_bytes: int,
               max_field_chars: int | None = None) -> tuple[bytes, dict[str, int] | None]:  # fmt: skip
    """Serialise ``record``, truncating it to fit; return the JSON bytes and ``{field: original bytes}`` or None.

    Why truncate rather than drop: the interaction (model, latency, tokens, feedback joins) still reaches
    monitoring, and the note says exactly what was cut. Text fields over ``max_field_chars`` are cut to it
    (ingestion rejects longer ones); then, while the record is over ``max_bytes``, the largest remaining value
    (a text field, a message's content, a top-level ``metadata`` value) is cut: strings keep their start plus
    :data:`TRUNCATION_MARKER`, other ``metadata`` values become a marker string. The note goes to
    ``metadata["driftloop_truncated"]`` (sizes are serialised JSON bytes). Raises :class:`RecordTooLarge` when
    nothing large is left to cut, TypeError/ValueError when the record is not JSON.
    """
    value = _dumps(record)
    if len(value) <= max_bytes and not _has_long_text(record, max_field_chars):
        return value, None
    rec = dict(record)
    if isinstance(rec.get("messages"), list):
        rec["messages"] = [dict(m) if isinstance(m, Mapping) else m for m in rec["messages"]]
    meta: dict[str, Any] | None = dict(rec["metadata"]) if isinstance(rec.get("metadata"), Mapping) else None
    note: dict[str, int] = {}

    def attach() -> None:
        nonlocal meta
        if meta is None:
            meta = {}
        meta[TRUNCATED_KEY] = dict(note)
        rec["metadata"] = meta

    if max_field_chars is not None:
        for slot in _slots(rec, None):
            v = slot.value
            if slot.strings_only and len(v) > max_field_chars:
                note.setdefault(slot.path, len(_dumps(v)))
                slot.container[slot.key] = _cut(v, max_field_chars - len(TRUNCATION_MARKER))
        if note:
            attach()
    for _ in range(64):  # each round cuts the largest value; a few rounds in practice
        value = _dumps(rec)
        if len(value) <= max_bytes:
            return value, note
        excess = len(value) - max_bytes
        sized = [(len(_dumps(s.value)), s) for s in _slots(rec, meta)]
        if not sized:
            break
        size, slot = max(sized, key=lambda x: x[0])
        if size <= _MARKER_BYTES + 64:
            break  # only small values left: truncating cannot make it fit
        v = slot.value
        note.setdefault(slot.path, size)
        if isinstance(v, str):
            keep = len(v) * max(0, size - excess - _MARKER_BYTES - 64) // size  # chars ~ bytes, escapes included
            slot.container[slot.key] = _cut(v, keep)
        else:
            slot.container[slot.key] = f"[truncated by driftloop: {size} bytes]"
        attach()
    raise RecordTooLarge(f"{len(value)} bytes after truncating {len(note)} field(s) (max {max_bytes})")


def _error_reason(exc: BaseException) -> str | None:
    """The reason a record is refused on its own (dropped, not retried), or None for a transient error."""
    from kafka import errors as ke

    if isinstance(exc, (ke.MessageSizeTooLargeError, ke.RecordListTooLargeError)):
        return TOO_LARGE
    if isinstance(exc, (ke.InvalidRecordError, ke.CorruptRecordError, TypeError, ValueError)):
        return INVALID
    return None


def _exc_text(exc: BaseException) -> str:
    """``Type: message``, once (kafka-python's messages already start with ``[Error n] Type``)."""
    name, text = type(exc).__name__, str(exc)
    return text if name in text else f"{name}: {text}".rstrip(": ")


def _describe(exc: BaseException | None) -> str:
    """A transient error as shown in ``last_error`` and the shutdown message."""
    from kafka import errors as ke

    if exc is None:
        return "broker unreachable: not acknowledged in time"
    text = _exc_text(exc)
    unreachable = (ke.KafkaTimeoutError, ke.KafkaConnectionError, ke.NodeNotReadyError, ke.RequestTimedOutError,
                   OSError)  # fmt: skip
    return f"broker unreachable: {text}" if isinstance(exc, unreachable) else f"broker error: {text}"


# ------------------------------------------------------------------------------------------------ the buffer


class _Undelivered(Exception):
    """Nothing of a batch got through (broker down): the sender waits before the next round."""


@dataclass(frozen=True)
class LoggerStats:
    """Counters of a :class:`RecordLogger` since start.

    ``dropped``: buffer full or closed. ``invalid``: not JSON, or a ``log`` call that is not a valid v1 record
    (ingestion would refuse it). ``truncated``: sent cut to fit the caps.
    ``rejected``: refused for a reason of their own and dropped without retrying (``rejected_reasons``: by
    reason, e.g. ``record too large``). ``send_errors``: failed delivery attempts (retried). ``last_error``: the
    current transient problem (None once a send succeeds); ``last_rejected``: the last rejection, with detail.
    """

    sent: int
    dropped: int
    buffered: int
    send_errors: int
    invalid: int
    connected: bool
    buffer_size: int
    truncated: int = 0
    rejected: int = 0
    rejected_reasons: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_rejected: str | None = None


@dataclass
class _Item:
    key: bytes | None
    value: bytes
    attempts: int = 0  # failed attempts while other records were delivered
    mark: int = -1  # the logger's sent count at this record's last failure


class RecordLogger:
    """A bounded, non-blocking queue of JSON records drained to one Kafka topic by a background thread.

    ``submit`` serialises (truncating oversized records, see :func:`fit_record`) and only appends to the buffer
    (or drops and counts when it holds ``buffer_size`` records, those being sent included). Each record is sent
    on its own, so one the producer or broker refuses (too large, invalid) is dropped and counted by reason
    without holding up the rest. Transient failures stay in the buffer, in order: when a whole batch fails (the
    broker is down) it is retried with exponential backoff (``backoff_s`` .. ``max_backoff_s``) on a
    re-created producer, and with ``create_topic`` the topic is created again if it is missing (a broker that
    lost its data); a record that keeps failing while others are delivered is dropped after
    ``max_record_attempts`` (reason ``retries exhausted``). Delivery is at least once: a record may be sent
    twice around a failure (ingestion stores a ``request_id`` once).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str,
        *,
        buffer_size: int = 10_000,
        producer_options: Mapping[str, Any] | None = None,
        create_topic: bool = False,
        topic_partitions: int = 3,
        replication_factor: int = 1,
        max_batch: int = 500,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        name: str = "driftloop-logger",
        producer_factory: Callable[[], Any] | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_field_chars: int | None = DEFAULT_MAX_FIELD_CHARS,
        max_record_attempts: int = 5,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: must be >= 1, got {buffer_size}")
        if not topic:
            raise ValueError("topic: must not be empty")
        if max_record_bytes < 1024:
            raise ValueError(f"max_record_bytes: must be >= 1024, got {max_record_bytes}")
        if max_field_chars is not None and max_field_chars < 64:
            raise ValueError(f"max_field_chars: must be >= 64, got {max_field_chars}")
        if max_record_attempts < 1:
            raise ValueError(f"max_record_attempts: must be >= 1, got {max_record_attempts}")
        self.bootstrap: str | list[str] = bootstrap if isinstance(bootstrap, str) else list(bootstrap)
        self.topic = topic
        self.buffer_size = buffer_size
        self.producer_options = {**PRODUCER_DEFAULTS, **(producer_options or {})}
        self.create_topic = create_topic
        self.topic_partitions = topic_partitions
        self.replication_factor = replication_factor
        self.max_batch = max_batch
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_record_bytes = max_record_bytes
        self.max_field_chars = max_field_chars
        self.max_record_attempts = max_record_attempts
        self._factory = producer_factory
        self._pending: collections.deque[_Item] = collections.deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._close_deadline = 0.0
        self._producer: Any = None
        self._sent = 0
        self._dropped = 0
        self._errors = 0
        self._invalid = 0
        self._truncated = 0
        self._rejected: collections.Counter[str] = collections.Counter()
        self._last_error: str | None = None
        self._last_rejected: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side (your request path) --------------------------------------------------------------------

    def submit(self, record: LogRecordV1 | FeedbackEventV1 | Mapping[str, Any]) -> bool:
        """Queue ``record`` (a v1 record or any JSON object); False when it was dropped (buffer full, closed, not
        JSON, too large).

        A record over the caps is truncated and queued (True); see :func:`fit_record`.
        """
        try:
            record = to_wire(record)
            value, note = fit_record(record, self.max_record_bytes, self.max_field_chars)
            rid = record.get("request_id")
            key = str(rid).encode() if rid is not None else None
        except RecordTooLarge as e:
            self._reject(TOO_LARGE, str(e))
            return False
        except (TypeError, ValueError) as e:
            self.count_invalid(f"not JSON-serialisable: {e}")
            return False
        first = False
        with self._cond:
            if self._closing or len(self._pending) + self._inflight >= self.buffer_size:
                self._dropped += 1
                return False
            if note:
                self._truncated += 1
                first = self._truncated == 1
            self._pending.append(_Item(key, value))
            self._cond.notify()
        if note:
            (log.warning if first else log.debug)(
                "driftloop log record %s truncated to %d bytes (cut: %s; max_record_bytes %d, max_field_chars %s)",
                rid, len(value), ", ".join(f"{k} {v} B" for k, v in note.items()), self.max_record_bytes,
                self.max_field_chars)  # fmt: skip
        return True

    def stats(self) -> LoggerStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return LoggerStats(sent=self._sent, dropped=self._dropped, buffered=len(self._pending) + self._inflight,
                               send_errors=self._errors, invalid=self._invalid,
                               connected=self._producer is not None, buffer_size=self.buffer_size,
                               truncated=self._truncated, rejected=sum(self._rejected.values()),
                               rejected_reasons=dict(self._rejected), last_error=self._last_error,
                               last_rejected=self._last_rejected)  # fmt: skip

    @property
    def last_error(self) -> str | None:
        """The current transient send or connect problem (None after a successful send)."""
        return self._last_error

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the buffer is empty; True if it is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()  # cut a retry backoff short
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> int:
        """Stop accepting records, deliver the buffer for up to ``timeout`` s; return how many were not delivered."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout + 3.0)
        with self._cond:
            lost = len(self._pending) + self._inflight
            self._pending.clear()
        self._drop_producer(timeout=1.0)
        if lost:
            log.warning("driftloop logger closed with %d record(s) undelivered to %s on %s (%s)", lost, self.topic,
                        self.bootstrap, self._last_error or "broker unreachable: still connecting")  # fmt: skip
        st = self.stats()
        if st.rejected:
            log.warning("driftloop logger: %d record(s) were refused and dropped since start (%s); last: %s",
                        st.rejected, ", ".join(f"{k}: {v}" for k, v in st.rejected_reasons.items()),
                        st.last_rejected)  # fmt: skip
        return lost

    # -- sender thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        """Drain the buffer; while nothing gets through, wait with the project's backoff (:mod:`driftloop.retry`)."""
        policy = retrying(what=f"driftloop logger: delivering to {self.topic}", initial_s=self.backoff_s,
                          max_s=max(self.max_backoff_s, self.backoff_s), retry_on=_Undelivered, sleep=self._pause,
                          logger=log, level=logging.DEBUG)  # fmt: skip
        while policy(self._round):  # each success starts a new streak: the backoff starts again at backoff_s
            pass

    def _round(self) -> bool:
        """Send one batch; False once closed (or out of time); raise _Undelivered when nothing got through."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait(0.5)
            if not self._pending or (self._closing and time.monotonic() >= self._close_deadline):
                return False
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
            self._inflight = len(batch)
        ok, retry = self._send(batch)
        with self._cond:
            if retry:
                self._pending.extendleft(reversed(retry))
            self._inflight = 0
            self._cond.notify_all()
        if ok or not retry:  # the broker works: go on at once (what failed is at the head, counted)
            return True
        raise _Undelivered(self._last_error or "broker unreachable")

    def _pause(self, seconds: float) -> None:
        """The backoff wait: cut short by flush() and close(), never past close()'s deadline."""
        if self._closing:
            seconds = min(seconds, max(0.0, self._close_deadline - time.monotonic()))
        self._wake.clear()
        self._wake.wait(seconds)

    def _connect(self) -> Any:
        if self._factory is not None:
            return self._factory()
        from driftloop.broker import ensure_topics, make_producer

        if self.create_topic:
            ensure_topics(self.bootstrap, [self.topic], partitions=self.topic_partitions,
                          replication_factor=self.replication_factor, timeout_s=3.0)  # fmt: skip
        return make_producer(self.bootstrap, **self.producer_options)

    def _send(self, batch: list[_Item]) -> tuple[int, list[_Item]]:
        """Send ``batch`` record by record; return (acknowledged, records to retry), in order.

        Records refused for a reason of their own are dropped and counted here. A transient error while
        handing records to the producer (metadata timeout, full buffer) leaves that record and the rest for
        the next round instead of waiting ``max_block_ms`` once per record.
        """
        try:
            if self._producer is None:
                prod = self._connect()
                with self._cond:
                    self._producer = prod
            prod = self._producer
        except Exception as e:  # unreachable broker, auth failure, ...: retried later
            self._note_error(f"broker unreachable: connect: {_exc_text(e)}")
            return 0, batch
        futures: list[tuple[_Item, Any]] = []
        unsent: list[_Item] = []
        problem: str | None = None
        for i, item in enumerate(batch):
            try:
                futures.append((item, prod.send(self.topic, key=item.key, value=item.value)))
            except Exception as e:
                reason = _error_reason(e)
                if reason is not None:
                    self._reject(reason, _exc_text(e))
                    continue
                problem = _describe(e)
                unsent = batch[i:]
                break
        if futures:
            wait = self.producer_options.get("delivery_timeout_ms", 10000) / 1000 + 5
            if self._closing:  # close(timeout) bounds the last attempt
                wait = max(0.1, min(wait, self._close_deadline - time.monotonic()))
            try:
                prod.flush(timeout=wait)
            except Exception as e:  # a flush timeout: the futures not done are retried below
                problem = problem or _describe(e)
        ok = 0
        retry: list[_Item] = []
        for item, fut in futures:
            if fut.is_done and fut.succeeded():
                ok += 1
                continue
            exc = fut.exception if fut.is_done and isinstance(fut.exception, BaseException) else None
            reason = _error_reason(exc) if exc is not None else None
            if exc is not None and reason is not None:
                self._reject(reason, _exc_text(exc))
                continue
            problem = problem or _describe(exc)
            retry.append(item)
        with self._cond:
            self._sent += ok
            sent = self._sent
            if ok and not retry and not unsent:
                self._last_error = None
        if not retry and not unsent:
            return ok, []
        self._note_error(problem or "broker unreachable: not acknowledged in time")
        if not ok:  # nothing went through in this batch: maybe the broker or our connection, start afresh
            self._drop_producer(timeout=0.0)
        keep: list[_Item] = []
        for item in retry:  # others were delivered (in this batch or since its last try): it fails on its own
            if ok or (item.mark >= 0 and sent > item.mark):
                item.attempts += 1
            item.mark = sent
            if item.attempts >= self.max_record_attempts:
                self._reject(RETRIES_EXHAUSTED, f"{item.attempts} attempts, last: {problem}")
            else:
                keep.append(item)
        if ok and not keep and not unsent:  # what failed was dropped; the rest went through
            with self._cond:
                self._last_error = None
        return ok, keep + unsent

    def count_invalid(self, detail: str) -> None:
        """Count a record dropped before queueing because it is not a valid v1 record (``stats().invalid``)."""
        with self._cond:
            self._invalid += 1
        log.warning("driftloop log record dropped: %s", detail)

    def _reject(self, reason: str, detail: str) -> None:
        with self._cond:
            self._rejected[reason] += 1
            first = self._rejected[reason] == 1
            self._last_rejected = f"{reason}: {detail}"
        (log.warning if first else log.debug)(
            "driftloop log record dropped, not retried (%s): %s; counted in stats().rejected_reasons", reason,
            detail)  # fmt: skip

    def _note_error(self, msg: str) -> None:
        with self._cond:
            first = self._errors == 0 or self._last_error is None
            self._errors += 1
            self._last_error = msg
        if first:
            log.warning("driftloop logger: cannot deliver to %s on %s (%s); buffering and retrying", self.topic,
                        self.bootstrap, msg)  # fmt: skip

    def _drop_producer(self, timeout: float) -> None:
        with self._cond:
            prod, self._producer = self._producer, None
        if prod is not None:
            try:
                prod.close(timeout=timeout)
            except Exception as e:  # closing a producer of a dead broker may complain; nothing to do
                log.debug("closing the producer failed: %s", e)


# ------------------------------------------------------------------------------------------- user-facing logger


class DriftloopLogger:
    """Send v1 log records and feedback events of your own LLM calls (see the module docstring).

    ``max_record_bytes`` / ``max_field_chars`` cap what one record may carry; larger records are truncated
    (:func:`fit_record`) so that a huge prompt or ``metadata`` can neither be refused by the broker nor by
    ingestion. Keep ``max_record_bytes`` under the broker's ``message.max.bytes`` and ``ingest.max_message_bytes``.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str = "driftloop.logs",
        model_id: str = "unknown",
        *,
        model_version: str | None = None,
        buffer_size: int = 10_000,
        metadata: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        create_topic: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_field_chars: int | None = DEFAULT_MAX_FIELD_CHARS,
    ) -> None:
        self.model_id = model_id
        self.model_version = model_version
        self.metadata = dict(metadata or {})
        self.records = RecordLogger(bootstrap, topic, buffer_size=buffer_size, producer_options=producer_options,
                                    create_topic=create_topic, name="driftloop-client-logger",
                                    max_record_bytes=max_record_bytes, max_field_chars=max_field_chars)  # fmt: skip

    def log(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        response: str | None,
        *,
        latency_ms: float | None = None,
        request_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Queue one interaction; return its ``request_id`` (generated when not given).

        ``prompt`` is the prompt text or an OpenAI-style ``messages`` list. ``fields`` are other v1 fields
        (``tokens_in``, ``tokens_out``, ``finish_reason``, ``user_id``, ``session_id``, ``feedback``,
        ``reference``, ``metadata``, ``model_version``, ``timestamp``); unknown names end up in ``metadata``
        on the driftloop side. Never blocks, never raises because of Kafka.
        """
        rid = request_id or uuid.uuid4().hex
        rec: dict[str, Any] = {"request_id": rid, "timestamp": now_rfc3339(), "model_id": self.model_id,
                               "model_version": self.model_version}  # fmt: skip
        if isinstance(prompt, str):
            rec["prompt"] = prompt
        else:
            rec["messages"] = [dict(m) for m in prompt]
        rec["response"] = response
        if latency_ms is not None:
            rec["latency_ms"] = round(max(0.0, float(latency_ms)), 3)
        meta = {**self.metadata, **(fields.pop("metadata", None) or {})}
        for k, v in fields.items():
            if v is not None:  # unknown names go to metadata, as ingestion would put them
                (rec if k in INTERACTION_FIELDS else meta)[k] = v
        rec["metadata"] = meta or None
        try:
            record = msgspec.convert(rec, LogRecordV1)
        except msgspec.ValidationError as e:  # what ingestion would refuse for its shape: count it here
            self.records.count_invalid(f"{rid} is not a valid v1 record: {e}")
            return rid
        self.records.submit(record)
        return rid

    def feedback(
        self,
        request_id: str,
        score: float | None = None,
        correction: str | None = None,
        *,
        comment: str | None = None,
        feedback_id: str | None = None,
    ) -> bool:
        """Queue a late feedback event for ``request_id``; False if it was dropped (buffer full).

        At least one of ``score``, ``correction``, ``comment`` is required (ValueError otherwise). A
        ``feedback_id`` is generated when not given, so a retried send is stored once.
        """
        ev = feedback_record(request_id, score=score, correction=correction, comment=comment, feedback_id=feedback_id)
        return self.records.submit(ev)

    def stats(self) -> LoggerStats:
        """Sent / dropped / buffered / truncated / rejected counters and the current error."""
        return self.records.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything buffered was delivered (True) or ``timeout`` passed (False)."""
        return self.records.flush(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is buffered (up to ``timeout`` s), stop; return the number of records not delivered."""
        return self.records.close(timeout)

    def __enter__(self) -> DriftloopLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feedback_record(
    request_id: str,
    *,
    score: float | None = None,
    correction: str | None = None,
    comment: str | None = None,
    feedback_id: str | None = None,
) -> FeedbackEventV1:
    """A v1 feedback event; ValueError when it carries nothing. A ``feedback_id`` is generated when not given."""
    if not request_id:
        raise ValueError("request_id: must not be empty")
    if score is None and correction is None and comment is None:
        raise ValueError("feedback needs at least one of score, correction, comment")
    return FeedbackEventV1(type="feedback", request_id=request_id, timestamp=now_rfc3339(),
                           feedback_id=feedback_id or uuid.uuid4().hex, score=None if score is None else float(score),
                           correction=correction, comment=comment)  # fmt: skip


# ---------------------------------------------------------------------------------------------- wrap_openai


def _get(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]`` (OpenAI SDK objects and plain dicts alike); None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _first_choice(resp: Any) -> Any:
    choices = _get(resp, "choices")
    if choices:
        try:
            return choices[0]
        except (IndexError, KeyError, TypeError):
            return None
    return None


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content-part list."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(_get(p, "text") or "") for p in content)
    return str(content)


def wrap_openai(create_fn: Callable[..., Any], logger: DriftloopLogger, *,
                model_version: str | None = None) -> Callable[..., Any]:  # fmt: skip
    """Wrap an OpenAI-style ``create`` (``client.chat.completions.create`` or ``client.completions.create``).

    The wrapper calls ``create_fn`` unchanged, times it, logs one v1 record (the response ``id`` as
    ``request_id``, so ``logger.feedback(resp.id, ...)`` joins) and returns the original response. With
    ``stream=True`` the returned iterator is passed through and the record is logged when it is exhausted.
    Errors of ``create_fn`` propagate and are not logged; a problem while building the record is logged as a
    warning and never reaches your code. Duck-typed: SDK objects or dicts both work.
    """

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        resp = create_fn(*args, **kwargs)
        if kwargs.get("stream"):
            return _LoggedStream(resp, logger, kwargs, t0, model_version)
        try:
            _log_response(logger, kwargs, resp, (time.perf_counter() - t0) * 1000, model_version)
        except Exception as e:  # never break the caller because of logging
            log.warning("wrap_openai: could not log the call: %s", e)
        return resp

    wrapped.__wrapped__ = create_fn  # type: ignore[attr-defined]
    wrapped.__doc__ = create_fn.__doc__
    return wrapped


def _prompt_of(kwargs: Mapping[str, Any]) -> str | list[dict[str, Any]]:
    if kwargs.get("messages") is not None:
        return [{"role": str(_get(m, "role")), "content": _content_text(_get(m, "content"))}
                for m in kwargs["messages"]]  # fmt: skip
    p = kwargs.get("prompt")
    if isinstance(p, list):
        p = p[0] if len(p) == 1 else "\n".join(map(str, p))
    return "" if p is None else str(p)


def _log_response(logger: DriftloopLogger, kwargs: Mapping[str, Any], resp: Any, latency_ms: float,
                  model_version: str | None) -> str:  # fmt: skip
    choice = _first_choice(resp)
    msg = _get(choice, "message")
    text = _content_text(_get(msg, "content")) if msg is not None else _get(choice, "text")
    usage = _get(resp, "usage")
    fields: dict[str, Any] = {
        "tokens_in": _get(usage, "prompt_tokens"),
        "tokens_out": _get(usage, "completion_tokens"),
        "finish_reason": _get(choice, "finish_reason"),
        "user_id": kwargs.get("user"),
        # wrap_openai's model_version, else the logger's, else the model that answered
        "model_version": model_version or logger.model_version or _get(resp, "model") or kwargs.get("model"),
        "metadata": {"requested_model": kwargs.get("model")} if kwargs.get("model") else None,
    }
    rid = _get(resp, "id")
    return logger.log(_prompt_of(kwargs), None if text is None else str(text), latency_ms=latency_ms,
                      request_id=str(rid) if rid else None, **fields)  # fmt: skip


class _LoggedStream:
    """Iterates a streamed response, collecting the text; logs once when the stream ends."""

    def __init__(self, stream: Any, logger: DriftloopLogger, kwargs: Mapping[str, Any], t0: float,
                 model_version: str | None) -> None:  # fmt: skip
        self._stream = stream
        self._logger = logger
        self._kwargs = dict(kwargs)
        self._t0 = t0
        self._model_version = model_version
        self._parts: list[str] = []
        self._id: Any = None
        self._model: Any = None
        self._finish: Any = None
        self._usage: Any = None
        self._logged = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                self._collect(chunk)
                yield chunk
        finally:
            self._log()

    def __getattr__(self, name: str) -> Any:  # e.g. .close() or .response of the SDK's Stream
        return getattr(self._stream, name)

    def _collect(self, chunk: Any) -> None:
        try:
            self._id = self._id or _get(chunk, "id")
            self._model = self._model or _get(chunk, "model")
            self._usage = _get(chunk, "usage") or self._usage
            choice = _first_choice(chunk)
            if choice is None:
                return
            delta = _get(choice, "delta")
            piece = _content_text(_get(delta, "content")) if delta is not None else _get(choice, "text")
            if piece:
                self._parts.append(str(piece))
            self._finish = _get(choice, "finish_reason") or self._finish
        except Exception as e:  # a chunk of an unexpected shape: keep streaming
            log.debug("wrap_openai: unexpected chunk: %s", e)

    def _log(self) -> None:
        if self._logged:
            return
        self._logged = True
        try:
            fake = {"id": self._id, "model": self._model, "usage": self._usage,
                    "choices": [{"text": "".join(self._parts), "finish_reason": self._finish}]}  # fmt: skip
            _log_response(self._logger, self._kwargs, fake, (time.perf_counter() - self._t0) * 1000,
                          self._model_version)  # fmt: skip
        except Exception as e:
            log.warning("wrap_openai: could not log the streamed call: %s", e)
