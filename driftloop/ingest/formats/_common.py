"""What every mapper shares: the result type, body splitting, bounded metadata and checked field setters.

One policy for bad values in every shape (docs/ingest-formats.md): a value of the wrong type or out of
range for its v1 field is left out of the record and kept, shortened, in ``metadata["invalid.<field>"]``;
the item is still converted. An item is only rejected when it cannot become a record at all (not an
object, no usable id, a required part missing), so one bad span never costs the rest of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from driftloop.ingest.decode import INVALID_JSON, InvalidMessage

# Reasons (stable strings, like decode's: they reach DLQ headers and metrics labels).
INVALID_PROTOBUF = "invalid_protobuf"
INVALID_OTLP = "invalid_otlp"
INVALID_OPENAI = "invalid_openai"
INVALID_LITELLM = "invalid_litellm"
INVALID_V1 = "invalid_v1"
EMPTY_BODY = "empty_body"
# item-level reasons (Converted.rejected)
INVALID_ITEM = "invalid_item"
INVALID_SPAN_CONTEXT = "invalid_span_context"
MISSING_SPAN_CONTEXT = "missing_span_context"
INVALID_EVALUATION = "invalid_evaluation"
INVALID_JSON_LINE = "invalid_json_line"
INVALID_ID = "invalid_id"

#: Caps on what goes into ``metadata``: it is stored as JSON next to every row and is not redacted,
#: so it keeps small, plain values only (content never goes there).
MAX_META_KEYS = 64
MAX_META_STR = 1024
MAX_META_LIST = 32
#: v1 limits the mappers check up front (records.py), so a too-long value is an invalid field, not a
#: whole-record reject in the Decoder.
MAX_ID = 256
MAX_SHORT = 256
MAX_FINISH = 64
MAX_ROLE = 64
INT32_MAX = 2**31 - 1

_json = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


@dataclass
class Converted:
    """What one body became: v1 wire dicts, items that are not LLM calls, and malformed items."""

    records: list[dict[str, Any]]
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


class ItemError(Exception):
    """One item of a batch cannot become a record; it goes to ``Converted.rejected``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def json_items(body: bytes, reason: str, what: str) -> tuple[list[Any], list[tuple[str, str]]]:
    """The items of a JSON object, a JSON array or NDJSON; bad NDJSON lines are rejected items.

    The body as a whole is invalid (``InvalidMessage``) when it is empty, when no line parses, or when
    the top-level value is neither an object nor an array.
    """
    if not body.strip():
        raise InvalidMessage(EMPTY_BODY, f"empty body (expected {what})")
    try:
        obj = _json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as whole:
        lines = [(n, ln) for n, ln in enumerate(body.splitlines(), 1) if ln.strip()]
        if len(lines) < 2:
            raise InvalidMessage(INVALID_JSON, f"not JSON or NDJSON ({what}): {whole}") from None
        items: list[Any] = []
        bad: list[tuple[str, str]] = []
        for n, ln in lines:
            try:
                items.append(_json.decode(ln))
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                bad.append((INVALID_JSON_LINE, f"line {n}: {e}"))
        if not items:
            raise InvalidMessage(INVALID_JSON, f"no line of the NDJSON body is JSON ({what})") from None
        return items, bad
    if isinstance(obj, dict):
        return [obj], []
    if isinstance(obj, list):
        return obj, []
    raise InvalidMessage(reason, f"top-level JSON value must be an object or an array of {what}, "
                                 f"got {type(obj).__name__}")


def short(value: Any, limit: int = MAX_META_STR) -> str:
    """``value`` as text of at most ``limit`` characters (JSON for non-strings)."""
    if not isinstance(value, str):
        try:
            value = _enc.encode(value).decode()
        except (TypeError, ValueError, OverflowError):
            value = repr(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def simple(value: Any) -> Any:
    """A JSON-simple, bounded copy of ``value`` for metadata (nested values become capped JSON text)."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return short(value)
    if isinstance(value, list | tuple) and all(v is None or isinstance(v, str | int | float | bool) for v in value[:MAX_META_LIST]):
        return [simple(v) for v in value[:MAX_META_LIST]]
    return short(value)


def text_of(value: Any) -> str | None:
    """Message content as text: a string, the text parts of a parts list, else compact JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for p in value:
            if isinstance(p, str):
                texts.append(p)
            elif isinstance(p, dict):
                kind = p.get("type", "text")  # anything but a string (a list, a map) is no text part
                t = p.get("text", p.get("content")) if isinstance(kind, str) and kind in _TEXT_PARTS else None
                if isinstance(t, str):
                    texts.append(t)
        return "\n".join(texts) if texts else None
    return short(value, 10**9)


#: part types whose text is content (OpenAI chat/Responses, GenAI semconv, LiteLLM, OpenInference)
_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "message_content"})


def rfc3339_ns(ns: int) -> str | None:
    """Epoch nanoseconds as the RFC 3339 text the Decoder's fast path takes; None for 0 (unset).

    Equal to ``rfc3339_s(ns / 1e9)``, which rounds to microseconds half-even as ``datetime.fromtimestamp``
    does, but the date and time of day are formatted once per second: a batch's spans share seconds.
    """
    if ns <= 0:
        return None
    frac, whole = math.modf(ns / 1e9)
    us = round(frac * 1e6)
    secs = int(whole)
    if us >= 1_000_000:
        secs, us = secs + 1, us - 1_000_000
    global _last_second
    last_secs, prefix = _last_second
    if secs != last_secs:
        try:
            prefix = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        except (ValueError, OverflowError, OSError):
            return None
        _last_second = (secs, prefix)
    return f"{prefix}.{us // 1000:03d}Z"


_last_second: tuple[int, str] = (-1, "")


def rfc3339_s(seconds: float) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds; None when not a representable time."""
    try:
        dt = datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Rec:
    """A v1 record being built: checked setters, bounded metadata, then ``wire()``."""

    __slots__ = ("_extra", "fields", "meta")

    def __init__(self, source_format: str) -> None:
        self.fields: dict[str, Any] = {}
        self.meta: dict[str, Any] = {"source_format": source_format}
        self._extra = 0

    def invalid(self, name: str, value: Any) -> None:
        """Keep a bad value for ``name`` in metadata (shortened) instead of the record."""
        self.meta[f"invalid.{name}"] = short(value, 200)

    def str_field(self, name: str, value: Any, limit: int | None = None) -> None:
        if value is None or name in self.fields:
            return
        if not isinstance(value, str) or (limit is not None and len(value) > limit) or not value:
            if value != "":
                self.invalid(name, value)
            return
        self.fields[name] = value

    def int_field(self, name: str, value: Any) -> None:
        if value is None or name in self.fields:
            return
        v = value
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT32_MAX:
            self.invalid(name, value)
            return
        self.fields[name] = v

    def latency(self, ms: Any) -> None:
        if ms is None or "latency_ms" in self.fields:
            return
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms) or not 0 <= ms <= 1e12:
            self.invalid("latency_ms", ms)
            return
        self.fields["latency_ms"] = float(ms)

    def set(self, name: str, value: Any) -> None:
        """Set an already-checked value unless the field is set."""
        if value is not None and name not in self.fields:
            self.fields[name] = value

    def add_meta(self, key: str, value: Any) -> None:
        """Add a bounded metadata entry; beyond MAX_META_KEYS extra keys only a count is kept."""
        if key in self.meta or value is None:
            return
        if self._extra >= MAX_META_KEYS:
            self.meta["metadata_truncated"] = self.meta.get("metadata_truncated", 0) + 1
            return
        self._extra += 1
        # the common cases (a short string key; a short string or int value) skip short() and simple()
        if type(key) is not str or len(key) > 200:
            key = short(key, 200)
        kind = type(value)
        if kind is str:
            if len(value) > MAX_META_STR:
                value = short(value)
        elif kind is not int or not -(2**63) < value < 2**63:
            value = simple(value)
        self.meta[key] = value

    def add_meta_items(self, items: Iterable[tuple[str, Any]], count: int) -> None:
        """``add_meta`` for each of ``count`` items, in one loop: a span's attributes are a dozen calls otherwise."""
        meta = self.meta
        extra = self._extra
        if extra + count <= MAX_META_KEYS:  # no cap to reach: the common case, a shorter loop
            before = len(meta)  # each entry added is a new key, but for a shortened key that collides
            for key, value in items:
                if value is None or key in meta:
                    continue
                if type(key) is not str or len(key) > 200:
                    key = short(key, 200)
                    if key in meta:
                        before -= 1
                kind = type(value)
                if kind is str:
                    if len(value) > MAX_META_STR:
                        value = short(value)
                elif kind is not int or not -(2**63) < value < 2**63:
                    value = simple(value)
                meta[key] = value
            self._extra = extra + len(meta) - before
            return
        for key, value in items:
            if value is None or key in meta:
                continue
            if extra >= MAX_META_KEYS:
                meta["metadata_truncated"] = meta.get("metadata_truncated", 0) + 1
                continue
            extra += 1
            kind = type(value)
            if kind is str:
                if len(value) > MAX_META_STR:
                    value = short(value)
            elif kind is not int or not -(2**63) < value < 2**63:
                value = simple(value)
            if type(key) is not str or len(key) > 200:
                key = short(key, 200)
            meta[key] = value
        self._extra = extra

    def wire(self, *, needs_input: bool = True) -> dict[str, Any]:
        """The v1 wire dict. The Decoder needs ``prompt`` or ``messages``: a record without input gets
        an empty ``messages`` list (no content known), never made-up text."""
        out = dict(self.fields)
        if needs_input and "prompt" not in out and "messages" not in out:
            out["messages"] = []
        out["metadata"] = self.meta
        return out


def chat_messages(value: Any) -> list[dict[str, Any]] | None:
    """OpenAI-style chat messages as v1 messages (role + text content); None if not a list.

    Content parts keep their text; tool calls carry no text (content null); a message without a
    string role is dropped.
    """
    if not isinstance(value, list):
        return None
    out: list[dict[str, Any]] = []
    for m in value:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if not isinstance(role, str) or not role:
            role = "user" if m.get("type") == "message" else None  # Responses API items may omit it
            if m.get("type") == "function_call_output":
                role = "tool"
            if role is None:
                continue
        content = m.get("content", m.get("output") if role == "tool" else None)
        out.append({"role": role[:MAX_ROLE], "content": text_of(content)})
    return out
