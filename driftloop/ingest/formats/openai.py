"""OpenAI request/response pairs as gateways log them -> v1 records (Chat Completions, Responses, legacy Completions).

The request/response readers here are also used for the OpenAI-shaped parts of other formats
(LiteLLM's ``response``, OpenInference's JSON ``input.value``/``output.value``), so each OpenAI API shape
is read in one place.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from driftloop.ingest.formats._common import (
    INVALID_ID,
    INVALID_ITEM,
    INVALID_OPENAI,
    MAX_FINISH,
    MAX_ID,
    MAX_SHORT,
    Converted,
    ItemError,
    Rec,
    chat_messages,
    json_items,
    rfc3339_s,
    text_of,
)

#: request keys that are content or mapped elsewhere (not copied to metadata as request.<key>)
_REQUEST_CONTENT = frozenset({"messages", "input", "instructions", "prompt", "tools", "functions", "model",
                              "user", "metadata", "response_format", "text", "tool_choice", "logit_bias",
                              "prediction", "safety_identifier"})
#: item keys read by the mapper itself (the rest of the item goes to metadata)
_ITEM_KEYS = frozenset({"request", "response", "timestamp", "latency_ms", "duration_ms", "user_id", "session_id",
                        "request_id", "metadata"})
_enc = msgspec.json.Encoder()


def request_messages(req: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The input of a Chat Completions (``messages``) or Responses (``instructions`` + ``input``) request."""
    msgs = chat_messages(req.get("messages"))
    if msgs is not None:
        return msgs
    inp = req.get("input")
    out: list[dict[str, Any]] = []
    instructions = req.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    if isinstance(inp, str):
        out.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        out.extend(chat_messages(inp) or [])
    return out if out or inp is not None or instructions is not None else None


def response_output(resp: dict[str, Any]) -> tuple[str | None, Any, Any]:
    """``(output text, finish reason, model)`` of a Chat Completions, Responses or Completions response."""
    model = resp.get("model")
    choices = resp.get("choices")
    if isinstance(choices, list):
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        msg = first.get("message")
        if isinstance(msg, dict):
            text = text_of(msg.get("content"))
            if text is None and isinstance(msg.get("refusal"), str):
                text = msg["refusal"]
        else:
            text = first.get("text") if isinstance(first.get("text"), str) else None
        return text, first.get("finish_reason"), model
    output = resp.get("output")
    if isinstance(output, list) or "output_text" in resp:
        text = resp.get("output_text") if isinstance(resp.get("output_text"), str) else None
        if text is None and isinstance(output, list):
            texts = [text_of(item.get("content")) for item in output
                     if isinstance(item, dict) and item.get("type", "message") == "message"]
            joined = [t for t in texts if t is not None]
            text = "\n".join(joined) if joined else None
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return text, reason or resp.get("status"), model
    return None, None, model


def usage_tokens(usage: Any) -> tuple[Any, Any]:
    """``(tokens in, tokens out)`` from a Chat (prompt/completion) or Responses (input/output) usage object."""
    if not isinstance(usage, dict):
        return None, None
    tin = usage.get("prompt_tokens", usage.get("input_tokens"))
    tout = usage.get("completion_tokens", usage.get("output_tokens"))
    return tin, tout


def content_id(item: Any, prefix: str) -> str:
    """A stable id from the item's content: a replayed log line gets the same id, so it is stored once."""
    return f"{prefix}-" + hashlib.sha256(_enc.encode(item)).hexdigest()[:32]


def _timestamp(rec: Rec, value: Any) -> None:
    """An item's time: RFC 3339 text or epoch milliseconds pass through (the Decoder checks them)."""
    if value is None:
        return
    if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
        rec.set("timestamp", value)
    else:
        rec.invalid("timestamp", value)


def _item(item: Any, n: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ItemError(INVALID_ITEM, f"item {n}: expected an object with request and response, "
                                      f"got {type(item).__name__}")
    req, resp = item.get("request"), item.get("response")
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise ItemError(INVALID_ITEM, f"item {n}: 'request' and 'response' must both be objects")
    rec = Rec("openai")
    rid = resp.get("id") or item.get("request_id")
    if rid is None:
        rid = content_id(item, "openai")
    if not isinstance(rid, str) or len(rid) > MAX_ID:
        raise ItemError(INVALID_ID, f"item {n}: response id {str(rid)[:80]!r} is not a string of 1..{MAX_ID} chars")
    rec.set("request_id", rid)
    created = resp.get("created", resp.get("created_at"))
    if item.get("timestamp") is not None:
        _timestamp(rec, item["timestamp"])
    elif isinstance(created, int | float) and not isinstance(created, bool):
        rec.set("timestamp", rfc3339_s(created))
    msgs = request_messages(req)
    if msgs is not None:
        rec.set("messages", msgs)
    elif isinstance(req.get("prompt"), str):
        rec.set("prompt", req["prompt"])
    text, finish, model = response_output(resp)
    rec.set("response", text)
    rec.str_field("model_id", model or req.get("model"), MAX_SHORT)
    rec.str_field("finish_reason", finish, MAX_FINISH)
    tin, tout = usage_tokens(resp.get("usage"))
    rec.int_field("tokens_in", tin)
    rec.int_field("tokens_out", tout)
    rec.latency(item.get("latency_ms", item.get("duration_ms")))
    rm = req.get("metadata")
    req_meta: dict[str, Any] = rm if isinstance(rm, dict) else {}
    rec.str_field("user_id", item.get("user_id") or req.get("user") or req.get("safety_identifier")
                  or req_meta.get("user_id"))
    rec.str_field("session_id", item.get("session_id") or req_meta.get("session_id"), MAX_SHORT)
    if isinstance(resp.get("error"), dict | str):
        rec.add_meta("response.error", resp["error"])
    for k in ("object", "system_fingerprint", "service_tier", "status"):
        if k in resp:
            rec.add_meta(f"response.{k}", resp[k])
    if model and req.get("model") and req.get("model") != model:
        rec.add_meta("request.model", req["model"])
    for k, v in req.items():
        if k not in _REQUEST_CONTENT:
            rec.add_meta(f"request.{k}", v)
    for k, v in req_meta.items():
        if k not in ("user_id", "session_id"):
            rec.add_meta(f"request.metadata.{k}", v)
    extra = item.get("metadata")
    for k, v in (extra.items() if isinstance(extra, dict) else ()):
        rec.add_meta(k, v)
    for k, v in item.items():
        if k not in _ITEM_KEYS:
            rec.add_meta(k, v)
    return rec.wire()


def convert_openai(body: bytes) -> Converted:
    """A pair object, an array of pairs, or NDJSON pairs -> one record per pair."""
    items, bad = json_items(body, INVALID_OPENAI, "OpenAI request/response pairs")
    out = Converted(records=[], rejected=bad)
    for n, item in enumerate(items):
        try:
            out.records.append(_item(item, n))
        except ItemError as e:
            out.rejected.append((e.reason, e.detail))
    return out
