"""OTLP traces and logs (protobuf or OTLP/JSON) -> v1 records, for GenAI semconv and OpenInference spans.

Why one module for both signals: the GenAI semantic conventions put the same call's facts either on
the span (attributes, span events) or in log records carrying the span's context, and instrumentations
differ in which they use. Both paths share the attribute mapping below and give a call the same
``request_id`` (``otel-<trace id>-<span id>``), so a call's content logged as events joins its span's
record in the writer. A log-derived record carries only what the log knows.

Parsing uses the generated classes of ``opentelemetry-proto``; OTLP/JSON differs from protobuf's
canonical JSON only in hex (not base64) trace and span ids, which are rewritten before parsing.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from driftloop.ingest.decode import INVALID_JSON, InvalidMessage
from driftloop.ingest.formats._common import (
    INT32_MAX,
    INVALID_EVALUATION,
    INVALID_OTLP,
    INVALID_PROTOBUF,
    INVALID_SPAN_CONTEXT,
    MAX_FINISH,
    MAX_ID,
    MAX_META_KEYS,
    MAX_ROLE,
    MAX_SHORT,
    MISSING_SPAN_CONTEXT,
    Converted,
    ItemError,
    Rec,
    rfc3339_ns,
    short,
    simple,
    text_of,
)
from driftloop.ingest.formats.openai import request_messages, response_output

#: gen_ai.operation.name values that are one model call (others — embeddings, execute_tool,
#: invoke_agent, create_agent, retrieval — are not, and such spans are skipped).
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion", "responses"})
EVALUATION_EVENT = "gen_ai.evaluation.result"
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
#: pre-1.37 per-message events (logs or span events) -> the role of their message
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"
#: metadata key of a log-derived record whose messages come from per-message events: each message's
#: event time (ns), in order. Such a record may hold only part of its call's messages (events of one
#: call split over export bodies); the writer appends it to a stored list marked the same way
#: (``driftloop.ingest.writer.PARTIAL_MESSAGES_KEY``).
MESSAGE_TIMES_KEY = "otel.message_times"

#: Attributes that hold content (prompts, outputs, documents, tool schemas): never copied to metadata,
#: which is stored unredacted.
_CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.tool.definitions",
    "gen_ai.prompt", "gen_ai.completion", "gen_ai.event.content", "input.value", "output.value", "llm.prompts",
    "llm.choices", "llm.tools", "llm.prompt_template.variables", "llm.prompt_template.template",
    "retrieval.documents", "embedding.embeddings", "content", "message",
})
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.",
                     "llm.prompts.", "llm.choices.", "llm.tools.", "retrieval.documents.", "embedding.embeddings.",
                     "input.", "output.")
_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.response.model_name", "llm.model_name",
               "llm.request.model_name")
_TOKENS_IN = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
              "llm.usage.prompt_tokens")
_TOKENS_OUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
               "llm.usage.completion_tokens")
_USER_KEYS = ("user.id", "enduser.id")
_SESSION_KEYS = ("session.id", "gen_ai.conversation.id")
_INDEXED_OI = re.compile(r"^llm\.(input|output)_messages\.(\d+)\.message\.(.+)$")
_INDEXED_LEGACY = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(.+)$")
#: the regexes' literal prefixes: a cheap test first, since most keys match neither
_LEGACY_INDEXED_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.")
_OI_INDEXED_PREFIXES = ("llm.input_messages.", "llm.output_messages.")
#: what an attribute key is, as bits (content: never metadata; the start of an indexed message key),
#: remembered for the first _MAX_KEY_KINDS keys seen: instrumentations use a few dozen keys, so a span's
#: keys are classified by one dict lookup each instead of a dozen prefix tests
_CONTENT, _LEGACY_INDEXED, _OI_INDEXED = 1, 2, 4
_MAX_KEY_KINDS = 4096
_key_kinds: dict[str, int] = {}
_OI_CONTENT = re.compile(r"^contents\.(\d+)\.message_content\.(type|text)$")
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})*$")
_json = msgspec.json.Decoder()


# --- parsing -----------------------------------------------------------------------------------------


def _is_json(body: bytes, content_type: str | None) -> bool:
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct in ("application/json", "text/json") or ct.endswith("+json"):
        return True
    if ct in ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"):
        return False
    return body.lstrip()[:1] == b"{"


def _hex_ids_to_base64(obj: Any) -> None:
    """OTLP/JSON writes trace/span ids as hex; protobuf's JSON mapping wants base64 for bytes."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k in _ID_KEYS and isinstance(v, str) and len(v) in (16, 32) and _HEX.match(v):
                    o[k] = base64.b64encode(bytes.fromhex(v)).decode()
                elif isinstance(v, dict | list):
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


def parse(body: bytes, content_type: str | None, msg: Message, what: str) -> None:
    """Fill ``msg`` from protobuf or OTLP/JSON bytes, or raise InvalidMessage naming the problem."""
    if _is_json(body, content_type):
        try:
            obj = _json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            raise InvalidMessage(INVALID_JSON, f"OTLP/JSON body is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise InvalidMessage(INVALID_OTLP, f"OTLP/JSON body must be an {what} object, got {type(obj).__name__}")
        _hex_ids_to_base64(obj)
        try:
            json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, ValueError, RecursionError) as e:
            raise InvalidMessage(INVALID_OTLP, f"not an OTLP/JSON {what}: {short(str(e), 300)}") from None
        return
    try:
        msg.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as e:
        raise InvalidMessage(INVALID_PROTOBUF, f"not a protobuf {what}: {e}") from None


def any_value(v: AnyValue) -> Any:
    """An OTLP AnyValue as plain Python (kvlist -> dict, bytes -> base64 text)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def attrs(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    """Attributes as a dict (a repeated key: the last value, at the first one's position).

    Strings, the common case, are read directly: each protobuf field access costs a Python call.
    """
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        text = v.string_value  # non-empty: the oneof holds a string (one access saved)
        if text:
            out[kv.key] = text
        else:
            kind = v.WhichOneof("value")
            out[kv.key] = v.int_value if kind == "int_value" else any_value(v)
    return out


def _key_kind(k: str) -> int:
    kind = _key_kinds.get(k)
    if kind is None:
        kind = ((_CONTENT if k in _CONTENT_KEYS or k.startswith(_CONTENT_PREFIXES) else 0)
                | (_LEGACY_INDEXED if k.startswith(_LEGACY_INDEXED_PREFIXES) else 0)
                | (_OI_INDEXED if k.startswith(_OI_INDEXED_PREFIXES) else 0))  # fmt: skip
        if len(_key_kinds) < _MAX_KEY_KINDS:
            _key_kinds[k] = kind
    return kind


def _hexid(trace_id: bytes, span_id: bytes) -> str | None:
    """``otel-<trace>-<span>``, or None when the record has no span context (both ids empty)."""
    if not trace_id and not span_id:
        return None
    if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id):
        raise ItemError(INVALID_SPAN_CONTEXT, f"trace id {trace_id.hex()!r} / span id {span_id.hex()!r} "
                                              "is not a valid span context (16 and 8 non-zero bytes)")
    return f"otel-{trace_id.hex()}-{span_id.hex()}"


# --- attributes -> record ----------------------------------------------------------------------------


def _as_json(value: Any) -> Any:
    """A content attribute: span attributes hold JSON text, log/event attributes structured values."""
    if isinstance(value, str):
        s = value.lstrip()
        if s[:1] in ("[", "{"):
            try:
                return _json.decode(value)
            except (msgspec.DecodeError, RecursionError):
                return value
    return value


def _parts_message(m: Any) -> dict[str, Any] | None:
    """A GenAI semconv message ({role, parts: [...]}) as a v1 message (text parts joined)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return None
    parts = m.get("parts")
    content: str | None
    if isinstance(parts, list):
        texts = []
        for p in parts:
            if not isinstance(p, dict):
                continue
            kind = p.get("type")
            if kind == "text":
                if isinstance(text := p.get("content"), str):
                    texts.append(text)
            elif kind == "tool_call_response":
                texts.append(text_of(p.get("response")) or "")
        content = "\n".join(texts) if texts else None
    else:
        content = text_of(m.get("content"))
    return {"role": m["role"][:MAX_ROLE], "content": content}


def _semconv_messages(value: Any) -> list[dict[str, Any]] | None:
    return _semconv_list(_as_json(value))


def _semconv_list(v: Any) -> list[dict[str, Any]] | None:
    """``_parts_message`` of each item of an already-parsed list (items that are no message are left out)."""
    if not isinstance(v, list):
        return None
    return [msg for m in v if (msg := _parts_message(m)) is not None]


def _system_text(value: Any) -> str | None:
    v = _as_json(value)
    if isinstance(v, list):
        return text_of([{"type": p.get("type"), "text": p.get("content")} if isinstance(p, dict) else p for p in v])
    return v if isinstance(v, str) else None


class _Content:
    """Input messages / prompt text and output text / finish reason, filled from the first source that has each."""

    __slots__ = ("event_input", "finish_reason", "messages", "prompt", "response")

    def __init__(self) -> None:
        self.event_input = False  # messages come from per-message events (later events append)
        self.messages: list[dict[str, Any]] | None = None
        self.prompt: str | None = None
        self.response: str | None = None
        self.finish_reason: Any = None

    @property
    def has_input(self) -> bool:
        return self.messages is not None or self.prompt is not None

    def set_input(self, messages: list[dict[str, Any]] | None = None, prompt: str | None = None) -> None:
        if self.has_input:
            return
        if messages:
            self.messages = messages
        elif prompt is not None:
            self.prompt = prompt

    def set_output(self, text: str | None, finish: Any = None) -> None:
        if self.response is None and text is not None:
            self.response = text
        if self.finish_reason is None and finish is not None:
            self.finish_reason = finish

    def from_semconv(self, a: dict[str, Any]) -> None:
        """gen_ai.input.messages / gen_ai.system_instructions / gen_ai.output.messages (1.37+)."""
        if self.messages is None and self.prompt is None and ("gen_ai.input.messages" in a
                                                              or "gen_ai.system_instructions" in a):
            msgs = _semconv_list(_as_json(a.get("gen_ai.input.messages"))) or []
            if "gen_ai.system_instructions" in a:
                system = _system_text(a["gen_ai.system_instructions"])
                if system is not None:
                    msgs.insert(0, {"role": "system", "content": system})
            if msgs:
                self.messages = msgs
        if (out := a.get("gen_ai.output.messages")) is not None:
            raw = _as_json(out)
            outs = _semconv_list(raw)  # raw is parsed already
            if outs:
                finish = raw[0].get("finish_reason") if isinstance(raw, list) and isinstance(raw[0], dict) else None
                self.set_output(outs[0]["content"], finish)

    def from_legacy_attrs(self, a: dict[str, Any]) -> None:
        """gen_ai.prompt / gen_ai.completion: JSON text or plain text, or indexed (gen_ai.prompt.0.role)."""
        if "gen_ai.prompt" in a:
            v = _as_json(a["gen_ai.prompt"])
            msgs = request_messages({"messages": v}) if isinstance(v, list) else None
            self.set_input(msgs, v if isinstance(v, str) else None)
        if "gen_ai.completion" in a:
            v = _as_json(a["gen_ai.completion"])
            if isinstance(v, list) and v and isinstance(v[0], dict):
                self.set_output(text_of(v[0].get("content")), v[0].get("finish_reason"))
            elif isinstance(v, str):
                self.set_output(v)
        indexed: dict[str, dict[int, dict[str, Any]]] = {"prompt": {}, "completion": {}}
        for k, v in a.items():
            mt = _INDEXED_LEGACY.match(k) if k.startswith(_LEGACY_INDEXED_PREFIXES) else None
            if mt:
                indexed[mt.group(1)].setdefault(int(mt.group(2)), {})[mt.group(3)] = v
        if indexed["prompt"]:
            self.set_input(request_messages({"messages": [indexed["prompt"][i] for i in sorted(indexed["prompt"])]}))
        if indexed["completion"]:
            first = indexed["completion"][min(indexed["completion"])]
            self.set_output(text_of(first.get("content")), first.get("finish_reason"))

    def from_openinference(self, a: dict[str, Any]) -> None:
        """llm.input_messages.N.message.* / llm.output_messages.N.message.*, then input.value / output.value."""
        grouped: dict[str, dict[int, dict[str, Any]]] = {"input": {}, "output": {}}
        for k, v in a.items():
            mt = _INDEXED_OI.match(k) if k.startswith(_OI_INDEXED_PREFIXES) else None
            if mt:
                grouped[mt.group(1)].setdefault(int(mt.group(2)), {})[mt.group(3)] = v
        if grouped["input"]:
            self.set_input([_oi_message(grouped["input"][i]) for i in sorted(grouped["input"])])
        if grouped["output"]:
            first = _oi_message(grouped["output"][min(grouped["output"])])
            self.set_output(first["content"])
        if not self.has_input and "input.value" in a:
            v = a["input.value"]
            j = _as_json(v) if a.get("input.mime_type") == "application/json" else v
            if isinstance(j, dict):
                self.set_input(request_messages(j))
            elif isinstance(v, str):
                self.set_input(prompt=v)
        if "output.value" in a and (self.response is None or self.finish_reason is None):
            v = a["output.value"]
            j = _as_json(v) if a.get("output.mime_type") == "application/json" else v
            if isinstance(j, dict):
                text, finish, _model = response_output(j)
                self.set_output(text, finish)
            elif isinstance(v, str):
                self.set_output(v)

    def from_event(self, name: str, a: dict[str, Any], body: Any) -> bool:
        """A per-message event (log record or span event); True if it was one."""
        if body is None and "gen_ai.event.content" in a:
            body = _as_json(a["gen_ai.event.content"])
        if body is None and ("content" in a or "message" in a):
            body = a
        body = _as_json(body)
        if name in MESSAGE_EVENTS:
            role = MESSAGE_EVENTS[name]
            if isinstance(body, dict):
                if isinstance(body.get("role"), str) and body["role"]:
                    role = body["role"]
                content = text_of(body.get("content"))
            else:
                content = text_of(body)
            if content is None:  # content capture off: the event says a message existed, not what it said
                return True
            if not self.has_input:
                self.messages, self.event_input = [], True
            if self.event_input and self.messages is not None:
                self.messages.append({"role": role[:MAX_ROLE], "content": content})
            return True
        if name == CHOICE_EVENT:
            if isinstance(body, dict):
                msg = body.get("message")
                text = text_of(msg.get("content")) if isinstance(msg, dict) else text_of(body.get("content"))
                if body.get("index", 0) in (0, None):
                    self.set_output(text, body.get("finish_reason"))
            return True
        if name == "gen_ai.content.prompt":
            self.from_legacy_attrs({"gen_ai.prompt": a.get("gen_ai.prompt")} if "gen_ai.prompt" in a else {})
            return True
        if name == "gen_ai.content.completion":
            self.from_legacy_attrs({"gen_ai.completion": a.get("gen_ai.completion")} if "gen_ai.completion" in a
                                   else {})
            return True
        return False


def _oi_message(fields: dict[str, Any]) -> dict[str, Any]:
    role = fields.get("role")
    content = fields.get("content")
    if not isinstance(content, str):
        parts: dict[int, dict[str, Any]] = {}
        for k, v in fields.items():
            mt = _OI_CONTENT.match(k)
            if mt:
                parts.setdefault(int(mt.group(1)), {})[mt.group(2)] = v
        texts = [p["text"] for _, p in sorted(parts.items()) if p.get("type", "text") == "text"
                 and isinstance(p.get("text"), str)]
        content = "\n".join(texts) if texts else None
    return {"role": (role if isinstance(role, str) and role else "unknown")[:MAX_ROLE], "content": content}


def _first(a: dict[str, Any], keys: tuple[str, ...], used: set[str]) -> Any:
    for k in keys:
        v = a.get(k)
        if v is not None and v != "":
            used.add(k)
            return v
    return None


def is_llm_span(a: dict[str, Any]) -> bool:
    """An LLM call: a GenAI inference operation, an older span with only a request model, or OpenInference LLM."""
    kind = a.get("openinference.span.kind")
    if isinstance(kind, str):
        return kind.upper() == "LLM"
    op = a.get("gen_ai.operation.name")
    if op is not None:
        return op in LLM_OPERATIONS
    return "gen_ai.request.model" in a or "gen_ai.response.model" in a or "llm.model_name" in a


#: the mapped fields' keys, each in priority order: model, tokens in, tokens out, finish reason, user, session
_GROUPS = (_MODEL_KEYS, _TOKENS_IN, _TOKENS_OUT, ("gen_ai.response.finish_reasons", "llm.finish_reason"), _USER_KEYS,
           _SESSION_KEYS)
_GROUP_KEYS = frozenset(k for g in _GROUPS for k in g)


class _Plan:
    """What a set of attribute keys (in order) needs: spans of one instrumentation share it, so it is
    worked out once: the OR of the keys' kinds, the keys that may become metadata, and for each mapped
    field the keys present, in priority order."""

    __slots__ = ("bits", "groups", "meta_keys", "plain")

    def __init__(self, keys: tuple[str, ...]) -> None:
        kinds = [_key_kind(k) for k in keys]
        self.bits = 0
        for kind in kinds:
            self.bits |= kind
        self.plain = tuple(k for k, kind in zip(keys, kinds, strict=True) if not kind & _CONTENT and k != "event.name")
        present = set(keys) & _GROUP_KEYS
        self.groups = tuple(tuple(k for k in g if k in present) for g in _GROUPS)
        #: the metadata keys for a tuple of used (mapped) keys: most spans of a plan use the same ones
        self.meta_keys: dict[tuple[str, ...], tuple[str, ...]] = {}

    def meta_keys_for(self, used: tuple[str, ...]) -> tuple[str, ...]:
        keys = self.meta_keys.get(used)
        if keys is None:
            keys = tuple(k for k in self.plain if k not in used)
            if len(self.meta_keys) < 8:
                self.meta_keys[used] = keys
        return keys


_MAX_PLANS, _MAX_PLAN_KEYS = 1024, 64
#: ``res_user`` not worked out by the caller
_UNSET: Any = object()
_plans: dict[tuple[str, ...], _Plan] = {}


def _plan(a: dict[str, Any]) -> _Plan:
    keys = tuple(a)
    plan = _plans.get(keys)
    if plan is None:
        plan = _Plan(keys)
        if len(_plans) < _MAX_PLANS and len(keys) <= _MAX_PLAN_KEYS:
            _plans[keys] = plan
    return plan


def _fill(rec: Rec, a: dict[str, Any], content: _Content, resource: dict[str, Any], plan: _Plan | None = None,
          res_user: Any = _UNSET) -> None:
    """Map the call's attributes (span, details event or log) onto ``rec``; the rest goes to metadata.

    ``res_user``: the resource's user id (``_first(resource, _USER_KEYS)``), worked out once per resource.
    """
    if plan is None:
        plan = _plan(a)
    used: list[str] = []
    picked: list[Any] = []
    for present in plan.groups:
        for k in present:
            v = a[k]
            if v is not None and (v or type(v) is not str):  # not None and != "" (values are plain types)
                used.append(k)
                break
        else:
            v = None
        picked.append(v)
    model, tin, tout, fr, user, session = picked
    fields = rec.fields  # the common cases (valid values, fields not set yet) skip the checked setters
    if type(model) is str and 0 < len(model) <= MAX_SHORT and "model_id" not in fields:
        fields["model_id"] = model
    else:
        rec.str_field("model_id", model, MAX_SHORT)
    if type(tin) is int and 0 <= tin <= INT32_MAX and "tokens_in" not in fields:
        fields["tokens_in"] = tin
    else:
        rec.int_field("tokens_in", tin)
    if type(tout) is int and 0 <= tout <= INT32_MAX and "tokens_out" not in fields:
        fields["tokens_out"] = tout
    else:
        rec.int_field("tokens_out", tout)
    if isinstance(fr, list):
        fr = fr[0] if fr else None
    if fr is None:
        fr = content.finish_reason
    rec.str_field("finish_reason", fr, MAX_FINISH)
    rec.str_field("user_id", user or (res_user if res_user is not _UNSET else _first(resource, _USER_KEYS, set())))
    rec.str_field("session_id", session, MAX_SHORT)
    if content.messages is not None:
        rec.set("messages", content.messages)
    elif content.prompt is not None:
        rec.set("prompt", content.prompt)
    rec.set("response", content.response)
    keys = plan.meta_keys_for(tuple(used))
    rec.add_meta_items(zip(keys, map(a.__getitem__, keys), strict=True), len(keys))
    rec.add_meta_items(resource.items(), len(resource))


def _content_of(a: dict[str, Any], events: Iterable[tuple[str, dict[str, Any], Any]] = (),
                indexed: int | None = None) -> _Content:
    """``indexed``: the OR of the kinds of ``a``'s keys (its plan's bits), when known."""
    c = _Content()
    c.from_semconv(a)
    for name, ea, _body in events:
        if name == DETAILS_EVENT:
            c.from_semconv(ea)
    for name, ea, body in events:
        c.from_event(name, ea, body)
    if indexed is None:
        indexed = _plan(a).bits
    # each reads only these keys: most spans have none of them and skip both scans
    if indexed & _LEGACY_INDEXED or "gen_ai.prompt" in a or "gen_ai.completion" in a:
        c.from_legacy_attrs(a)
    if indexed & _OI_INDEXED or "input.value" in a or "output.value" in a:
        c.from_openinference(a)
    return c


# --- evaluations -> feedback -----------------------------------------------------------------------------


def _feedback(request_id: str | None, a: dict[str, Any], ts: str | None, fmt: str) -> dict[str, Any]:
    """A gen_ai.evaluation.result event as a v1 feedback event on its call's request id."""
    if request_id is None:
        rid = a.get("gen_ai.response.id")
        if not isinstance(rid, str) or not rid or len(rid) > MAX_ID:
            raise ItemError(MISSING_SPAN_CONTEXT, "evaluation event has no span context and no gen_ai.response.id")
        request_id = rid
    meta: dict[str, Any] = {"source_format": fmt}
    score = a.get("gen_ai.evaluation.score.value")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)
                              or not math.isfinite(score) or abs(score) > 1e12):
        meta["invalid.score"] = short(score, 200)
        score = None
    comment = a.get("gen_ai.evaluation.explanation")
    if comment is not None and not isinstance(comment, str):
        meta["invalid.comment"] = short(comment, 200)
        comment = None
    label = a.get("gen_ai.evaluation.score.label")
    for k, v in list(a.items())[:MAX_META_KEYS]:
        if k not in ("gen_ai.evaluation.score.value", "gen_ai.evaluation.explanation", "event.name"):
            meta[k.removeprefix("gen_ai.")] = simple(v)
    if score is None and not comment:
        if isinstance(label, str) and label:
            comment = label  # a label-only evaluation still says something about the call
        else:
            raise ItemError(INVALID_EVALUATION, f"evaluation {a.get('gen_ai.evaluation.name')!r} on {request_id} "
                                                "has no score, explanation or label")
    out: dict[str, Any] = {"type": "feedback", "request_id": request_id, "metadata": meta}
    if score is not None:
        out["score"] = float(score)
    if comment:
        out["comment"] = comment
    if ts is not None:
        out["timestamp"] = ts
    return out


# --- traces ----------------------------------------------------------------------------------------------


_STATUS_ERROR = Status.STATUS_CODE_ERROR


def _span_records(span: Span, resource: dict[str, Any], res_user: Any, scope: str | None, out: Converted) -> None:
    """``scope``: the span's scope name as metadata (shortened), None when empty."""
    rid = _hexid(span.trace_id, span.span_id)
    if rid is None:
        raise ItemError(MISSING_SPAN_CONTEXT, f"span {span.name!r} has no trace/span id")
    a = attrs(span.attributes)
    events: list[tuple[str, dict[str, Any], Any]] = []
    if span.events:
        events = [(e.name, attrs(e.attributes), None) for e in span.events]
        for e, (_, ea, _) in zip(span.events, events, strict=True):
            if ea.get("event.name", e.name) == EVALUATION_EVENT:
                try:
                    out.records.append(_feedback(rid, ea, rfc3339_ns(e.time_unix_nano), "otlp"))
                except ItemError as err:
                    out.rejected.append((err.reason, err.detail))
    if not is_llm_span(a):
        out.skipped += 1
        return
    rec = Rec("otlp")
    fields = rec.fields
    fields["request_id"] = rid
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    ts = rfc3339_ns(start)
    if ts is not None:
        fields["timestamp"] = ts
    if end and start:
        ms = (end - start) / 1e6
        if 0 <= ms <= 1e12:  # finite: a difference of two 64-bit integers
            fields["latency_ms"] = ms
        else:
            rec.latency(ms)
    plan = _plan(a)
    content = _content_of(a, events, plan.bits)
    _fill(rec, a, content, resource, plan, res_user)
    meta = rec.meta
    meta["otel.trace_id"] = rid[5:37]
    meta["otel.span_id"] = rid[38:]
    name = span.name
    meta["otel.span_name"] = name if len(name) <= 200 else short(name, 200)
    if scope is not None:
        meta["otel.scope"] = scope
    status = span.status
    if status.code == _STATUS_ERROR:
        meta["otel.status"] = "error"
        if status.message:
            meta["otel.status_message"] = short(status.message, 500)
    out.records.append(rec.wire())


def convert_traces(body: bytes, content_type: str | None) -> Converted:
    """An ExportTraceServiceRequest -> one record per LLM span, one feedback event per evaluation event."""
    req = ExportTraceServiceRequest()
    parse(body, content_type, req, "ExportTraceServiceRequest")
    out = Converted(records=[])
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        res_user = _first(resource, _USER_KEYS, set())
        for ss in rs.scope_spans:
            scope = ss.scope.name
            scope_meta = short(scope, 200) if scope else None
            for span in ss.spans:
                try:
                    _span_records(span, resource, res_user, scope_meta, out)
                except ItemError as e:
                    out.rejected.append((e.reason, e.detail))
    return out


# --- logs ------------------------------------------------------------------------------------------------


class _LogCall:
    """What the log records of one call (one span context) say, merged in arrival order."""

    __slots__ = ("attrs", "content", "details", "resource", "rid", "times", "ts")

    def __init__(self, rid: str, resource: dict[str, Any], ts: str | None) -> None:
        self.rid = rid
        self.content = _Content()
        self.attrs: dict[str, Any] = {}
        self.resource = resource
        self.ts = ts
        self.details = False
        self.times: list[int] = []  # event time of each message taken from a per-message event


def _log_time(lr: LogRecord) -> str | None:
    return rfc3339_ns(lr.time_unix_nano or lr.observed_time_unix_nano)


def _log_record(lr: LogRecord, resource: dict[str, Any], calls: dict[str, _LogCall], out: Converted) -> None:
    a = attrs(lr.attributes)
    name = lr.event_name or a.get("event.name") or ""
    if type(name) is not str:  # an event.name that is a list or a map (unhashable) names no GenAI event
        name = ""
    rid = _hexid(lr.trace_id, lr.span_id)
    if name == EVALUATION_EVENT:
        out.records.append(_feedback(rid, a, _log_time(lr), "otlp_logs"))
        return
    is_details = name == DETAILS_EVENT
    if not (is_details or name in MESSAGE_EVENTS or name == CHOICE_EVENT):
        out.skipped += 1
        return
    if rid is None:
        resp_id = a.get("gen_ai.response.id") if is_details else None
        if not isinstance(resp_id, str) or not resp_id or len(resp_id) > MAX_ID:
            raise ItemError(MISSING_SPAN_CONTEXT, f"{name} log record has no span context to join its call"
                                                  + (" and no gen_ai.response.id" if is_details else ""))
        rid = resp_id
    call = calls.get(rid)
    if call is None:
        call = calls[rid] = _LogCall(rid, resource, _log_time(lr))
    if is_details:
        call.details = True
        call.content.from_semconv(a)
        for k, v in a.items():
            call.attrs.setdefault(k, v)
    else:
        c = call.content
        n = len(c.messages) if c.event_input and c.messages is not None else 0
        c.from_event(name, a, any_value(lr.body) if lr.HasField("body") else None)
        if c.event_input and c.messages is not None and len(c.messages) > n:
            call.times.append(lr.time_unix_nano or lr.observed_time_unix_nano)
        for k, v in a.items():
            if k not in ("gen_ai.system", "gen_ai.provider.name"):
                continue
            call.attrs.setdefault(k, v)


def convert_logs(body: bytes, content_type: str | None) -> Converted:
    """An ExportLogsServiceRequest -> one record per call (its GenAI events merged), feedback per evaluation."""
    req = ExportLogsServiceRequest()
    parse(body, content_type, req, "ExportLogsServiceRequest")
    out = Converted(records=[])
    calls: dict[str, _LogCall] = {}
    for rl in req.resource_logs:
        resource = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                try:
                    _log_record(lr, resource, calls, out)
                except ItemError as e:
                    out.rejected.append((e.reason, e.detail))
    for call in calls.values():
        rec = Rec("otlp_logs")
        rec.set("request_id", call.rid)
        rec.set("timestamp", call.ts)
        _fill(rec, call.attrs, call.content, call.resource)
        if call.rid.startswith("otel-"):
            rec.meta["otel.trace_id"], rec.meta["otel.span_id"] = call.rid[5:37], call.rid[38:]
        if call.content.event_input and call.content.messages and len(call.times) == len(call.content.messages):
            rec.meta[MESSAGE_TIMES_KEY] = call.times
        out.records.append(rec.wire())
    return out
