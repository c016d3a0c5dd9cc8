"""Decode and validate one Kafka message into a row, or raise InvalidMessage with a reason.

The v1 log record types are defined once, in :mod:`driftloop.records` (the client builds the same
types); this module adds what only ingestion needs: limits, reasons, rows. The schema is in the
README. Decoding never raises anything but InvalidMessage: arbitrary bytes either become a row or a
reject with a machine-readable reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from driftloop.ingest.redact import Redactor
from driftloop.ingest.workload import WorkloadConfig, workload_of
from driftloop.records import (
    FEEDBACK_FIELDS,
    INTERACTION_FIELDS,
    ChatMessage,
    FeedbackEventV1,
    InlineFeedback,
    LogRecordV1,
)

# Reasons (stable strings: they go into DLQ headers, rejected_messages.reason and metrics labels).
OVERSIZE = "oversize"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NUL_BYTE = "nul_byte"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_TIMESTAMP = "bad_timestamp"
FIELD_TOO_LONG = "field_too_long"
UNKNOWN_TYPE = "unknown_type"
INTERNAL_ERROR = "internal_error"


class InvalidMessage(Exception):
    """A message that can never be stored; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _StrictRecordV1(LogRecordV1, forbid_unknown_fields=True):
    """Fast path: records with only known fields decode straight into a struct."""


Row = dict[str, Any]
#: ``(kind, row, inline feedback rows)``; kind is ``interaction`` or ``feedback``.
Decoded = tuple[str, Row, list[Row]]


@dataclass(slots=True)
class Source:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class DecodePolicy:
    """Limits applied while decoding (from IngestSettings)."""

    max_message_bytes: int = 1024 * 1024
    max_field_chars: int = 200_000
    min_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_future_skew: timedelta = timedelta(days=1)
    default_model_id: str = "unknown"
    #: how a record's workload is named (``ingest.workload``); None: every record's workload is NULL
    workload: WorkloadConfig | None = None


_NUL_OR_SURROGATE = re.compile(rb"\\u0000")
#: Deeper JSON is rejected: encoders and PostgreSQL recurse per level, and ~1000 levels would
#: overflow the Python stack later, in the writer (a poison pill instead of a reject).
MAX_JSON_DEPTH = 100
_decoder = msgspec.json.Decoder()
_fast_decoder = msgspec.json.Decoder(_StrictRecordV1)
_json_encoder = msgspec.json.Encoder()
_fromisoformat = datetime.fromisoformat


_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
                               rb"|(?<!\\)((?:\\\\)*)\\u([dD][c-fC-F][0-9a-fA-F]{2})")


def _lone_surrogate(raw: bytes) -> tuple[str, int] | None:
    """The first ``\\uD8xx`` escape without its low half (or a low half alone), and its byte offset."""
    for mt in _SURROGATE_ESCAPE.finditer(raw):
        if mt.group(2) is not None and mt.group(3) is None:
            return "\\u" + mt.group(2).decode(), mt.start(2) - 2
        if mt.group(5) is not None:
            return "\\u" + mt.group(5).decode(), mt.start(5) - 2
    return None


def _has_nul(obj: Any) -> bool:
    # iterative: a recursive walk could hit the recursion limit on deeply nested input
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            if "\x00" in o:
                return True
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


def _is_flat(d: dict[str, Any]) -> bool:
    """True if no value of ``d`` is an object or array (its depth is then 1)."""
    for v in d.values():
        t = type(v)
        if t is dict or t is list:
            return False
    return True


def _depth(obj: Any) -> int:
    """Nesting depth of decoded JSON (iterative)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def parse_timestamp(value: str | int | float | None, source: Source, policy: DecodePolicy, now: datetime) -> datetime:
    """RFC 3339 string or epoch milliseconds; None means the broker timestamp."""
    if value is None:
        if source.timestamp_ms is None or source.timestamp_ms < 0:
            return now
        value = source.timestamp_ms
    if isinstance(value, bool):
        raise InvalidMessage(BAD_TIMESTAMP, "timestamp must be an RFC 3339 string or epoch milliseconds, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 1e15:
            raise InvalidMessage(BAD_TIMESTAMP, f"timestamp {value!r} is not a plausible epoch-milliseconds value")
        try:
            ts = datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise InvalidMessage(
                BAD_TIMESTAMP, f"timestamp {value!r} is not a plausible epoch-milliseconds value"
            ) from None
    else:
        if len(value) > 64:
            raise InvalidMessage(BAD_TIMESTAMP, "timestamp string longer than 64 characters")
        try:
            # RFC 3339 (5.6) allows a lowercase "t" and "z"; fromisoformat does not
            ts = datetime.fromisoformat(value.upper() if "t" in value or "z" in value else value)
        except ValueError:
            raise InvalidMessage(BAD_TIMESTAMP, f"timestamp {value[:40]!r} is not RFC 3339") from None
        if ts.tzinfo is None:
            raise InvalidMessage(BAD_TIMESTAMP, f"timestamp {value!r} has no UTC offset (use Z or +hh:mm)")
        try:
            ts = ts.astimezone(UTC)
        except OverflowError:
            raise InvalidMessage(BAD_TIMESTAMP, f"timestamp {value!r} is outside the representable range") from None
    if ts < policy.min_timestamp or ts > now + policy.max_future_skew:
        raise InvalidMessage(
            BAD_TIMESTAMP,
            f"timestamp {ts.isoformat()} is outside the accepted range "
            f"[{policy.min_timestamp.date()}, now + {policy.max_future_skew}]",
        )
    return ts


def _check_len(name: str, value: str | None, policy: DecodePolicy) -> None:
    if value is not None and len(value) > policy.max_field_chars:
        raise InvalidMessage(
            FIELD_TOO_LONG, f"field {name!r} has {len(value)} characters (max {policy.max_field_chars})"
        )


def _render_messages(msgs: list[ChatMessage]) -> str:
    return "\n".join(f"{m.role}: {m.content or ''}" for m in msgs)


def _validation_reason(err: msgspec.ValidationError) -> str:
    msg = str(err)
    if msg.startswith("Object missing required field"):
        return MISSING_FIELD
    # a timestamp of the wrong JSON type (true, {}, []) is a bad timestamp like any other
    return BAD_TIMESTAMP if msg.endswith("- at `$.timestamp`") else WRONG_TYPE


def feedback_key(
    request_id: str,
    score: float | None,
    comment: str | None,
    correction: str | None,
    ts: datetime | None,
    feedback_id: str | None,
) -> str:
    """Idempotency key: the producer's id, else a hash of the content (a retried send is stored once)."""
    if feedback_id:
        return "id:" + hashlib.sha256(feedback_id.encode()).hexdigest()[:60]
    h = hashlib.sha256()
    for part in (request_id, repr(score), comment or "", correction or "", ts.isoformat() if ts else ""):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass(slots=True)
class Decoder:
    """Step 1 of the chain: bytes -> (interaction row, [feedback rows]) or InvalidMessage."""

    policy: DecodePolicy
    redactor: Redactor

    def decode(self, raw: bytes | None, source: Source, now: datetime | None = None) -> Decoded:
        """Return ``(kind, row, feedback_rows)``; kind is ``interaction`` or ``feedback``.

        For a feedback event, ``row`` is the feedback row and the list is empty.
        """
        try:
            return self._decode(raw, source, now or datetime.now(UTC))
        except InvalidMessage:
            raise
        except Exception as e:  # never let a bug in validation stop the stream
            raise InvalidMessage(INTERNAL_ERROR, f"{type(e).__name__}: {e}") from e

    def _decode(self, raw: bytes | None, source: Source, now: datetime) -> Decoded:
        if raw is None:
            raise InvalidMessage(INVALID_JSON, "message has no value (tombstone)")
        if len(raw) > self.policy.max_message_bytes:
            raise InvalidMessage(OVERSIZE, f"message is {len(raw)} bytes (max {self.policy.max_message_bytes})")
        if not _NUL_OR_SURROGATE.search(raw):
            try:
                fast = _fast_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
                fast = None  # the general path below explains what is wrong, or keeps unknown fields
            if fast is not None and fast.type in (None, "interaction"):
                meta = fast.metadata  # the only free-form part; flat metadata (the usual case) is shallow
                if not meta or _is_flat(meta) or _depth(meta) < MAX_JSON_DEPTH:
                    return "interaction", *self._build_interaction(fast, None, source, now)
        nested = raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH  # cheap upper bound on depth
        try:
            obj = _decoder.decode(raw)
        except UnicodeDecodeError as e:
            raise InvalidMessage(INVALID_UTF8, f"not valid UTF-8: {e.reason} at byte {e.start}") from None
        except msgspec.DecodeError as e:
            # msgspec < 0.23 raised UnicodeDecodeError for bad UTF-8, 0.23 a DecodeError: ask Python
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as u:
                raise InvalidMessage(INVALID_UTF8, f"not valid UTF-8: {u.reason} at byte {u.start}") from None
            lone = _lone_surrogate(raw)
            if lone is not None:  # msgspec says "Input data was truncated" for a lone high surrogate
                raise InvalidMessage(INVALID_JSON, f"not valid JSON: lone UTF-16 surrogate escape {lone[0]} at byte "
                                                   f"{lone[1]} (a JSON string must hold valid Unicode)") from None
            raise InvalidMessage(INVALID_JSON, f"not valid JSON: {e}") from None
        except msgspec.ValidationError as e:  # e.g. number out of range
            raise InvalidMessage(INVALID_JSON, f"not representable JSON: {e}") from None
        except RecursionError:
            raise InvalidMessage(INVALID_JSON, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        if nested and _depth(obj) > MAX_JSON_DEPTH:
            raise InvalidMessage(INVALID_JSON, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(obj, dict):
            raise InvalidMessage(NOT_AN_OBJECT, f"top-level JSON value must be an object, got {type(obj).__name__}")
        if _NUL_OR_SURROGATE.search(raw) and _has_nul(obj):
            raise InvalidMessage(NUL_BYTE, "a string contains a NUL character (\\u0000), which PostgreSQL cannot store")
        kind = obj.get("type")
        if kind == "feedback":
            return "feedback", self._feedback_event(obj, source, now), []
        if kind not in (None, "interaction"):
            raise InvalidMessage(UNKNOWN_TYPE, f"unknown record type {kind!r} (expected 'interaction' or 'feedback')")
        return "interaction", *self._interaction(obj, source, now)

    def _feedback_event(self, obj: dict[str, Any], source: Source, now: datetime) -> dict[str, Any]:
        extras = obj.keys() - FEEDBACK_FIELDS
        meta = {k: obj.pop(k) for k in extras}
        try:
            ev = msgspec.convert(obj, FeedbackEventV1)
        except msgspec.ValidationError as e:
            raise InvalidMessage(_validation_reason(e), f"feedback event: {e}") from None
        if ev.score is None and ev.comment is None and ev.correction is None:
            raise InvalidMessage(MISSING_FIELD, "feedback event needs at least one of score, comment, correction")
        _check_len("comment", ev.comment, self.policy)
        _check_len("correction", ev.correction, self.policy)
        ts = parse_timestamp(ev.timestamp, source, self.policy, now)
        if ev.metadata:
            meta = {**ev.metadata, **meta}
        r = self.redactor
        return {
            # only a timestamp the producer sent is content; the broker's (or our clock) differs per send
            "event_key": feedback_key(
                ev.request_id,
                ev.score,
                ev.comment,
                ev.correction,
                ts if ev.timestamp is not None else None,
                ev.feedback_id,
            ),
            "request_id": ev.request_id,
            "ts": ts,
            "score": ev.score,
            "comment": r.text(ev.comment),
            "correction": r.text(ev.correction),
            "source": "event",
            "metadata": meta or None,
            "ingested_at": now,
        }

    def _interaction(self, obj: dict[str, Any], source: Source, now: datetime) -> tuple[Row, list[Row]]:
        extras = obj.keys() - INTERACTION_FIELDS
        unknown = {k: obj.pop(k) for k in extras}
        try:
            rec = msgspec.convert(obj, LogRecordV1)
        except msgspec.ValidationError as e:
            raise InvalidMessage(_validation_reason(e), str(e)) from None
        return self._build_interaction(rec, unknown, source, now)

    def _build_interaction(
        self, rec: LogRecordV1, unknown: dict[str, Any] | None, source: Source, now: datetime
    ) -> tuple[Row, list[Row]]:
        p = self.policy
        value = rec.timestamp
        ts = None
        if type(value) is str and len(value) <= 64:  # fast path: an RFC 3339 UTC string in range
            try:
                ts = _fromisoformat(value)
            except ValueError:
                ts = None
            if ts is not None and (ts.tzinfo is not UTC or ts < p.min_timestamp or ts > now + p.max_future_skew):
                ts = None  # the general path converts the offset or explains the problem
        if ts is None:
            ts = parse_timestamp(value, source, p, now)
        messages = rec.messages
        prompt = rec.prompt
        if isinstance(prompt, list):
            messages, prompt = prompt, None
        if prompt is None and messages is None:
            raise InvalidMessage(MISSING_FIELD, "record needs 'prompt' (string or messages list) or 'messages'")
        response, reference, user_id = rec.response, rec.reference, rec.user_id
        mfc = p.max_field_chars
        if (
            (prompt is not None and len(prompt) > mfc)
            or (response is not None and len(response) > mfc)
            or (reference is not None and len(reference) > mfc)
            or (user_id is not None and len(user_id) > mfc)
        ):
            for name, val in (("prompt", prompt), ("response", response), ("reference", reference),
                              ("user_id", user_id)):  # fmt: skip
                _check_len(name, val, p)
        r = self.redactor
        msg_json: list[dict[str, Any]] | None = None
        if messages is not None:
            msg_json = [{"role": m.role, "content": r.text(m.content)} for m in messages]
            for m in messages:
                _check_len("messages.content", m.content, p)
            if prompt is None:
                prompt = _render_messages(messages)
        meta = rec.metadata
        if unknown:
            meta = {**(meta or {}), **unknown}
        row = {
            "request_id": rec.request_id,
            "ts": ts,
            "model_id": rec.model_id or p.default_model_id,
            "model_version": rec.model_version,
            "prompt": r.text(prompt),
            "messages": msg_json,
            "response": r.text(response),
            "latency_ms": rec.latency_ms,
            "tokens_in": rec.tokens_in,
            "tokens_out": rec.tokens_out,
            "finish_reason": rec.finish_reason,
            "user_hash": r.user_hash(user_id),
            "session_id": rec.session_id,
            "reference": r.text(reference),
            "metadata": meta,
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
            "ingested_at": now,
            "workload": workload_of(meta, messages, p.workload) if p.workload is not None else None,
        }
        fb_rows: list[dict[str, Any]] = []
        fb = rec.feedback
        if fb is not None:
            if not isinstance(fb, InlineFeedback):
                fb = InlineFeedback(score=float(fb))
            if fb.score is not None or fb.comment is not None or fb.correction is not None:
                _check_len("feedback.comment", fb.comment, p)
                _check_len("feedback.correction", fb.correction, p)
                fb_rows.append(
                    {
                        "event_key": feedback_key(
                            rec.request_id,
                            fb.score,
                            fb.comment,
                            fb.correction,
                            None,
                            fb.feedback_id or f"inline:{rec.request_id}",
                        ),
                        "request_id": rec.request_id,
                        "ts": ts,
                        "score": fb.score,
                        "comment": r.text(fb.comment),
                        "correction": r.text(fb.correction),
                        "source": "inline",
                        "metadata": None,
                        "ingested_at": now,
                    }
                )
        return row, fb_rows


def encode_json(obj: Any) -> str:
    """Compact JSON text (for JSON columns written through COPY)."""
    return _json_encoder.encode(obj).decode()
