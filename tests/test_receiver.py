"""The HTTP front door (driftloop.api.receiver, routes/ingest.py) against the real broker: OTLP/HTTP per the spec
(protobuf, JSON, gzip, partial success, google.rpc.Status errors), /v1/ingest/{format}, limits, auth, the
broker being down, and spans POSTed by the OTel SDK's exporter ending up as one interactions row each."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from sqlalchemy import create_engine

from driftloop.api import create_app
from driftloop.broker import free_port
from driftloop.settings import Settings
from tests.helpers import make_settings
from tests.ingest_helpers import ingest_until_idle, read_topic, rows

INGEST = "ingest-token-" + "i" * 20
ADMIN = "admin-token-" + "a" * 20
READ = "read-token-" + "r" * 20
REVIEW = "review-token-" + "v" * 20
PB = "application/x-protobuf"
TOKENS = [{"name": "collector", "token": INGEST, "role": "ingest"}, {"name": "admin", "token": ADMIN, "role": "admin"},
          {"name": "viewer", "token": READ, "role": "read"}, {"name": "reviewer", "token": REVIEW, "role": "review"}]  # fmt: skip


def auth(token: str = INGEST, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def kv(k: str, v: str | int) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v))


def genai_span(i: int, model: str = "gpt-4o-mini") -> Span:
    """A GenAI semconv chat span with content (as opentelemetry-instrumentation-openai-v2 writes it)."""
    inp = [{"role": "user", "parts": [{"type": "text", "content": f"question {i}: the capital of France?"}]}]
    out = [{"role": "assistant", "parts": [{"type": "text", "content": f"Paris ({i})."}], "finish_reason": "stop"}]
    return Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"chat {model}", kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_400_000_000 + i,
                attributes=[kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                            kv("gen_ai.request.model", model), kv("gen_ai.usage.input_tokens", 12),
                            kv("gen_ai.usage.output_tokens", 3), kv("gen_ai.input.messages", json.dumps(inp)),
                            kv("gen_ai.output.messages", json.dumps(out))])  # fmt: skip


def export(*spans: Span) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])])


def otel_id(s: Span) -> str:
    return f"otel-{s.trace_id.hex()}-{s.span_id.hex()}"


def settings(topics: dict[str, str], bootstrap: str, db: str | None = None, **receiver: Any) -> Settings:
    return make_settings(db, bootstrap=bootstrap, topics=topics,
                         api={"tokens": TOKENS, "receiver": receiver})  # fmt: skip


@pytest.fixture
def client(kafka_bootstrap: str, topics: dict[str, str]) -> Iterator[TestClient]:
    """The API (receiver on, limits small enough to hit) over a throwaway SQLite engine: no route here reads it."""
    s = settings(topics, kafka_bootstrap, max_body_bytes=64 * 1024, max_records=20, produce_timeout_s=10)
    app = create_app(s, create_engine("sqlite://"))
    with TestClient(app) as c:
        yield c
    app.state.receiver.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """The sum of ``topic``'s end offsets: 0 proves nothing was produced, without waiting (Tansu's end offset
    of a partition is not always its message count, so counts are read with ``read_topic``)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, allow_auto_create_topics=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        return sum(c.end_offsets(parts).values())
    finally:
        c.close()


# -- OTLP/HTTP -------------------------------------------------------------------------------------------------
def test_gzip_protobuf_spans_are_in_kafka_before_the_answer(client: TestClient, kafka_bootstrap: str,
                                                            topics: dict[str, str]) -> None:  # fmt: skip
    spans = [genai_span(i) for i in range(5)]
    other = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="SELECT users")  # not an LLM call: skipped
    body = gzip.compress(export(*spans, other).SerializeToString())
    r = client.post("/v1/traces", content=body, headers=auth(**{"Content-Type": PB, "Content-Encoding": "gzip"}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == PB
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert not resp.HasField("partial_success")  # the spec: unset on full success
    # acknowledged means produced: the messages are there now (the read only collects them)
    assert topic_size(kafka_bootstrap, topics["logs"]) > 0
    msgs = read_topic(kafka_bootstrap, topics["logs"], expect=5)
    assert {m.key.decode() for m in msgs} == {otel_id(s) for s in spans}
    recs = {m.key.decode(): json.loads(m.value) for m in msgs}
    rec = recs[otel_id(spans[3])]
    assert rec["request_id"] == otel_id(spans[3]) and rec["response"] == "Paris (3)."
    assert rec["messages"] == [{"role": "user", "content": "question 3: the capital of France?"}]
    m = client.get("/metrics").text
    assert 'driftloop_receiver_records_total{format="otlp",outcome="produced"}' in m
    assert 'driftloop_receiver_requests_total{format="otlp",status="200"}' in m


def test_otlp_json_and_partial_success(client: TestClient, kafka_bootstrap: str, topics: dict[str, str]) -> None:
    good, bad = genai_span(1), genai_span(2)
    bad.span_id = b"\x01\x02\x03"  # a span id must be 8 bytes: this span is rejected, the other accepted
    # OTLP/JSON: camelCase, hex ids (not protobuf's base64)
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": s.trace_id.hex(), "spanId": s.span_id.hex(), "name": s.name, "kind": 3,
         "startTimeUnixNano": str(s.start_time_unix_nano), "endTimeUnixNano": str(s.end_time_unix_nano),
         "attributes": [{"key": a.key, "value": {"intValue": str(a.value.int_value)} if a.value.HasField("int_value")
                         else {"stringValue": a.value.string_value}} for a in s.attributes]}
        for s in (good, bad)]}]}]}  # fmt: skip
    r = client.post("/v1/traces", json=body, headers=auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    ps = r.json()["partialSuccess"]
    assert int(ps["rejectedSpans"]) == 1 and "1 rejected" in ps["errorMessage"]
    msgs = read_topic(kafka_bootstrap, topics["logs"], expect=1)
    assert [m.key.decode() for m in msgs] == [otel_id(good)]
    # the same in protobuf
    r = client.post("/v1/traces", content=export(genai_span(3), bad).SerializeToString(),
                    headers=auth(**{"Content-Type": PB}))  # fmt: skip
    assert r.status_code == 200
    assert ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans == 1


def test_an_empty_export_request_is_a_success(client: TestClient) -> None:
    r = client.post("/v1/traces", content=b"", headers=auth(**{"Content-Type": PB}))
    assert r.status_code == 200, r.text
    assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")


def test_malformed_bodies_get_400_with_a_status_in_the_request_encoding(client: TestClient, kafka_bootstrap: str,
                                                                        topics: dict[str, str]) -> None:  # fmt: skip
    r = client.post("/v1/traces", content=b"\xff\xff\xff not protobuf", headers=auth(**{"Content-Type": PB}))
    assert r.status_code == 400 and r.headers["content-type"] == PB
    st = Status.FromString(r.content)
    assert st.code == 3 and st.message  # INVALID_ARGUMENT, and what was wrong
    r = client.post("/v1/logs", content=b"{not json", headers=auth(**{"Content-Type": "application/json"}))
    assert r.status_code == 400 and r.json()["code"] == 3 and r.json()["message"]
    r = client.post("/v1/traces", content=b"\x1f\x8b\x08 truncated gzip",
                    headers=auth(**{"Content-Type": PB, "Content-Encoding": "gzip"}))  # fmt: skip
    assert r.status_code == 400 and "gzip" in Status.FromString(r.content).message
    assert topic_size(kafka_bootstrap, topics["logs"]) == 0


# -- limits ----------------------------------------------------------------------------------------------------
def test_size_limits_give_413_and_produce_nothing(client: TestClient, kafka_bootstrap: str,
                                                  topics: dict[str, str]) -> None:  # fmt: skip
    h = auth(**{"Content-Type": PB})
    big = b"\x00" * (64 * 1024 + 1)
    r = client.post("/v1/traces", content=big, headers=h)  # Content-Length over the cap: refused before reading
    assert r.status_code == 413 and "max_body_bytes" in Status.FromString(r.content).message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(80):
            yield b"\x00" * 1024

    r = client.post("/v1/traces", content=chunks(), headers=h)
    assert "content-length" not in r.request.headers and r.status_code == 413
    bomb = gzip.compress(b"\x00" * (10 * 1024 * 1024))  # 10 KB on the wire, 10 MB inflated
    assert len(bomb) < 64 * 1024
    r = client.post("/v1/traces", content=bomb, headers={**h, "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in Status.FromString(r.content).message
    many = export(*[genai_span(i) for i in range(21)]).SerializeToString()  # max_records is 20
    assert len(many) < 64 * 1024
    r = client.post("/v1/traces", content=many, headers=h)
    assert r.status_code == 413 and "max_records" in Status.FromString(r.content).message
    assert topic_size(kafka_bootstrap, topics["logs"]) == 0


def test_unsupported_media_types_give_415(client: TestClient) -> None:
    body = export(genai_span(1)).SerializeToString()
    assert client.post("/v1/traces", content=body, headers=auth(**{"Content-Type": "text/plain"})).status_code == 415
    r = client.post("/v1/traces", content=body, headers=auth(**{"Content-Type": PB, "Content-Encoding": "br"}))
    assert r.status_code == 415 and "Content-Encoding" in Status.FromString(r.content).message
    r = client.post("/v1/ingest/openai", content=body, headers=auth(**{"Content-Type": PB}))
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


# -- /v1/ingest/{format} ---------------------------------------------------------------------------------------
CHAT_RESPONSE = {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}  # fmt: skip


def test_ingest_formats(client: TestClient, kafka_bootstrap: str, topics: dict[str, str]) -> None:
    pair = {"request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            "response": CHAT_RESPONSE}  # fmt: skip
    r = client.post("/v1/ingest/openai", json=[pair], headers=auth())
    assert r.status_code == 200 and r.json() == {"accepted": 1, "skipped": 0, "rejected": 0, "errors": []}
    payload = {"id": "litellm-1", "call_type": "acompletion", "model": "gpt-4o-mini", "status": "success",
               "messages": [{"role": "user", "content": "hi"}], "response": CHAT_RESPONSE,
               "startTime": 1700000000.0, "endTime": 1700000000.5}  # fmt: skip
    ndjson = (json.dumps(payload) + "\n").encode()
    r = client.post("/v1/ingest/litellm", content=ndjson, headers=auth(**{"Content-Type": "application/x-ndjson"}))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    v1 = {"request_id": "v1-rec", "timestamp": "2024-01-01T00:00:00Z", "model_id": "m", "prompt": "p", "response": "r"}
    r = client.post("/v1/ingest/v1", content=gzip.compress(json.dumps(v1).encode()),
                    headers=auth(**{"Content-Type": "application/json", "Content-Encoding": "gzip"}))  # fmt: skip
    assert r.status_code == 200 and r.json()["accepted"] == 1
    msgs = read_topic(kafka_bootstrap, topics["logs"], expect=3)
    assert sorted(m.key.decode() for m in msgs) == ["chatcmpl-abc", "litellm-1", "v1-rec"]
    r = client.post("/v1/ingest/openai", json=[{"request": 1}], headers=auth())  # nothing usable: not a success
    assert r.status_code == 400 and r.json()["rejected"] == 1 and r.json()["errors"][0]["reason"]
    r = client.post("/v1/ingest/otlp", json={}, headers=auth())
    assert r.status_code == 404 and "openai, litellm, v1" in r.json()["detail"]


# -- auth ------------------------------------------------------------------------------------------------------
def test_only_ingest_and_admin_tokens_may_ingest_and_an_ingest_token_reads_nothing(client: TestClient) -> None:
    body = export(genai_span(1)).SerializeToString()
    pb = {"Content-Type": PB}
    r = client.post("/v1/traces", content=body, headers=pb)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/traces", content=body, headers=auth("x" * 24, **pb)).status_code == 401
    for token in (READ, REVIEW):
        r = client.post("/v1/traces", content=body, headers=auth(token, **pb))
        assert r.status_code == 403 and "needs role ingest" in r.json()["detail"]
    assert client.post("/v1/traces", content=body, headers=auth(ADMIN, **pb)).status_code == 200
    assert client.post("/v1/ingest/v1", json=[], headers=auth(READ)).status_code == 403
    # the ingest token is no admin, reviewer or (where reads need a token) reader
    r = client.post("/api/v1/checks/run", headers=auth())
    assert r.status_code == 403 and "needs role admin" in r.json()["detail"]
    s = make_settings(None, api={"tokens": TOKENS, "read_requires_token": True})
    with TestClient(create_app(s, create_engine("sqlite://"))) as c:
        r = c.get("/metrics", headers=auth())
        assert r.status_code == 403 and "needs role read" in r.json()["detail"]
        assert c.get("/metrics", headers=auth(READ)).status_code == 200


# -- the broker down -------------------------------------------------------------------------------------------
def test_broker_down_gives_503_with_retry_after_and_the_api_still_starts(topics: dict[str, str]) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    s = make_settings(None, api={"tokens": TOKENS, "receiver": {"produce_timeout_s": 0.5, "retry_after_s": 7}},
                      kafka={"bootstrap_servers": [dead], "topics": [topics["logs"]], "dlq_topic": topics["dlq"],
                             "create_topics": False})  # fmt: skip
    app = create_app(s, create_engine("sqlite://"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post(
            "/v1/traces", content=export(genai_span(1)).SerializeToString(), headers=auth(**{"Content-Type": PB})
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        st = Status.FromString(r.content)
        assert st.code == 14 and "retry" in st.message  # UNAVAILABLE
        r = c.post("/v1/ingest/v1", json={"request_id": "x", "timestamp": "2024-01-01T00:00:00Z", "model_id": "m"},
                   headers=auth())  # fmt: skip
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and "broker" in r.json()["detail"]
        assert 'driftloop_receiver_requests_total{format="otlp",status="503"}' in c.get("/metrics").text
    # the app's shutdown closed the receiver: its producer and its worker threads are gone ...
    rec = app.state.receiver
    assert rec.sink._producer is None and rec._executor is None
    with TestClient(app) as c:  # ... and a second start of the same app serves again (a fresh pool)
        r = c.post("/v1/ingest/v1", json={"request_id": "y", "timestamp": "2024-01-01T00:00:00Z", "model_id": "m"},
                   headers=auth())  # fmt: skip
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert rec._executor is None


# -- end to end: the OTel SDK exporter -> uvicorn -> Kafka -> ingestion -> PostgreSQL --------------------------------
def test_sdk_exported_spans_become_one_row_each_also_when_a_request_is_replayed(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    import httpx
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from driftloop.api.server import ApiServer
    from driftloop.store.db import create_engine_from_url

    s = settings(topics, kafka_bootstrap, pg_url)
    eng = create_engine_from_url(pg_url)
    srv = ApiServer(s, eng, host="127.0.0.1", port=0)
    url = srv.start()
    try:
        # what a service instrumented with OTEL_EXPORTER_OTLP_* (docs/receiver.md) sends: gzip protobuf
        exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {INGEST}"},
                                    compression=Compression.Gzip)  # fmt: skip
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        n = 4
        for i in range(n):
            with tracer.start_as_current_span(f"chat gpt-4o-mini {i}") as sp:
                sp.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                                   "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                                       {"type": "text", "content": f"q{i}"}]}]),
                                   "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                                       {"type": "text", "content": f"a{i}"}], "finish_reason": "stop"}])})  # fmt: skip
        provider.shutdown()
        assert len(read_topic(kafka_bootstrap, topics["logs"], expect=n)) == n
        # a client retrying a request whose answer it lost: the same spans again
        body = export(*[genai_span(i, model="replayed") for i in range(3)]).SerializeToString()
        for _ in range(2):
            r = httpx.post(f"{url}/v1/traces", content=body, headers=auth(**{"Content-Type": PB}))
            assert r.status_code == 200, r.text
        ingest_until_idle(s)
        got = rows(pg_url, "select model_id, response, request_id from interactions order by response")
        assert len(got) == n + 3
        assert sorted(r[1] for r in got if r[0] == "gpt-4o-mini") == [f"a{i}" for i in range(n)]
        assert len({r[2] for r in got}) == n + 3
        assert all(r[2].startswith("otel-") for r in got)
    finally:
        srv.stop()
        srv.app.state.receiver.close()
        eng.dispose()


def test_concurrent_requests_share_one_producer(client: TestClient, kafka_bootstrap: str,
                                                topics: dict[str, str]) -> None:  # fmt: skip
    """Requests racing the lazy producer creation all succeed, and all their spans are in the topic."""
    spans = [[genai_span(i * 10 + j) for j in range(3)] for i in range(6)]
    codes: list[int] = []

    def post(batch: list[Span]) -> None:
        r = client.post("/v1/traces", content=export(*batch).SerializeToString(), headers=auth(**{"Content-Type": PB}))
        codes.append(r.status_code)

    threads = [threading.Thread(target=post, args=(b,)) for b in spans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [200] * 6
    assert len({m.key for m in read_topic(kafka_bootstrap, topics["logs"], expect=18)}) == 18


def test_murmur2_and_the_partitioner_pick_kafkas_default_partition() -> None:
    """The receiver's murmur2 is kafka-python's (Java's) for every tail length; the partitioner picks the same
    partition as kafka-python's default one, so a request id's records stay on one partition, in order."""
    import random

    from kafka.cluster import ClusterMetadata
    from kafka.partitioner import DefaultPartitioner
    from kafka.partitioner.default import murmur2 as reference

    from driftloop.api.receiver import Murmur2Partitioner, murmur2, murmur2_many

    rnd = random.Random(16)
    for n in [*range(0, 70), 255, 1000]:
        for _ in range(20):
            data = rnd.randbytes(n)
            assert murmur2(data) == reference(data), data
    assert murmur2(b"21") == reference(b"21") == -973932308 & 0xFFFFFFFF  # the Java client's test vector
    # the batch form: numpy for groups of keys of one length (every tail length), murmur2 for the rest
    batch = [rnd.randbytes(n) for n in [*range(0, 60), *[54] * 50, *[13] * 9, *[3] * 10, *[0] * 9] for _ in range(2)]
    rnd.shuffle(batch)
    assert murmur2_many(batch) == [reference(k) & 0xFFFFFFFF for k in batch]
    assert murmur2_many([]) == []

    class Cluster(ClusterMetadata):
        def partitions_for_topic(self, topic: str) -> set[int] | None:
            return {0, 1, 2, 3, 4} if topic == "t" else None

        def available_partitions_for_topic(self, topic: str) -> set[int] | None:
            return self.partitions_for_topic(topic)

        def topics(self, exclude_internal_topics: bool = True) -> set[str]:
            return {"t"}

    cluster = Cluster()
    keys = [f"otel-{rnd.randbytes(16).hex()}-{rnd.randbytes(8).hex()}".encode() for _ in range(200)]
    ours = [Murmur2Partitioner().partition("t", k, k, None, b"v", cluster) for k in keys]
    assert ours == [DefaultPartitioner().partition("t", k, k, None, b"v", cluster) for k in keys]
    assert set(ours) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="not found"):
        Murmur2Partitioner().partition("other", b"k", b"k", None, b"v", cluster)


def test_records_land_on_the_default_partition_of_their_request_id(client: TestClient, kafka_bootstrap: str,
                                                                    topics: dict[str, str]) -> None:  # fmt: skip
    from kafka.partitioner.default import murmur2 as reference

    spans = [genai_span(i) for i in range(20)]
    r = client.post("/v1/traces", content=export(*spans).SerializeToString(), headers=auth(**{"Content-Type": PB}))
    assert r.status_code == 200, r.text
    msgs = read_topic(kafka_bootstrap, topics["logs"], expect=20)
    assert {m.key.decode() for m in msgs} == {otel_id(s) for s in spans}
    assert all(m.partition == (reference(m.key) & 0x7FFFFFFF) % 3 for m in msgs)


def test_invalid_v1_records_are_rejected_per_item_at_the_receiver(client: TestClient, kafka_bootstrap: str,
                                                                  topics: dict[str, str]) -> None:  # fmt: skip
    """A v1 record the Decoder would dead-letter for its shape is a reject in the answer and never produced."""
    good = {"request_id": "v1-good", "prompt": "p", "response": "r", "tokens_in": 3, "extra.field": {"kept": 1}}
    feedback = {"type": "feedback", "request_id": "v1-good", "score": 0.5}
    bad = [{"request_id": "v1-bad-tokens", "prompt": "p", "tokens_in": "three"},
           {"prompt": "no id"},
           {"request_id": "v1-bad-type", "type": "click"},
           {"type": "feedback", "request_id": "v1-good"},
           {"request_id": "v1-bad-ts", "prompt": "p", "timestamp": True},
           {"request_id": "v1-bad-messages", "messages": [{"content": "no role"}]}]  # fmt: skip
    r = client.post("/v1/ingest/v1", json=[good, *bad, feedback], headers=auth())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["accepted"] == 2 and out["rejected"] == len(bad)
    reasons = [(e["reason"], e["detail"].split(":", 1)[0]) for e in out["errors"]]
    assert reasons == [("wrong_type", "record 'v1-bad-tokens'"), ("missing_field", "record None"),
                       ("unknown_type", "record 'v1-bad-type'"), ("missing_field", "record 'v1-good'"),
                       ("bad_timestamp", "record 'v1-bad-ts'"), ("missing_field", "record 'v1-bad-messages'")]  # fmt: skip
    assert "$.tokens_in" in out["errors"][0]["detail"] and "score, comment, correction" in out["errors"][3]["detail"]
    # the same verdicts as the Decoder that ingestion runs on the records
    from datetime import UTC, datetime

    from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source
    from driftloop.ingest.redact import Redactor

    dec = Decoder(DecodePolicy(), Redactor())
    for ok in (good, feedback):
        dec.decode(json.dumps(ok).encode(), Source("t", 0, 0, None), datetime.now(UTC))
    for rec, (reason, _) in zip(bad, reasons, strict=True):
        with pytest.raises(InvalidMessage) as err:
            dec.decode(json.dumps(rec).encode(), Source("t", 0, 0, None), datetime.now(UTC))
        assert err.value.reason == reason
    msgs = read_topic(kafka_bootstrap, topics["logs"], expect=2)
    assert [json.loads(m.value) for m in msgs if m.key == b"v1-good"] == [good, feedback]
    assert len(msgs) == 2
    # all invalid: nothing accepted is not a success
    r = client.post("/v1/ingest/v1", json=bad[:2], headers=auth())
    assert r.status_code == 400 and r.json()["rejected"] == 2 and r.json()["accepted"] == 0
    assert "wrong_type" in r.json()["detail"]
