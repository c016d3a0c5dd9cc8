"""The format mappers (driftloop.ingest.formats): OTLP traces/logs, OpenInference, OpenAI, LiteLLM, v1 batches.

Pure unit tests, no services. Every record a mapper produces is round-tripped through the real v1
Decoder (msgspec.json.encode + Decoder.decode), so "converted" always means "ingestible".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source
from driftloop.ingest.formats import Converted, convert
from driftloop.ingest.redact import Redactor
from driftloop.settings import TopicFormat

FIX = Path(__file__).parent / "fixtures" / "formats"
CAPTURED = Path(__file__).parent / "fixtures" / "otlp_captured"
NOW = datetime(2024, 5, 2, tzinfo=UTC)
PB = "application/x-protobuf"
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


def decoded(conv: Converted, now: datetime = NOW) -> list[tuple[str, dict[str, Any]]]:
    """Every converted record through the real v1 Decoder: ``[(kind, row)]`` (fails on any reject)."""
    dec = Decoder(DecodePolicy(), Redactor())
    out = []
    for i, rec in enumerate(conv.records):
        kind, row, _ = dec.decode(msgspec.json.encode(rec), Source("t", 0, i, None), now)
        out.append((kind, row))
    return out


def by_id(conv: Converted) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in conv.records if r.get("type") != "feedback"}


def to_protobuf(otlp_json: bytes, msg: Any) -> bytes:
    """The same request as protobuf bytes (OTLP/JSON's hex ids become bytes)."""
    obj = json.loads(otlp_json)

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                    import base64

                    o[k] = base64.b64encode(bytes.fromhex(v)).decode()
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj)
    json_format.ParseDict(obj, msg)
    data: bytes = msg.SerializeToString()
    return data


# --- OTLP traces: GenAI semconv ----------------------------------------------------------------------


SEMCONV_ID = "otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"


def test_otlp_json_semconv_span_maps_every_field() -> None:
    conv = convert("otlp", fixture("otlp_traces_semconv.json"), content_type=JSON)
    rec = by_id(conv)[SEMCONV_ID]
    assert rec["model_id"] == "gpt-4o-mini-2024-07-18"  # the response model wins over the request model
    assert rec["timestamp"] == "2024-05-01T11:00:00.000Z"
    assert rec["latency_ms"] == pytest.approx(812.5)
    assert (rec["tokens_in"], rec["tokens_out"], rec["finish_reason"]) == (42, 7, "stop")
    assert rec["messages"] == [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "What is drift?"}]
    assert rec["response"] == "A change in distribution."
    assert (rec["user_id"], rec["session_id"]) == ("user-17", "conv-9")
    meta = rec["metadata"]
    assert meta["source_format"] == "otlp"
    assert meta["service.name"] == "support-bot" and meta["gen_ai.agent.name"] == "helper"
    assert meta["gen_ai.request.model"] == "gpt-4o-mini" and meta["gen_ai.request.temperature"] == 0.2
    assert meta["otel.span_name"] == "chat gpt-4o-mini"
    assert not any("messages" in k or "instructions" in k for k in meta), "content never goes to metadata"
    kinds = decoded(conv)
    row = next(r for k, r in kinds if k == "interaction" and r["request_id"] == SEMCONV_ID)
    assert row["prompt"] == "system: You are terse.\nuser: What is drift?"
    assert row["tokens_in"] == 42 and row["ts"] == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)


def test_otlp_skips_non_llm_spans_and_rejects_bad_span_context() -> None:
    conv = convert("otlp", fixture("otlp_traces_semconv.json"), content_type=JSON)
    assert conv.skipped == 2  # the HTTP span and the embeddings span
    assert [r for r, _ in conv.rejected] == ["invalid_span_context"]
    assert "0000" in conv.rejected[0][1]
    assert len(by_id(conv)) == 2


def test_otlp_bad_values_go_to_metadata_and_content_free_span_is_a_record() -> None:
    conv = convert("otlp", fixture("otlp_traces_semconv.json"), content_type=JSON)
    rec = by_id(conv)["otel-5b8efff798038103d269b633813fc60c-2122232425262728"]
    assert "tokens_in" not in rec and rec["metadata"]["invalid.tokens_in"] == "-3"
    assert (rec["tokens_out"], rec["finish_reason"], rec["model_id"]) == (11, "length", "gpt-4o")
    assert rec["latency_ms"] == 1000.0
    assert rec["messages"] == [] and "response" not in rec  # no content captured: no made-up text
    assert rec["metadata"]["otel.status"] == "error"
    assert rec["metadata"]["otel.status_message"] == "upstream timeout"
    (_, row), = [kr for kr in decoded(conv) if kr[1]["request_id"] == rec["request_id"]]
    assert row["prompt"] == "" and row["response"] is None and row["tokens_in"] is None


def test_otlp_evaluation_span_event_becomes_feedback() -> None:
    conv = convert("otlp", fixture("otlp_traces_semconv.json"), content_type=JSON)
    (fb,) = [r for r in conv.records if r.get("type") == "feedback"]
    assert fb["request_id"] == SEMCONV_ID
    assert (fb["score"], fb["comment"]) == (0.9, "answers the question")
    assert fb["metadata"]["evaluation.name"] == "relevance"
    assert fb["metadata"]["evaluation.score.label"] == "relevant"
    assert fb["timestamp"] == "2024-05-01T11:01:00.000Z"
    kinds = [k for k, _ in decoded(conv)]
    assert kinds.count("feedback") == 1


def test_otlp_protobuf_and_json_give_the_same_records() -> None:
    raw = fixture("otlp_traces_semconv.json")
    pb = to_protobuf(raw, ExportTraceServiceRequest())
    from_pb = convert("otlp", pb, content_type=PB)
    assert from_pb == convert("otlp", raw, content_type=JSON)
    assert convert("otlp", pb) == from_pb  # sniffed: not "{" -> protobuf
    assert convert("otlp", b"  \n" + raw) == from_pb  # sniffed: JSON
    assert convert("otlp", pb, content_type="application/x-protobuf; charset=binary") == from_pb


def test_otlp_from_the_sdk_exporter_encoding() -> None:
    """Spans made by the real OTel SDK, encoded by the OTLP exporter's own encoder."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exp = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "sdk-app"}))
    tp.add_span_processor(SimpleSpanProcessor(exp))
    tracer = tp.get_tracer("test")
    with tracer.start_as_current_span("chat m") as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                             "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4,
                             "gen_ai.response.finish_reasons": ("stop",),
                             "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"hi"}]}]',
                             "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"yo"}]}]'})
        ctx = span.get_span_context()
    with tracer.start_as_current_span("db query"):
        pass
    body = encode_spans(exp.get_finished_spans()).SerializeToString()
    conv = convert("otlp", body, content_type=PB)
    assert conv.skipped == 1 and not conv.rejected
    (rec,) = conv.records
    assert rec["request_id"] == f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}"
    assert (rec["model_id"], rec["tokens_in"], rec["tokens_out"], rec["finish_reason"]) == ("m", 3, 4, "stop")
    assert (rec["messages"], rec["response"]) == ([{"role": "user", "content": "hi"}], "yo")
    assert rec["metadata"]["service.name"] == "sdk-app"
    decoded(conv, now=datetime.now(UTC))


# --- OTLP traces: OpenInference ----------------------------------------------------------------------


def test_openinference_llm_span() -> None:
    conv = convert("otlp", fixture("otlp_traces_openinference.json"))
    assert conv.skipped == 1  # the RETRIEVER span
    (rec,) = conv.records
    assert rec["request_id"] == "otel-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
    assert rec["model_id"] == "gpt-4o-2024-08-06"
    assert rec["messages"] == [{"role": "system", "content": "Answer from the docs."},
                               {"role": "user", "content": "How do I reset my password?"}]
    assert rec["response"] == "Use the reset link."
    assert rec["finish_reason"] == "stop"  # from the JSON output.value
    assert (rec["tokens_in"], rec["tokens_out"], rec["latency_ms"]) == (25, 5, 1500.0)
    assert (rec["user_id"], rec["session_id"]) == ("u-5", "sess-1")
    meta = rec["metadata"]
    assert meta["llm.provider"] == "openai" and meta["llm.token_count.total"] == 30
    assert not any(k.startswith(("input.", "output.", "llm.input_messages")) for k in meta)
    decoded(conv)


def test_openinference_text_values_only() -> None:
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "d7ad6b7169203331", "name": "llm",
        "attributes": [
            {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
            {"key": "llm.model_name", "value": {"stringValue": "local"}},
            {"key": "input.value", "value": {"stringValue": "2+2?"}},
            {"key": "output.value", "value": {"stringValue": "4"}},
            {"key": "llm.finish_reason", "value": {"stringValue": "stop"}}]}]}]}]}
    (rec,) = convert("otlp", json.dumps(body).encode()).records
    assert (rec["prompt"], rec["response"], rec["finish_reason"]) == ("2+2?", "4", "stop")
    assert "timestamp" not in rec and "latency_ms" not in rec  # no times on the span: none made up


# --- malformed OTLP bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "body", "ct", "reason"),
    [
        ("otlp", b"\xff\xff\xff\xff", PB, "invalid_protobuf"),
        ("otlp", b"{not json", JSON, "invalid_json"),
        ("otlp", b"[1, 2]", JSON, "invalid_otlp"),
        ("otlp", b'{"resourceSpans": 5}', JSON, "invalid_otlp"),
        ("otlp", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": []}]}]}]}', JSON, "invalid_otlp"),
        ("otlp_logs", b"\x0a\xff\xff", PB, "invalid_protobuf"),
        ("otlp_logs", b'{"resourceLogs": "x"}', None, "invalid_otlp"),
    ],
)
def test_malformed_otlp_body(fmt: Any, body: bytes, ct: str | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as ei:
        convert(fmt, body, content_type=ct)
    assert ei.value.reason == reason and ei.value.detail


# --- OTLP logs ---------------------------------------------------------------------------------------


def test_otlp_logs_per_message_events_join_the_span_record() -> None:
    conv = convert("otlp_logs", fixture("otlp_logs_genai.json"))
    rec = by_id(conv)[SEMCONV_ID]  # the same request_id as the span of the traces fixture
    assert rec["messages"] == [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "What is drift?"}]
    assert (rec["response"], rec["finish_reason"]) == ("A change in distribution.", "stop")
    assert rec["timestamp"] == "2024-05-01T11:00:00.100Z"
    # only what the log knows: no model, tokens or latency made up (the span's record has them)
    assert not {"model_id", "tokens_in", "tokens_out", "latency_ms"} & rec.keys()
    assert rec["metadata"]["source_format"] == "otlp_logs" and rec["metadata"]["gen_ai.system"] == "openai"


def test_otlp_logs_operation_details_event_with_structured_attributes() -> None:
    conv = convert("otlp_logs", fixture("otlp_logs_genai.json"))
    rec = by_id(conv)["otel-5b8efff798038103d269b633813fc60c-2122232425262728"]
    assert rec["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]
    assert (rec["response"], rec["finish_reason"]) == ("Hi there", "stop")
    assert (rec["model_id"], rec["tokens_in"], rec["tokens_out"]) == ("gpt-4o-2024-08-06", 12, 3)
    assert rec["metadata"]["gen_ai.request.model"] == "gpt-4o"


def test_otlp_logs_evaluations_skips_and_orphans() -> None:
    conv = convert("otlp_logs", fixture("otlp_logs_genai.json"))
    fbs = {f["metadata"]["evaluation.name"]: f for f in conv.records if f.get("type") == "feedback"}
    assert fbs["helpfulness"]["request_id"] == SEMCONV_ID
    assert (fbs["helpfulness"]["score"], fbs["helpfulness"]["comment"]) == (0.25, "too short")
    # no span context: joins an openai-format record by the response id; a label-only result is a comment
    assert fbs["toxicity"]["request_id"] == "chatcmpl-abc123" and fbs["toxicity"]["comment"] == "clean"
    assert "score" not in fbs["toxicity"]
    assert conv.skipped == 1  # the plain "cache warmed" log line
    assert conv.rejected == [("missing_span_context",
                              "gen_ai.user.message log record has no span context to join its call")]
    kinds = [k for k, _ in decoded(conv)]
    assert sorted(kinds) == ["feedback", "feedback", "interaction", "interaction"]


def test_otlp_logs_protobuf_equals_json() -> None:
    raw = fixture("otlp_logs_genai.json")
    pb = to_protobuf(raw, ExportLogsServiceRequest())
    assert convert("otlp_logs", pb, content_type=PB) == convert("otlp_logs", raw, content_type=JSON)


def test_otlp_logs_from_the_sdk_logger() -> None:
    """Log records emitted through the real OTel SDK inside a span, encoded by the exporter's encoder."""
    from opentelemetry._logs import LogRecord
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider

    exp = InMemoryLogRecordExporter()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(exp))
    logger = lp.get_logger("test")
    with TracerProvider().get_tracer("t").start_as_current_span("chat m") as span:
        ctx = span.get_span_context()
        logger.emit(LogRecord(event_name="gen_ai.user.message", body={"content": "hi"}))
        logger.emit(LogRecord(event_name="gen_ai.choice",
                              body={"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "yo"}}))
    conv = convert("otlp_logs", encode_logs(exp.get_finished_logs()).SerializeToString(), content_type=PB)
    (rec,) = conv.records
    assert rec["request_id"] == f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}"
    assert (rec["messages"], rec["response"], rec["finish_reason"]) == ([{"role": "user", "content": "hi"}], "yo",
                                                                         "stop")
    decoded(conv, now=datetime.now(UTC))


# --- OpenAI ------------------------------------------------------------------------------------------


def test_openai_chat_pair() -> None:
    conv = convert("openai", fixture("openai_pairs.json"))
    rec = by_id(conv)["chatcmpl-abc123"]
    assert rec["messages"] == [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "What is drift?"}]
    assert (rec["response"], rec["finish_reason"], rec["model_id"]) == ("A change in distribution.", "stop",
                                                                       "gpt-4o-mini-2024-07-18")
    assert (rec["tokens_in"], rec["tokens_out"], rec["latency_ms"]) == (42, 7, 812.5)
    assert (rec["user_id"], rec["session_id"]) == ("user-17", "conv-9")
    assert rec["timestamp"] == "2024-05-01T11:00:00.000Z"
    meta = rec["metadata"]
    assert meta["source_format"] == "openai" and meta["request.temperature"] == 0.2
    assert meta["request.model"] == "gpt-4o-mini" and meta["gateway"] == "kong"
    assert meta["route"] == "/v1/chat/completions" and meta["request.metadata.team"] == "support"


def test_openai_responses_api_and_legacy_completions() -> None:
    conv = convert("openai", fixture("openai_pairs.json"))
    resp = by_id(conv)["resp_67ccd2bed1ec8190"]
    assert resp["messages"] == [{"role": "system", "content": "Answer in one word."},
                                {"role": "user", "content": "Capital of France?"}]
    assert (resp["response"], resp["finish_reason"]) == ("Paris", "completed")
    assert (resp["tokens_in"], resp["tokens_out"], resp["model_id"]) == (20, 2, "gpt-4.1-2025-04-14")
    assert resp["timestamp"] == "2024-05-01T11:00:01Z"  # the item's own timestamp wins over created_at
    legacy = by_id(conv)["cmpl-9"]
    assert (legacy["prompt"], legacy["response"], legacy["finish_reason"]) == ("Say hi", "Hi!", "length")


def test_openai_malformed_items_are_rejected_rest_kept() -> None:
    conv = convert("openai", fixture("openai_pairs.json"))
    assert len(conv.records) == 3
    assert [r for r, _ in conv.rejected] == ["invalid_item", "invalid_item"]
    assert "item 3" in conv.rejected[0][1] and "'response'" in conv.rejected[1][1]
    decoded(conv)


def test_openai_ndjson() -> None:
    conv = convert("openai", fixture("openai_pairs.ndjson"))
    assert sorted(by_id(conv)) == ["c-1", "c-2", "resp_3"]
    assert conv.rejected[0][0] == "invalid_json_line" and "line 3" in conv.rejected[0][1]
    c2 = by_id(conv)["c-2"]
    assert "tokens_in" not in c2 and c2["metadata"]["invalid.tokens_in"] == "lots"
    r3 = by_id(conv)["resp_3"]
    assert (r3["messages"], r3["response"], r3["finish_reason"]) == ([{"role": "user", "content": "three"}], "th",
                                                                     "max_output_tokens")
    decoded(conv)


def test_openai_single_object_without_id_gets_a_stable_content_id() -> None:
    pair = {"request": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
            "response": {"model": "m", "choices": [{"message": {"role": "assistant", "content": "y"}}]}}
    a = convert("openai", json.dumps(pair).encode())
    b = convert("openai", json.dumps(pair, indent=2).encode())
    assert a.records[0]["request_id"].startswith("openai-")
    assert a.records[0]["request_id"] == b.records[0]["request_id"]  # a replay is stored once


# --- LiteLLM -----------------------------------------------------------------------------------------


def test_litellm_array() -> None:
    conv = convert("litellm", fixture("litellm_payloads.json"))
    assert conv.skipped == 1  # the embedding call
    assert [r for r, _ in conv.rejected] == ["invalid_item"]
    ok = by_id(conv)["a3c8e1f2-6b4d-4f7e-9a2b-1c5d8e9f0a1b"]
    assert ok["messages"] == [{"role": "system", "content": "You are terse."},
                              {"role": "user", "content": "What is drift?"}]
    assert (ok["response"], ok["finish_reason"], ok["model_id"]) == ("A change in distribution.", "stop",
                                                                     "gpt-4o-mini")
    assert (ok["tokens_in"], ok["tokens_out"]) == (42, 7)
    assert ok["latency_ms"] == pytest.approx(812.5)
    assert ok["timestamp"] == "2024-05-01T11:00:00.000Z"
    assert (ok["user_id"], ok["session_id"]) == ("user-17", "conv-9")
    meta = ok["metadata"]
    assert meta["source_format"] == "litellm" and meta["model_group"] == "chat-small"
    assert meta["response.id"] == "chatcmpl-abc123" and meta["model_parameters.temperature"] == 0.2
    assert meta["metadata.user_api_key_alias"] == "support-key"
    assert "10.0.0.7" not in json.dumps(meta) and "private" not in json.dumps(meta)  # personal data stays out
    failed = by_id(conv)["b1b2b3b4-0000-4000-8000-000000000002"]
    assert "response" not in failed and failed["latency_ms"] == 30000.0
    assert failed["metadata"]["status"] == "failure" and failed["metadata"]["error.error_class"] == "Timeout"
    decoded(conv)


def test_litellm_ndjson() -> None:
    conv = convert("litellm", fixture("litellm_payloads.ndjson"))
    assert sorted(by_id(conv)) == ["n-1", "n-2"] and not conv.rejected
    n1, n2 = by_id(conv)["n-1"], by_id(conv)["n-2"]
    assert (n1["response"], n1["user_id"], n1["latency_ms"]) == ("pong", "u-1", 500.0)
    assert "tokens_in" not in n2 and n2["metadata"]["invalid.tokens_in"] == "-1"
    decoded(conv)


# --- v1 passthrough and whole-body errors ------------------------------------------------------------


def test_v1_object_array_and_ndjson() -> None:
    one = {"request_id": "r-1", "prompt": "hi"}
    assert convert("v1", json.dumps(one).encode()).records == [one]
    arr = convert("v1", json.dumps([one, 5, {"type": "feedback", "request_id": "r-1", "score": 1}]).encode())
    assert len(arr.records) == 2 and arr.rejected[0][0] == "invalid_item"
    nd = convert("v1", b'{"request_id": "a", "prompt": "x"}\n{"request_id": "b", "prompt": "y"}\n')
    assert [r["request_id"] for r in nd.records] == ["a", "b"]
    decoded(arr)


@pytest.mark.parametrize(
    ("fmt", "body", "reason"),
    [
        ("openai", b"", "empty_body"),
        ("openai", b"not json", "invalid_json"),
        ("openai", b"42", "invalid_openai"),
        ("openai", b'"text"', "invalid_openai"),
        ("litellm", b"{oops\n{oops", "invalid_json"),
        ("litellm", b"true", "invalid_litellm"),
        ("v1", b"null", "invalid_v1"),
    ],
)
def test_malformed_json_body(fmt: Any, body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as ei:
        convert(fmt, body)
    assert ei.value.reason == reason and ei.value.detail


def _span_body(attributes: dict[str, Any], events: list[dict[str, Any]] | None = None) -> bytes:
    def av(v: Any) -> dict[str, Any]:
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}

    span = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "e7ad6b7169203331", "name": "s",
            "attributes": [{"key": k, "value": av(v)} for k, v in attributes.items()],
            "events": [{"name": e["name"], "attributes": [{"key": k, "value": av(v)} for k, v in e["attrs"].items()]}
                       for e in events or []]}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def test_older_content_forms_on_spans() -> None:
    indexed = _span_body({"gen_ai.request.model": "m", "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "S",
                          "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "U",
                          "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "A",
                          "gen_ai.completion.0.finish_reason": "stop", "gen_ai.usage.prompt_tokens": 5,
                          "gen_ai.usage.completion_tokens": 1})
    (rec,) = convert("otlp", indexed).records
    assert rec["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert (rec["response"], rec["finish_reason"], rec["tokens_in"], rec["tokens_out"]) == ("A", "stop", 5, 1)
    assert not any(k.startswith(("gen_ai.prompt", "gen_ai.completion")) for k in rec["metadata"])
    events = _span_body({"gen_ai.request.model": "m"}, [
        {"name": "gen_ai.content.prompt", "attrs": {"gen_ai.prompt": '[{"role": "user", "content": "Q"}]'}},
        {"name": "gen_ai.content.completion", "attrs": {"gen_ai.completion": '[{"role": "assistant", "content": "R"}]'}},
    ])
    (rec,) = convert("otlp", events).records
    assert (rec["messages"], rec["response"]) == ([{"role": "user", "content": "Q"}], "R")
    per_message = _span_body({"gen_ai.operation.name": "chat"}, [
        {"name": "gen_ai.user.message", "attrs": {"content": "hello"}},
        {"name": "gen_ai.choice", "attrs": {"gen_ai.event.content": '{"index": 0, "finish_reason": "stop", '
                                                                    '"message": {"content": "hey"}}'}},
    ])
    (rec,) = convert("otlp", per_message).records
    assert (rec["messages"], rec["response"], rec["finish_reason"]) == ([{"role": "user", "content": "hello"}], "hey",
                                                                         "stop")
    decoded(convert("otlp", per_message))


def test_span_attributes_win_over_events_without_duplicating() -> None:
    body = _span_body({"gen_ai.operation.name": "chat",
                       "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"attr"}]}]'},
                      [{"name": "gen_ai.user.message", "attrs": {"content": "event"}}])
    (rec,) = convert("otlp", body).records
    assert rec["messages"] == [{"role": "user", "content": "attr"}]


# --- payloads captured from the real instrumentations (tests/fixtures/otlp_captured, see record.py there) ----


def _writer_merge(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records by request_id, a later record filling only empty fields (what the writer does with them)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "feedback":
            continue
        cur = out.setdefault(r["request_id"], {})
        for k, v in r.items():
            if cur.get(k) in (None, "", []):
                cur[k] = v
    return out


@pytest.mark.parametrize("config", ["v2-nocontent", "v2-content-legacy", "v2-latest-span-only",
                                    "v2-latest-event-only", "openinference"])
def test_captured_real_instrumentation_payloads(config: str) -> None:
    calls_file = CAPTURED / f"{config}-calls.json"
    if not calls_file.exists():
        pytest.skip(f"{calls_file.name} not recorded (tests/fixtures/otlp_captured/record.py)")
    from tests.otel_capture import CONFIGS

    calls = json.loads(calls_file.read_text())
    converted: list[Converted] = []
    exported = ""  # everything the instrumentation sent, to know whether it exported content at all
    pbs = sorted(CAPTURED.glob(f"{config}-*-*.pb"))
    logs = [p.read_bytes() for p in pbs if "-logs-" in p.name]
    # the capture exports one log record per POST; a batch exporter sends a call's events together, which is
    # what joins them into one record (protobuf: concatenated requests are one request with all their logs)
    batches = [b"".join(logs)] if logs else []
    for pb in pbs:
        fmt: TopicFormat = "otlp" if "-traces-" in pb.name else "otlp_logs"
        exported += pb.with_suffix(".json").read_text() if pb.with_suffix(".json").exists() else ""
        conv = convert(fmt, pb.read_bytes(), content_type=PB)
        assert not conv.rejected, (pb.name, conv.rejected)
        twin = pb.with_suffix(".json")  # the same request as protobuf's JSON mapping (base64 ids)
        if twin.exists():
            assert convert(fmt, twin.read_bytes(), content_type=JSON) == conv
        decoded(conv, now=datetime.now(UTC))
        if fmt == "otlp":
            converted.append(conv)
    for body in batches:
        converted.append(convert("otlp_logs", body, content_type=PB))
    merged = _writer_merge([r for c in converted for r in c.records])
    spans = sorted((r for r in merged.values() if "latency_ms" in r), key=lambda r: r["timestamp"])
    assert len(spans) == len(calls), f"one LLM span record per call, got {len(spans)} for {len(calls)}"
    # content is asserted where the instrumentation exported it (the user's text is in the payload)
    content = all(c["user"] in exported for c in calls)
    assert content == CONFIGS[config].content, "the configuration exports content iff it says so"
    for call, rec in zip(calls, spans, strict=True):
        assert rec["request_id"].startswith("otel-")
        assert rec["model_id"].startswith("toy-chat")
        assert (rec["tokens_in"], rec["tokens_out"]) == (call["tokens_in"], call["tokens_out"])
        # openai-v2 records no finish reason for a streamed call; where a span has one, it is the server's
        if not (call["stream"] and config.startswith("v2-")):
            assert rec["finish_reason"] == call["finish_reason"]
        assert rec.get("finish_reason", call["finish_reason"]) == call["finish_reason"]
        assert rec["latency_ms"] > 0
        if content:
            expected = ([{"role": "system", "content": call["system"]}] if call["system"] else [])
            assert rec["messages"] == [*expected, {"role": "user", "content": call["user"]}]
            assert rec["response"] == call["response"]
        else:
            assert rec["messages"] == [] and "response" not in rec


@pytest.mark.parametrize("name", [["gen_ai.user.message"], {"k": "v"}, 7])
def test_otlp_logs_non_string_event_name_is_no_event(name: Any) -> None:
    """An ``event.name`` attribute that is not text (a list or map would be unhashable) is a plain log line."""
    attr = {"key": "event.name", "value": {"arrayValue": {"values": [{"stringValue": name[0]}]}}
            if isinstance(name, list) else {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}
            if isinstance(name, dict) else {"intValue": str(name)}}  # fmt: skip
    body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{
        "timeUnixNano": "1714561200100000000", "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174", "body": {"stringValue": "hi"}, "attributes": [attr]}]}]}]}
    conv = convert("otlp_logs", json.dumps(body).encode(), content_type=JSON)
    assert (conv.records, conv.skipped, conv.rejected) == ([], 1, [])


def test_a_content_part_whose_type_is_not_text_is_skipped_not_a_crash() -> None:
    from driftloop.ingest.formats._common import text_of

    parts = [{"type": ["text"], "text": "x"}, {"type": {"a": 1}, "content": "y"}, {"type": "text", "text": "kept"}]
    assert text_of(parts) == "kept"
    # through a whole OpenAI pair too: the odd part is ignored, the record is still made
    body = json.dumps({"request": {"model": "m", "messages": [{"role": "user", "content": [
        {"type": ["text"], "text": "odd"}, {"type": "text", "text": "hello"}]}]},
        "response": {"id": "chatcmpl-odd", "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]}}).encode()
    out = convert("openai", body)
    assert len(out.records) == 1 and not out.rejected
