"""Per-topic formats (kafka.topic_formats): OTLP traces/logs, LiteLLM and OpenAI shapes written straight to Kafka.

Real broker (Tansu), real PostgreSQL, a real librdkafka producer (gzip and zstd batches), OTLP messages
built with the opentelemetry-proto classes. Malformed messages of every format sit between good ones:
each becomes a reject with its reason (and a dead-letter copy), every good record is stored exactly once
(an OTel call whose content arrives as a log record joins its span's row), offsets end past everything.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from driftloop.broker import ensure_topics
from tests.helpers import make_settings
from tests.ingest_helpers import ingest_until_idle, read_topic, rows, scalar

ck = pytest.importorskip("confluent_kafka")
pb_common = pytest.importorskip("opentelemetry.proto.common.v1.common_pb2")
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs  # noqa: E402
from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

AnyValue, KeyValue, ArrayValue = pb_common.AnyValue, pb_common.KeyValue, pb_common.ArrayValue
NOW_NS = time.time_ns() - 3_600 * 10**9  # an hour ago: inside the accepted timestamp range


def _any(v: Any) -> Any:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_any(x) for x in v]))
    raise TypeError(v)


def _attrs(d: dict[str, Any]) -> list[Any]:
    return [KeyValue(key=k, value=_any(v)) for k, v in d.items()]


def _ids(n: int) -> tuple[bytes, bytes]:
    return uuid.uuid4().bytes, (n + 1).to_bytes(8, "big")


def _rid(ids: tuple[bytes, bytes]) -> str:
    return f"otel-{ids[0].hex()}-{ids[1].hex()}"


def _input(q: str) -> str:
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": q}]}])


def _output(a: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": a}], "finish_reason": "stop"}])


def _chat_span(ids: tuple[bytes, bytes], model: str, content: tuple[str, str] | None, at_ns: int) -> Any:
    a: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                         "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 11,
                         "gen_ai.usage.output_tokens": 7, "gen_ai.response.finish_reasons": ["stop"]}  # fmt: skip
    if content is not None:
        a["gen_ai.input.messages"], a["gen_ai.output.messages"] = _input(content[0]), _output(content[1])
    return Span(trace_id=ids[0], span_id=ids[1], name=f"chat {model}", kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=at_ns, end_time_unix_nano=at_ns + 800_000_000, attributes=_attrs(a))  # fmt: skip


def _traces(*spans: Any) -> bytes:
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=_attrs({"service.name": "shop-bot"})),
        scope_spans=[ScopeSpans(spans=list(spans))])])  # fmt: skip
    return req.SerializeToString()


def _logs(*records: Any) -> bytes:
    req = ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=_attrs({"service.name": "shop-bot"})),
        scope_logs=[ScopeLogs(log_records=list(records))])])  # fmt: skip
    return req.SerializeToString()


def _details_log(ids: tuple[bytes, bytes], q: str, a: str) -> Any:
    """The content of a call, logged apart from its span (gen_ai.client.inference.operation.details)."""
    return LogRecord(time_unix_nano=NOW_NS + 5_000_000_000, trace_id=ids[0], span_id=ids[1],
                     event_name="gen_ai.client.inference.operation.details",
                     attributes=_attrs({"gen_ai.input.messages": _input(q), "gen_ai.output.messages": _output(a)}))  # fmt: skip


def _litellm(i: int) -> dict[str, Any]:
    t = NOW_NS / 1e9 + i
    return {"id": f"litellm-{i}", "call_type": "acompletion", "model": "claude-3-5-haiku", "startTime": t,
            "endTime": t + 1.25, "messages": [{"role": "user", "content": f"litellm question {i}"}],
            "response": {"id": f"chatcmpl-l{i}", "object": "chat.completion", "model": "claude-3-5-haiku",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": f"litellm answer {i}"}}]},
            "prompt_tokens": 9, "completion_tokens": 4}  # fmt: skip


def _openai(i: int) -> bytes:
    return json.dumps({
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"openai question {i}"}]},
        "response": {"id": f"chatcmpl-o{i}", "object": "chat.completion", "created": int(NOW_NS / 1e9),
                     "model": "gpt-4o-mini-2024-07-18",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": f"openai answer {i}"}}],
                     "usage": {"prompt_tokens": 6, "completion_tokens": 3}},
    }).encode()  # fmt: skip


def _produce(bootstrap: str, topic: str, values: list[bytes], **conf: Any) -> None:
    """librdkafka producer, partition 0, in order."""
    p = ck.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20, **conf})
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for v in values:
        p.produce(topic, partition=0, value=v, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(60) == 0 and not errors, errors


@pytest.fixture
def fmt_topics(kafka_bootstrap: str, topics: dict[str, str]) -> dict[str, str]:
    """The test's v1 and DLQ topics plus one fresh topic per mapped format."""
    suffix = uuid.uuid4().hex[:8]
    extra = {f: f"{f}-{suffix}" for f in ("otlp", "otlp_logs", "litellm", "openai")}
    ensure_topics(kafka_bootstrap, extra.values(), partitions=1)
    return {**topics, **extra}


@pytest.mark.parametrize("pipeline", ["process", "thread"])
def test_mapped_formats_store_each_call_once_and_reject_malformed_messages(
    pg_url: str, kafka_bootstrap: str, fmt_topics: dict[str, str], pipeline: str
) -> None:
    t = fmt_topics
    a_ids, b_ids = [_ids(i) for i in range(3)], [_ids(10 + i) for i in range(2)]
    http_span = Span(trace_id=a_ids[0][0], span_id=b"\x00\x00\x00\x00\x00\x00\x01\xff", name="GET /cart",
                     start_time_unix_nano=NOW_NS, end_time_unix_nano=NOW_NS + 10**6,
                     attributes=_attrs({"http.request.method": "GET"}))  # fmt: skip
    bad_ctx = Span(trace_id=b"\x01" * 8, span_id=b"\x02" * 8, name="chat x", start_time_unix_nano=NOW_NS,
                   attributes=_attrs({"gen_ai.operation.name": "chat"}))  # fmt: skip
    # (a) traces: three calls with content + a non-LLM span (gzip); two calls whose content is logged
    # apart + a span with a broken context (zstd); a truncated protobuf and a non-OTLP JSON between them
    _produce(kafka_bootstrap, t["otlp"], [
        _traces(*[_chat_span(ids, "gpt-4o", (f"question {n}", f"answer {n}"), NOW_NS + n) for n, ids in enumerate(a_ids)],
                http_span),
        b"\x0a\x05ab",  # a length-delimited field longer than the message: invalid protobuf
    ], **{"compression.type": "gzip"})  # fmt: skip
    _produce(kafka_bootstrap, t["otlp"], [
        _traces(*[_chat_span(ids, "gpt-4o-mini", None, NOW_NS + 100 + n) for n, ids in enumerate(b_ids)], bad_ctx),
        b'{"resourceSpans": 7}',  # JSON, but not an ExportTraceServiceRequest
    ], **{"compression.type": "zstd"})  # fmt: skip
    # (b) logs: the content of both b-calls, a per-message event without a span context; then garbage
    orphan = LogRecord(time_unix_nano=NOW_NS, event_name="gen_ai.user.message",
                       body=AnyValue(string_value="no span to join"))  # fmt: skip
    _produce(kafka_bootstrap, t["otlp_logs"], [
        _logs(*[_details_log(ids, f"logged question {n}", f"logged answer {n}") for n, ids in enumerate(b_ids)],
              orphan),
        b"\xff\xfe\x00not protobuf",
    ], **{"compression.type": "zstd"})  # fmt: skip
    # (c) LiteLLM NDJSON with one bad line; a string body; a JSON array
    _produce(kafka_bootstrap, t["litellm"], [
        b"\n".join([json.dumps(_litellm(0)).encode(), b"{not json", json.dumps(_litellm(1)).encode()]),
        b'"just a string"',
        json.dumps([_litellm(2), {**_litellm(3), "call_type": "embedding"}]).encode(),
    ], **{"compression.type": "gzip"})  # fmt: skip
    # (d) OpenAI request/response pairs around a body that is not JSON
    _produce(kafka_bootstrap, t["openai"], [_openai(0), b"not json at all", _openai(1)])

    kafka = {"bootstrap_servers": [kafka_bootstrap], "dlq_topic": t["dlq"], "group_id": f"g-{t['logs']}",
             "topics": [t["logs"], t["otlp"], t["otlp_logs"], t["litellm"], t["openai"]],
             "topic_formats": {t[f]: f for f in ("otlp", "otlp_logs", "litellm", "openai")}}  # fmt: skip
    settings = make_settings(pg_url, kafka=kafka, ingest={"pipeline": pipeline, "workload": {"default": "shop"}})
    stats = ingest_until_idle(settings)
    assert stats.pipeline == pipeline  # "process": the spawned writer got the topic formats with its settings

    # every good record exactly once; the b-calls are one row each, span facts + logged content
    stored = {r[0]: r for r in rows(pg_url, "select request_id, model_id, prompt, response, tokens_in, tokens_out, "
                                            "latency_ms, source_topic, metadata from interactions")}  # fmt: skip
    expected = ({_rid(i) for i in a_ids + b_ids} | {f"litellm-{i}" for i in range(3)}
                | {"chatcmpl-o0", "chatcmpl-o1"})  # fmt: skip
    assert set(stored) == expected
    assert scalar(pg_url, "select count(*) from interactions") == len(expected)
    assert scalar(pg_url, "select count(*) from interactions where workload = 'shop'") == len(expected)
    for n, ids in enumerate(b_ids):
        _, model, prompt, response, tin, tout, latency, topic, _ = stored[_rid(ids)]
        assert (model, tin, tout, latency) == ("gpt-4o-mini", 11, 7, 800.0)  # the span's
        assert topic in (t["otlp"], t["otlp_logs"])  # the first to arrive (the topics are read in parallel)
        assert (prompt, response) == (f"user: logged question {n}", f"logged answer {n}")  # the log's
    for n, ids in enumerate(a_ids):
        assert stored[_rid(ids)][2:4] == (f"user: question {n}", f"answer {n}")
    assert stored["litellm-1"][1:4] == ("claude-3-5-haiku", "user: litellm question 1", "litellm answer 1")
    assert stored["chatcmpl-o1"][3] == "openai answer 1"
    assert stats.merged == 2 and stats.skipped == 2  # two logged contents joined; the HTTP span, the embedding

    # each malformed message or item: a reject with its reason, and a dead-letter copy
    rejects = rows(pg_url, "select source_topic, source_offset, reason from rejected_messages "
                           "order by source_topic, source_offset, reason")  # fmt: skip
    assert sorted(rejects) == sorted([
        (t["otlp"], 1, "invalid_protobuf"), (t["otlp"], 2, "invalid_span_context"), (t["otlp"], 3, "invalid_otlp"),
        (t["otlp_logs"], 0, "missing_span_context"), (t["otlp_logs"], 1, "invalid_protobuf"),
        (t["litellm"], 0, "invalid_json_line"), (t["litellm"], 1, "invalid_litellm"),
        (t["openai"], 1, "invalid_json"),
    ])  # fmt: skip
    assert stats.rejected == len(rejects)
    dlq = read_topic(kafka_bootstrap, t["dlq"], expect=len(rejects))
    assert len(dlq) == len(rejects)
    by_reason = {dict(m.headers)["dlq.reason"].decode(): m for m in dlq}
    assert by_reason["invalid_protobuf"].value in (b"\x0a\x05ab", b"\xff\xfe\x00not protobuf")
    item = by_reason["invalid_span_context"]  # an item of a good message: the item, not the whole batch
    assert dict(item.headers)["dlq.item"] == b"mapper-error" and dict(item.headers)["dlq.source.format"] == b"otlp"
    assert json.loads(item.value)["reason"] == "invalid_span_context"
    assert by_reason["invalid_json"].value == b"not json at all"

    # offsets committed past every message of every topic
    offsets = dict(rows(pg_url, "select topic, sum(next_offset) from consumer_offsets group by topic"))
    assert {k: int(v) for k, v in offsets.items()} == {t["otlp"]: 4, t["otlp_logs"]: 2, t["litellm"]: 3,
                                                       t["openai"]: 3}  # fmt: skip
    assert stats.consumed == 12

