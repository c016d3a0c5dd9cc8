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
