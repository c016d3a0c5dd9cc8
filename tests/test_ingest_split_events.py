"""One OTel call whose per-message log events arrive in separate export bodies ends as one whole row.

The SDK's batch log processor usually exports a call's gen_ai.system.message / gen_ai.user.message /
gen_ai.choice events together, but not always (a batch boundary, SimpleLogRecordProcessor). Here each
event is its own otlp_logs message and the span comes on the traces topic, in different orders and
batches; the writer appends the parts in event-time order (real broker Tansu, real PostgreSQL, the
default writer subprocess). Replaying or redelivering everything changes nothing.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from driftloop.broker import ensure_topics
from tests.helpers import make_settings
from tests.ingest_helpers import ingest_until_idle, rows

ck = pytest.importorskip("confluent_kafka")
prometheus = pytest.importorskip("prometheus_client")
pb_common = pytest.importorskip("opentelemetry.proto.common.v1.common_pb2")
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs  # noqa: E402
from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

AnyValue, KeyValue = pb_common.AnyValue, pb_common.KeyValue
KeyValueList, ArrayValue = pb_common.KeyValueList, pb_common.ArrayValue
NOW_NS = time.time_ns() - 3_600 * 10**9  # an hour ago: inside the accepted timestamp range

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _any(v: Any) -> Any:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_any(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=_attrs(v)))
    raise TypeError(v)


def _attrs(d: dict[str, Any]) -> list[Any]:
    return [KeyValue(key=k, value=_any(v)) for k, v in d.items()]


class Call:
    """One chat call: its span and its three per-message log events, each a message of its own."""

    def __init__(self, n: int) -> None:
        self.trace, self.span_id = uuid.uuid4().bytes, (n + 1).to_bytes(8, "big")
        self.rid = f"otel-{self.trace.hex()}-{self.span_id.hex()}"
        self.t = NOW_NS + n * 10**9
        self.system, self.question, self.answer = f"Be brief ({n}).", f"Capital of country {n}?", f"City {n}."

    def span(self) -> bytes:
        a = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7,
             "gen_ai.response.finish_reasons": ["stop"]}  # fmt: skip
        s = Span(trace_id=self.trace, span_id=self.span_id, name="chat gpt-4o", kind=Span.SPAN_KIND_CLIENT,
                 start_time_unix_nano=self.t, end_time_unix_nano=self.t + 800_000_000, attributes=_attrs(a))  # fmt: skip
        http = Span(trace_id=self.trace, span_id=b"\x00" * 7 + b"\xff", name="GET /", start_time_unix_nano=self.t,
                    attributes=_attrs({"http.request.method": "GET"}))  # fmt: skip
        return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=Resource(attributes=_attrs({"service.name": "bot"})),
            scope_spans=[ScopeSpans(spans=[s, http])])]).SerializeToString()  # fmt: skip

    def _log(self, event: str, body: dict[str, Any], dt_ns: int) -> bytes:
        lr = LogRecord(time_unix_nano=self.t + dt_ns, trace_id=self.trace, span_id=self.span_id, event_name=event,
                       body=_any(body), attributes=_attrs({"gen_ai.system": "openai"}))  # fmt: skip
        return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
            resource=Resource(attributes=_attrs({"service.name": "bot"})),
            scope_logs=[ScopeLogs(log_records=[lr])])]).SerializeToString()  # fmt: skip

    def parts(self) -> dict[str, bytes]:
        return {
            "system": self._log("gen_ai.system.message", {"content": self.system}, 1_000),
            "user": self._log("gen_ai.user.message", {"content": self.question}, 2_000),
            "choice": self._log("gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": self.answer}},
                                800_000_000),
        }  # fmt: skip


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors: list[Any] = []
    for v in values:
        p.produce(topic, partition=0, value=v, on_delivery=lambda err, _m: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(60) == 0 and not errors, errors


def _metric(name: str) -> float:
    return prometheus.REGISTRY.get_sample_value(name) or 0.0


def _table(pg_url: str) -> list[Any]:
    return rows(pg_url, "select request_id, ts, model_id, prompt, messages, response, finish_reason, tokens_in, "
                        "latency_ms, metadata, source_topic, source_offset, xmin::text from interactions "
                        "order by request_id")  # fmt: skip


def test_per_message_events_in_separate_bodies_make_one_whole_row(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    traces, logs = f"otlp-{suffix}", f"otlp-logs-{suffix}"
    ensure_topics(kafka_bootstrap, [traces, logs], partitions=1)
    calls = [Call(n) for n in range(3)]
    parts = [c.parts() for c in calls]
    # first run: call 0 in order, call 1 backwards, only the user message of call 2; spans of calls 0, 1
    _produce(kafka_bootstrap, logs, [parts[0]["system"], parts[1]["choice"], parts[0]["user"], parts[1]["user"],
                                     parts[2]["user"], parts[0]["choice"], parts[1]["system"]])  # fmt: skip
    _produce(kafka_bootstrap, traces, [calls[0].span(), calls[1].span()])

    def settings(group: str, batch_size: int) -> Any:
        kafka = {"bootstrap_servers": [kafka_bootstrap], "dlq_topic": topics["dlq"], "group_id": group,
                 "topics": [traces, logs], "topic_formats": {traces: "otlp", logs: "otlp_logs"}}  # fmt: skip
        return make_settings(pg_url, kafka=kafka, ingest={"batch_size": batch_size})

    merged0 = _metric("driftloop_ingest_merged_records_total")
    skipped0 = _metric("driftloop_ingest_skipped_items_total")
    group = f"g-{suffix}"
    s1 = ingest_until_idle(settings(group, 1))  # one message per batch: every part meets a stored row
    # second run: call 2's span, then its choice and system message (the system message last, though earlier)
    _produce(kafka_bootstrap, traces, [calls[2].span()])
    _produce(kafka_bootstrap, logs, [parts[2]["choice"], parts[2]["system"]])
    s2 = ingest_until_idle(settings(group, 1))
    merged = s1.merged + s2.merged
    assert (s1.stored + s2.stored, s1.rejected + s2.rejected, s1.skipped + s2.skipped) == (3, 0, 3)  # 3 HTTP spans
    # the 9 later records of the calls merged (two of one call in one batch may count once)
    assert merged >= 6 and merged + s1.duplicates + s2.duplicates == 9
    assert _metric("driftloop_ingest_merged_records_total") - merged0 == merged
    assert _metric("driftloop_ingest_skipped_items_total") - skipped0 == 3

    table = _table(pg_url)
    assert [r[0] for r in table] == sorted(c.rid for c in calls)
    for c in calls:
        [(_, _, model, prompt, messages, response, finish, tin, latency, meta, _, _, _)] = [
            r for r in table if r[0] == c.rid]  # fmt: skip
        assert messages == [{"role": "system", "content": c.system}, {"role": "user", "content": c.question}]
        assert prompt == f"system: {c.system}\nuser: {c.question}"  # what the decoder renders of both messages
        assert (response, finish, model, tin, latency) == (c.answer, "stop", "gpt-4o", 11, 800.0)
        assert meta["otel.message_times"] == [c.t + 1_000, c.t + 2_000] and meta["service.name"] == "bot"

    # replays change nothing: everything again under a new group (one big batch), and redelivered to the old one
    s3 = ingest_until_idle(settings(f"{group}-replay", 7500))
    assert (s3.consumed, s3.stored, s3.merged, s3.duplicates) == (12, 0, 0, 12)
    _produce(kafka_bootstrap, logs, [p for call_parts in parts for p in call_parts.values()])
    _produce(kafka_bootstrap, traces, [c.span() for c in calls])
    s4 = ingest_until_idle(settings(group, 7500))
    assert (s4.consumed, s4.stored, s4.merged, s4.duplicates) == (12, 0, 0, 12)
    assert _table(pg_url) == table  # not even rewritten (xmin)
