"""Copies of rejected messages to the dead-letter topic: a side path that can fail without loss.

The durable record of a rejected message is its ``rejected_messages`` row (reason, error, raw
bytes up to ``ingest.store_raw_reject_bytes``, size, SHA-256), written in the batch's transaction
together with the offsets. The DLQ copy is for people and tools that replay rejects from Kafka.
A DLQ that refuses a message (too large, bad headers, a missing or invalid topic, a broker error
or timeout) therefore never stops the batch and is never retried forever: the outcome is written
on the row (``dlq_status``/``dlq_error``), counted in ``driftloop_ingest_dlq_failures_total{reason}``
and logged, and ingestion goes on.

Transient broker trouble is retried by the producer itself (``retries``, bounded by
``delivery_timeout_ms``); ``settle`` then waits at most ``ingest.dlq_timeout_s`` per batch, and a
copy still unconfirmed by then is recorded as failed (it may still arrive: the DLQ is at least once). After a
failure that concerns the topic or the broker (not one message), further sends are skipped for
``_UNAVAILABLE_FOR_S`` seconds, so that thousands of rejects do not each wait for a dead broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("driftloop.ingest")

# Failure reasons: stable strings (metric label values and rejected_messages.dlq_error prefix).
TOO_LARGE = "too_large"
BAD_HEADERS = "bad_headers"
MISSING_TOPIC = "missing_topic"
TIMEOUT = "timeout"
BROKER_ERROR = "broker_error"
PRODUCER_ERROR = "producer_error"
UNAVAILABLE = "unavailable"  # not tried: the topic or broker failed moments ago

#: reasons that say nothing about the next message: keep sending
_PER_MESSAGE = frozenset({TOO_LARGE, BAD_HEADERS, PRODUCER_ERROR})
_UNAVAILABLE_FOR_S = 30.0


@dataclass
class DlqItem:
    """One rejected message on its way to the dead-letter topic; ``row`` is its rejected_messages row."""

    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    row: dict[str, Any]
    future: Any = None
    done: bool = False
    failure_reason: str | None = None

    def succeeded(self) -> None:
        self.done = True
        self.row["dlq_status"] = "sent"
        self.row["dlq_error"] = None

    def failed(self, reason: str, error: str) -> None:
        self.done = True
        self.failure_reason = reason
        self.row["dlq_status"] = "failed"
        self.row["dlq_error"] = f"{reason}: {error}"[:2000]


def classify(exc: BaseException) -> str:
    """Map a producer exception to a failure reason."""
    from kafka import errors as E

    if isinstance(exc, E.MessageSizeTooLargeError):
        return TOO_LARGE
    if isinstance(exc, E.UnknownTopicOrPartitionError | E.InvalidTopicError | E.TopicAuthorizationFailedError):
        return MISSING_TOPIC
    if isinstance(exc, E.KafkaTimeoutError):
        # "Failed to update metadata after N secs": the topic does not exist (auto-create off) or no broker
        return MISSING_TOPIC if "metadata" in str(exc).lower() else TIMEOUT
    if isinstance(exc, E.KafkaError):
        return BROKER_ERROR
    if isinstance(exc, ValueError) and "topic" in str(exc).lower():  # an illegal topic name
        return MISSING_TOPIC
    if isinstance(exc, TypeError | ValueError | AssertionError | UnicodeError):
        return BAD_HEADERS
    return PRODUCER_ERROR


def clean_headers(headers: list[tuple[str, bytes | None]]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Headers a producer accepts: null values become b"" (their keys are returned to be noted)."""
    out: list[tuple[str, bytes]] = []
    nulls: list[str] = []
    for k, v in headers:
        if v is None:
            nulls.append(k)
            v = b""
        elif not isinstance(v, bytes):
            v = bytes(v)
        out.append((str(k), v))
    return out, nulls


@dataclass
class DeadLetterSender:
    """Sends DlqItems without ever raising; ``settle`` records every outcome on the item's row.

    The producer is made on the first reject, not at start: a dead-letter broker that cannot be
    reached must not keep ingestion from starting (its failure is then recorded like any other).
    """

    make_producer: Callable[[], Any]
    topic: str
    timeout_s: float
    producer: Any = None
    _down_until: float = 0.0
    _down_reason: str = ""

    def send(self, item: DlqItem) -> None:
        if time.monotonic() < self._down_until:
            item.failed(UNAVAILABLE, f"not sent: the dead-letter topic {self.topic!r} failed moments ago "
                                     f"({self._down_reason})")  # fmt: skip
            return
        try:
            if self.producer is None:
                self.producer = self.make_producer()
            item.future = self.producer.send(self.topic, value=item.value, key=item.key, headers=item.headers)
        except Exception as e:
            self._fail(item, e)

    def close(self) -> None:
        """Flush and close the producer (bounded); never raises."""
        if self.producer is None:
            return
        try:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=5)
        except Exception as e:
            log.warning("closing the dead-letter producer: %s", e)

    def settle(self, items: Iterable[DlqItem]) -> None:
        """Wait (bounded by ``timeout_s`` in all) for the sends of ``items``; never raises."""
        deadline = time.monotonic() + self.timeout_s
        for item in items:
            if item.done or item.future is None:
                continue
            try:
                item.future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                self._fail(item, e)
            else:
                item.succeeded()

    def _fail(self, item: DlqItem, exc: BaseException) -> None:
        try:
            reason = classify(exc)
        except Exception:  # a side path must not fail the batch, not even through a bug here
            reason = PRODUCER_ERROR
        text = f"{type(exc).__name__}: {exc}"
        item.failed(reason, text)
        size = len(item.value) if item.value is not None else 0
        log.error("dead-letter copy of %s[%s]@%s (%d bytes) failed (%s): %s; the reject is still recorded in "
                  "rejected_messages", item.row.get("source_topic"), item.row.get("source_partition"),
                  item.row.get("source_offset"), size, reason, text)  # fmt: skip
        if reason not in _PER_MESSAGE:
            self._down_until = time.monotonic() + _UNAVAILABLE_FOR_S
            self._down_reason = f"{reason}: {text[:200]}"
