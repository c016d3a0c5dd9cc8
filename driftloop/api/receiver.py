"""The HTTP front door's core: read a capped body, map it to v1 records, produce them and wait for the broker.

The receiver holds no state: a request is answered 200 only after the broker acknowledged every record
it produced (acks=all), so a crash after the answer loses nothing and a client that retries after a
503 (or a lost answer) produces the same records again, which ingestion stores once (``request_id``).
Routes (HTTP status codes, OTLP response bodies) are in :mod:`driftloop.api.routes.ingest`; this module
knows nothing about FastAPI beyond reading a Starlette request's body.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import msgspec
import numpy as np
from kafka.partitioner import DefaultPartitioner

from driftloop.ingest.decode import BAD_TIMESTAMP, MISSING_FIELD, UNKNOWN_TYPE, WRONG_TYPE
from driftloop.records import FeedbackEventV1, LogRecordV1

if TYPE_CHECKING:
    from driftloop.settings import Settings, TopicFormat

log = logging.getLogger("driftloop.api.receiver")
_encode = msgspec.json.Encoder().encode

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NDJSON = "application/x-ndjson"
#: google.rpc.Code values used in OTLP error bodies
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, UNIMPLEMENTED, INTERNAL = 3, 8, 14, 12, 13
#: at most this many per-item errors are listed in an answer (the counts are always complete)
MAX_LISTED_ERRORS = 20


class ReceiverError(Exception):
    """A request answered with ``status`` (and ``code``, the google.rpc.Code of OTLP error bodies)."""

    def __init__(self, status: int, code: int, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def too_large(message: str) -> ReceiverError:
    return ReceiverError(413, RESOURCE_EXHAUSTED, message)


def unsupported(message: str) -> ReceiverError:
    return ReceiverError(415, INVALID_ARGUMENT, message)


def media_type(content_type: str | None, allowed: tuple[str, ...]) -> str:
    """The request's media type (parameters such as ``charset`` dropped) if in ``allowed``, else 415."""
    mt = (content_type or "").split(";", 1)[0].strip().lower()
    if mt not in allowed:
        raise unsupported(f"Content-Type {content_type or '(none)'!r} is not supported here; send one of "
                          f"{', '.join(allowed)}")  # fmt: skip
    return mt


def content_encoding(value: str | None) -> bool:
    """True for gzip, False for identity (or none); 415 for anything else (deflate, br, zstd, stacked codings)."""
    enc = (value or "identity").strip().lower()
    if enc in ("", "identity"):
        return False
    if enc in ("gzip", "x-gzip"):
        return True
    raise unsupported(f"Content-Encoding {value!r} is not supported; send gzip or an uncompressed body")


async def read_capped(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refusing (413) a declared or actual size over ``limit`` without reading past it."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ReceiverError(400, INVALID_ARGUMENT, f"Content-Length {content_length!r} is not a number") from None
        if declared > limit:
            raise too_large(f"body of {declared} bytes is over api.receiver.max_body_bytes ({limit})")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:  # a chunked body has no Content-Length: count while reading
            raise too_large(f"body is over api.receiver.max_body_bytes ({limit} bytes)")
    return bytes(buf)


def gunzip_capped(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body (several members too), refusing (413) more than ``limit`` bytes of output.

    Decompression stops at ``limit + 1`` bytes, so a gzip bomb costs at most that much memory.
    """
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        want = limit + 1 - len(out)
        try:
            out += d.decompress(rest, want)
        except zlib.error as e:
            raise ReceiverError(400, INVALID_ARGUMENT, f"the body is not valid gzip: {e}") from None
        if len(out) > limit:
            raise too_large(f"body is over api.receiver.max_body_bytes ({limit} bytes) once decompressed")
        if not d.eof:  # the output cap was not reached, so the input ran out early
            raise ReceiverError(400, INVALID_ARGUMENT, "the gzip body is truncated")
        rest = d.unused_data
    return bytes(out)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), equal to ``kafka.partitioner.murmur2``.

    Why not kafka-python's: it spends ~20 Python operations per 4 bytes, about 12 us for a 54-byte
    ``otel-<trace>-<span>`` key; here the words are unpacked at once and each takes a few int operations
    (a product mod 2**32 needs the mask only once, after the xor).
    """
    n = len(data)
    h = 0x9747B28C ^ n
    if n >= 4:
        for k in struct.unpack_from(f"<{n >> 2}I", data):
            k = (k * 0x5BD1E995) & 0xFFFFFFFF
            h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = n & 3
    if tail:
        i = n - tail
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def murmur2_many(keys: list[bytes]) -> list[int]:
    """:func:`murmur2` of each key, keys of one length hashed together: a request's ``otel-<trace>-<span>``
    ids all have 54 bytes, so numpy runs each step once over every key (uint32 arithmetic wraps mod 2**32
    as the hash needs) instead of ~13 Python steps per key; short groups take :func:`murmur2`."""
    out = [0] * len(keys)
    by_len: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        by_len.setdefault(len(k), []).append(i)
    m = np.uint32(0x5BD1E995)
    for n, idx in by_len.items():
        if len(idx) < 8 or n < 4:
            for i in idx:
                out[i] = murmur2(keys[i])
            continue
        words = n >> 2
        raw = np.frombuffer(b"".join([keys[i] for i in idx]), dtype=np.uint8).reshape(len(idx), n)
        w = np.ascontiguousarray(raw[:, : words * 4]).view("<u4").astype(np.uint32)  # a copy: mixed in place
        w *= m  # every word's mix at once; only the running hash is sequential
        w ^= w >> np.uint32(24)
        w *= m
        h = np.full(len(idx), 0x9747B28C ^ n, dtype=np.uint32)
        for j in range(words):
            h *= m
            h ^= w[:, j]
        tail = n & 3
        if tail:
            t = raw[:, words * 4 :].astype(np.uint32)
            if tail == 3:
                h ^= t[:, 2] << np.uint32(16)
            if tail >= 2:
                h ^= t[:, 1] << np.uint32(8)
            h = (h ^ t[:, 0]) * m
        h ^= h >> np.uint32(13)
        h = h * m
        h ^= h >> np.uint32(15)
        for i, v in zip(idx, h.tolist(), strict=True):
            out[i] = v
    return out


class Murmur2Partitioner(DefaultPartitioner):
    """kafka-python's default partitioner with :func:`murmur2`: a key lands on the partition Kafka's Java
    client (and the default partitioner) picks, which keeps each ``request_id``'s records in order.

    Records without a key keep the default's random choice.
    """

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:  # fmt: skip
        if serialized_key is None:
            return cast("int", super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        parts = cluster.partitions_for_topic(topic)
        if parts is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        all_partitions = sorted(parts)
        return cast("int", all_partitions[(murmur2(serialized_key) & 0x7FFFFFFF) % len(all_partitions)])


def v1_problem(rec: dict[str, Any]) -> tuple[str, str] | None:
    """Why ingestion's Decoder would dead-letter this v1 record for its shape, as ``(reason, detail)``; else None.

    The same record types and reasons as the Decoder (``msgspec.convert`` into LogRecordV1 or FeedbackEventV1,
    record type, a feedback event's one required value), so a sender hears of a bad record in the answer
    instead of finding it in the DLQ later. Not checked here: what needs the ingest policy or content
    (timestamp range, text lengths, NUL characters, JSON depth); the Decoder still checks everything.
    """
    kind = rec.get("type")
    if kind not in (None, "interaction", "feedback"):
        return UNKNOWN_TYPE, f"unknown record type {short_repr(kind)} (expected 'interaction' or 'feedback')"
    try:
        if kind == "feedback":
            ev = msgspec.convert(rec, FeedbackEventV1)
            if ev.score is None and ev.comment is None and ev.correction is None:
                return MISSING_FIELD, "feedback event needs at least one of score, comment, correction"
        else:
            msgspec.convert(rec, LogRecordV1)
    except msgspec.ValidationError as e:
        msg = str(e)
        reason = MISSING_FIELD if msg.startswith("Object missing required field") else \
            BAD_TIMESTAMP if msg.endswith("- at `$.timestamp`") else WRONG_TYPE  # fmt: skip
        return reason, msg
    return None


def short_repr(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BrokerUnavailable(Exception):
    """The records could not be produced and acknowledged in time: answer 503 with ``Retry-After``."""


@dataclass
class KafkaSink:
    """One kafka-python producer (acks=all, idempotent) shared by every request, created on first use.

    A broker that is down when the API starts costs nothing until a request comes; a request that finds it
    down (at connect, metadata or acknowledgement) gets :class:`BrokerUnavailable` within ``timeout_s``.
    """

    bootstrap: list[str]
    topic: str
    timeout_s: float
    options: dict[str, Any] = field(default_factory=dict)
    create_topic: bool = False
    partitions: int = 3
    replication_factor: int = 1
    _producer: Any = None
    #: the configured partitioner is ours, so produce() may compute keyed partitions itself
    _keyed_partitions: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def producer_options(self) -> dict[str, Any]:
        """kafka-python options: every wait bounded by ``timeout_s``, the fast murmur2 partitioner;
        ``kafka.producer`` may override them."""
        ms = max(1, int(self.timeout_s * 1000))
        opts: dict[str, Any] = {"linger_ms": 5, "max_block_ms": ms, "bootstrap_timeout_ms": ms,
                                "request_timeout_ms": ms, "delivery_timeout_ms": ms + 5,
                                "reconnect_backoff_max_ms": 1000, "partitioner": Murmur2Partitioner()}  # fmt: skip
        opts.update(self.options)
        return opts

    def _get(self, deadline: float) -> Any:
        prod = self._producer
        if prod is not None:
            return prod
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BrokerUnavailable("still connecting to the broker (another request is)")
        try:
            if self._producer is None:
                from driftloop.broker import ensure_topics, make_producer

                if self.create_topic:
                    ensure_topics(self.bootstrap, [self.topic], partitions=self.partitions,
                                  replication_factor=self.replication_factor,
                                  timeout_s=max(0.1, min(3.0, deadline - time.monotonic())))  # fmt: skip
                opts = self.producer_options()
                self._keyed_partitions = isinstance(opts["partitioner"], Murmur2Partitioner)
                self._producer = make_producer(self.bootstrap, **opts)
            return self._producer
        finally:
            self._lock.release()

    def produce(self, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Produce ``(key, value)`` messages and wait until the broker acknowledged all of them.

        Raises :class:`BrokerUnavailable` on any failure or after ``timeout_s``; some messages may then have
        been written all the same, which is harmless: the client retries and ingestion deduplicates.
        """
        deadline = time.monotonic() + self.timeout_s
        try:
            prod = self._get(deadline)
            send, topic = prod.send, self.topic
            if self._keyed_partitions:
                # the partition the Murmur2Partitioner would pick, for all keys at once (murmur2_many) and
                # passed explicitly: send() then skips the partitioner's per-record calls
                parts = sorted(prod.partitions_for(topic))
                n = len(parts)
                hashes = iter(murmur2_many([k for k, _ in messages if k is not None]))
                futures = [send(topic, key=k, value=v) if k is None else
                           send(topic, key=k, value=v, partition=parts[(next(hashes) & 0x7FFFFFFF) % n])
                           for k, v in messages]  # fmt: skip
            else:
                futures = [send(topic, key=k, value=v) for k, v in messages]
            # send the batches now rather than after linger_ms (the answer waits for them); flush() also
            # waits for every batch incomplete now, ours included, so each get() below finds its record done
            # (acked or failed) and only reads the outcome
            prod.flush(timeout=max(0.0, deadline - time.monotonic()))
            for f in futures:
                f.get(timeout=max(0.0, deadline - time.monotonic()))
        except BrokerUnavailable:
            raise
        except Exception as e:  # KafkaTimeoutError, NoBrokersAvailable, a produce error, ...
            raise BrokerUnavailable(f"{type(e).__name__}: {e}".splitlines()[0][:300]) from e

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            prod, self._producer = self._producer, None
        if prod is not None:
            try:
                prod.close(timeout=timeout_s)
            except Exception as e:  # a producer of a dead broker may complain while closing
                log.debug("closing the receiver's producer failed: %s", e)


@dataclass(frozen=True)
class Outcome:
    """What became of one request's items: ``produced`` records acked, ``skipped`` non-LLM items, ``rejected``."""

    produced: int
    skipped: int
    rejected: list[tuple[str, str]]

    def error_summary(self) -> str:
        """The rejects as one line: counts by reason, then the first few details."""
        by: dict[str, int] = {}
        for reason, _ in self.rejected:
            by[reason] = by.get(reason, 0) + 1
        counts = ", ".join(f"{n} {r}" for r, n in sorted(by.items()))
        details = "; ".join(f"{r}: {d}" for r, d in self.rejected[:3])
        return f"{len(self.rejected)} rejected ({counts}): {details}"


def default_topic(settings: Settings) -> str | None:
    """``api.receiver.topic``, else the first input topic that carries v1 records."""
    k = settings.kafka
    return settings.api.receiver.topic or next((t for t in k.topics if k.format_of(t) == "v1"), None)


class Receiver:
    """Map a body of format ``fmt`` to v1 records and produce them (blocking: call it from a worker thread)."""

    def __init__(self, settings: Settings, sink: KafkaSink | None = None) -> None:
        self.settings = settings
        self.limits = settings.api.receiver
        self.topic = default_topic(settings)
        k = settings.kafka
        self.sink = sink or (KafkaSink(list(k.bootstrap_servers), self.topic, self.limits.produce_timeout_s,
                                       dict(k.producer), k.create_topics, k.topic_partitions, k.replication_factor)
                             if self.topic else None)  # fmt: skip
        self._mapping = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Runs :meth:`accept` for the routes (as many threads as anyio's default, started as needed).

        Created on first use and again after :meth:`close`: an app may be started and stopped more than once
        (each stop closes the receiver), and its next start must not find a shut-down pool.
        """
        ex = self._executor
        if ex is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=40, thread_name_prefix="driftloop-receiver")
                ex = self._executor
        return ex

    def accept(self, fmt: str, body: bytes, gzipped: bool, content_type: str) -> Outcome:
        """Decompress, convert, check the limits and produce; raises :class:`ReceiverError` for the answer."""
        from driftloop.api.metrics import RECEIVER_RECORDS

        sink = self.sink
        if sink is None:
            raise ReceiverError(500, INTERNAL, "the receiver has no topic: set api.receiver.topic, or keep a v1 "
                                "topic in kafka.topics")  # fmt: skip
        # One request at a time maps its body: that part holds the GIL all along, so concurrent requests
        # gain nothing by running it together but GIL hand-offs (the producer's I/O thread then waits for
        # the GIL behind several mapping threads). They wait on this lock instead. Producing is outside
        # it: send() may block (connecting, metadata, a full buffer) until the deadline.
        with self._mapping:
            skipped, messages, rejected = self._map(fmt, body, gzipped, content_type)
        RECEIVER_RECORDS.labels(fmt, "accepted").inc(len(messages))
        RECEIVER_RECORDS.labels(fmt, "skipped").inc(skipped)
        RECEIVER_RECORDS.labels(fmt, "rejected").inc(len(rejected))
        if messages:
            try:
                sink.produce(messages)
            except BrokerUnavailable as e:
                log.warning("receiver: %d %s records not acknowledged by the broker, answered 503: %s",
                            len(messages), fmt, e)  # fmt: skip
                raise ReceiverError(503, UNAVAILABLE, f"the broker did not acknowledge the records ({e}); retry "
                                    "later (what did get through is stored once)", retry_after_s=self.limits.retry_after_s) from None  # fmt: skip
            RECEIVER_RECORDS.labels(fmt, "produced").inc(len(messages))
        return Outcome(len(messages), skipped, rejected)

    def _map(self, fmt: str, body: bytes, gzipped: bool, content_type: str
             ) -> tuple[int, list[tuple[bytes | None, bytes]], list[tuple[str, str]]]:  # fmt: skip
        """The body as ``(skipped, (key, value) messages, rejected)``, within the limits, or a ReceiverError."""
        from driftloop.ingest.decode import InvalidMessage
        from driftloop.ingest.formats import convert

        if gzipped:
            body = gunzip_capped(body, self.limits.max_body_bytes)
        try:
            conv = convert(cast("TopicFormat", fmt), body, content_type=content_type)
        except InvalidMessage as e:
            raise ReceiverError(400, INVALID_ARGUMENT, f"{e.reason}: {e.detail}") from None
        rejected = list(conv.rejected)
        messages: list[tuple[bytes | None, bytes]] = []
        cap = self.settings.ingest.max_message_bytes
        check = fmt == "v1"  # the mappers' records are valid by construction (tests/test_formats.py)
        for rec in conv.records:
            if check and (problem := v1_problem(rec)) is not None:
                rejected.append((problem[0], f"record {short_repr(rec.get('request_id'))}: {problem[1]}"))
                continue
            value = _encode(rec)
            if len(value) > cap:  # ingestion would dead-letter it: say so now, to the sender
                rejected.append(("oversize", f"record {rec.get('request_id')!r} is {len(value)} bytes once mapped, "
                                 f"over ingest.max_message_bytes ({cap})"))  # fmt: skip
                continue
            rid = rec.get("request_id")
            messages.append((str(rid).encode() if rid is not None else None, value))
        if len(messages) > self.limits.max_records:
            raise too_large(f"{len(messages)} records in one request; api.receiver.max_records is "
                            f"{self.limits.max_records}: send smaller batches")  # fmt: skip
        return conv.skipped, messages, rejected

    def close(self) -> None:
        """Close the producer (flushing it) and let the worker threads end; both come back on the next request."""
        with self._executor_lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False)
        if self.sink is not None:
            self.sink.close()
