"""LiteLLM's StandardLoggingPayload (as its generic API logger posts it) -> v1 records.

The generic API logger sends a JSON array (``log_format: json_array``, the default), NDJSON
(``ndjson``) or one object per request (``single``); all three are accepted. ``messages`` and
``response`` are OpenAI-shaped (LiteLLM normalises providers to that), so they are read with the
OpenAI mapper's readers.
"""

from __future__ import annotations

from typing import Any

from driftloop.ingest.formats._common import (
    INVALID_ID,
    INVALID_ITEM,
    INVALID_LITELLM,
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
from driftloop.ingest.formats.openai import content_id, response_output

#: payload keys mapped to v1 fields or holding content (the rest of the payload goes to metadata)
_MAPPED = frozenset({"id", "messages", "response", "model", "prompt_tokens", "completion_tokens", "startTime",
                     "endTime", "end_user", "metadata", "model_parameters", "hidden_params",
                     "model_map_information", "error_information", "response_cost_failure_debug_info",
                     "requester_ip_address", "guardrail_information", "standard_built_in_tools_params",
                     "vector_store_request_metadata"})
#: StandardLoggingMetadata keys safe and useful to keep (the rest: requester metadata, vector store
#: queries, IP addresses — content or personal data — stay out)
_KEEP_META = ("user_api_key_alias", "user_api_key_team_id", "user_api_key_team_alias", "user_api_key_org_id",
              "user_api_key_hash")


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _item(p: Any, n: int) -> dict[str, Any]:
    if not isinstance(p, dict):
        raise ItemError(INVALID_ITEM, f"item {n}: expected a StandardLoggingPayload object, got {type(p).__name__}")
    resp = p.get("response")
    rid = p.get("id") or p.get("call_id") or (resp.get("id") if isinstance(resp, dict) else None)
    if rid is None:
        rid = content_id(p, "litellm")
    if not isinstance(rid, str) or len(rid) > MAX_ID:
        raise ItemError(INVALID_ID, f"item {n}: id {str(rid)[:80]!r} is not a string of 1..{MAX_ID} chars")
    rec = Rec("litellm")
    rec.set("request_id", rid)
    start, end = _seconds(p.get("startTime")), _seconds(p.get("endTime"))
    if start is not None:
        rec.set("timestamp", rfc3339_s(start))
    elif p.get("startTime") is not None:
        rec.invalid("timestamp", p["startTime"])
    if start is not None and end is not None:
        rec.latency((end - start) * 1000.0)
    msgs = p.get("messages")
    if isinstance(msgs, str):
        rec.set("prompt", msgs)
    elif isinstance(msgs, dict):  # a text-completion or Responses-style request body
        inner = chat_messages(msgs.get("messages")) or (
            [{"role": "user", "content": text_of(msgs.get("input", msgs.get("prompt")))}]
            if msgs.get("input", msgs.get("prompt")) is not None else None)
        rec.set("messages", inner)
    else:
        rec.set("messages", chat_messages(msgs))
    model = p.get("model")
    if isinstance(resp, dict):
        text, finish, resp_model = response_output(resp)
        rec.set("response", text)
        rec.str_field("finish_reason", finish, MAX_FINISH)
        model = model or resp_model
        if isinstance(resp.get("id"), str) and resp["id"] != rid:
            rec.add_meta("response.id", resp["id"])
    elif isinstance(resp, str):
        rec.set("response", resp)
    rec.str_field("model_id", model, MAX_SHORT)
    rec.int_field("tokens_in", p.get("prompt_tokens"))
    rec.int_field("tokens_out", p.get("completion_tokens"))
    m = p.get("metadata")
    meta: dict[str, Any] = m if isinstance(m, dict) else {}
    rec.str_field("user_id", p.get("end_user") or meta.get("user_api_key_end_user_id")
                  or meta.get("user_api_key_user_id"))
    sm = meta.get("spend_logs_metadata")
    spend: dict[str, Any] = sm if isinstance(sm, dict) else {}
    rec.str_field("session_id", spend.get("session_id") or meta.get("session_id"), MAX_SHORT)
    for k, v in p.items():
        if k not in _MAPPED:
            rec.add_meta(k, v)
    for k in _KEEP_META:
        rec.add_meta(f"metadata.{k}", meta.get(k))
    err = p.get("error_information")
    if isinstance(err, dict):
        for k in ("error_code", "error_class", "llm_provider"):
            rec.add_meta(f"error.{k}", err.get(k))
    params = p.get("model_parameters")
    if isinstance(params, dict):
        for k, v in params.items():
            if isinstance(v, str | int | float | bool):
                rec.add_meta(f"model_parameters.{k}", v)
    return rec.wire()


def convert_litellm(body: bytes) -> Converted:
    """A payload, a JSON array of payloads or NDJSON payloads -> one record per LLM call."""
    items, bad = json_items(body, INVALID_LITELLM, "LiteLLM StandardLoggingPayload objects")
    out = Converted(records=[], rejected=bad)
    for n, item in enumerate(items):
        if isinstance(item, dict) and item.get("call_type") in ("embedding", "aembedding", "image_generation",
                                                                 "aimage_generation", "moderation", "amoderation",
                                                                 "transcription", "atranscription", "speech",
                                                                 "aspeech", "rerank", "arerank"):
            out.skipped += 1  # not a text generation: nothing to monitor as an LLM answer
            continue
        try:
            out.records.append(_item(item, n))
        except ItemError as e:
            out.rejected.append((e.reason, e.detail))
    return out
