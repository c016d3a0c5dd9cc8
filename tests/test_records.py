"""One v1 log record type: what the client logger (and the model server through it) sends is what the
decoder decodes, because both use :mod:`driftloop.records`. No broker: a capturing producer stands in."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from driftloop import records
from driftloop.client import DriftloopLogger, feedback_record
from driftloop.ingest import decode as D
from driftloop.ingest.redact import Redactor
from driftloop.records import FeedbackEventV1, LogRecordV1

NOW = datetime.now(UTC)


class _Acked:
    is_done = True
    exception = None

    def succeeded(self) -> bool:
        return True


class CapturingProducer:
    """Acknowledges every record and keeps its bytes; ``arrived`` is set once ``expect`` records came."""

    def __init__(self, expect: int) -> None:
        self.values: list[bytes] = []
        self.expect = expect
        self.arrived = threading.Event()

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Acked:
        self.values.append(value)
        if len(self.values) >= self.expect:
            self.arrived.set()
        return _Acked()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def _logger(prod: CapturingProducer, **kw: Any) -> DriftloopLogger:
    dl = DriftloopLogger("unused:9092", "logs", model_id="bot", **kw)
    dl.records._factory = lambda: prod  # the sender thread connects lazily, on the first record
    return dl


def _decode(raw: bytes) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    return D.Decoder(D.DecodePolicy(), Redactor()).decode(raw, D.Source("logs", 0, 7, None), NOW)


def test_the_decoder_uses_the_records_module_types() -> None:
    # one definition: the decoder's names are the very classes the client builds
    assert D.LogRecordV1 is records.LogRecordV1 and D.FeedbackEventV1 is records.FeedbackEventV1
    assert D.InlineFeedback is records.InlineFeedback and D.ChatMessage is records.ChatMessage
    assert issubclass(D._StrictRecordV1, records.LogRecordV1)  # the fast path decodes into a subclass
    assert D.INTERACTION_FIELDS is records.INTERACTION_FIELDS and D.FEEDBACK_FIELDS is records.FEEDBACK_FIELDS


def test_a_client_record_round_trips_through_the_decoder() -> None:
    prod = CapturingProducer(expect=2)
    dl = _logger(prod, metadata={"app": "shop"}, model_version="v3")
    try:
        rid = dl.log([{"role": "user", "content": "where is my order?"}], "on its way", latency_ms=12.3456,
                     tokens_in=5, tokens_out=3, feedback={"score": 1, "comment": "ok"}, user_id="u-1",
                     region="eu", metadata={"ticket": 9})  # fmt: skip
        dl.feedback(rid, score=0.5, comment="late")
        assert prod.arrived.wait(30), "the sender thread did not deliver"
    finally:
        dl.close(timeout=1)
    rec_raw, fb_raw = prod.values

    rec = msgspec.json.decode(rec_raw, type=LogRecordV1)
    assert rec.request_id == rid and rec.model_id == "bot" and rec.model_version == "v3"
    assert rec.messages == [records.ChatMessage(role="user", content="where is my order?")]
    assert rec.latency_ms == 12.346 and rec.feedback == records.InlineFeedback(score=1.0, comment="ok")
    # unknown keyword fields travel in metadata, where ingestion would have put them
    assert rec.metadata == {"app": "shop", "ticket": 9, "region": "eu"}
    assert b"null" not in rec_raw, "unset fields stay off the wire"

    kind, row, fbs = _decode(rec_raw)
    assert kind == "interaction" and row["request_id"] == rid and row["response"] == "on its way"
    assert row["prompt"] == "user: where is my order?" and row["metadata"] == rec.metadata
    assert row["ts"] == datetime.fromisoformat(str(rec.timestamp)) and row["tokens_out"] == 3
    assert [f["score"] for f in fbs] == [1.0] and fbs[0]["comment"] == "ok"

    ev = msgspec.json.decode(fb_raw, type=FeedbackEventV1)
    assert (ev.type, ev.request_id, ev.score, ev.comment, ev.correction) == ("feedback", rid, 0.5, "late", None)
    assert ev.feedback_id and ev.timestamp
    kind, frow, _ = _decode(fb_raw)
    assert kind == "feedback" and frow["request_id"] == rid and (frow["score"], frow["comment"]) == (0.5, "late")


def test_a_log_call_ingestion_would_refuse_is_counted_in_the_client_not_sent() -> None:
    prod = CapturingProducer(expect=1)
    dl = _logger(prod)
    try:
        dl.log("hi", "there", tokens_in=-1)  # tokens are >= 0: the decoder's type says so
        dl.log("hi", "there", request_id="x" * 300)  # ids are at most 256 characters
        dl.log("ok", "fine")
        assert prod.arrived.wait(30)
        assert dl.stats().invalid == 2
    finally:
        dl.close(timeout=1)
    assert len(prod.values) == 1 and _decode(prod.values[0])[1]["prompt"] == "ok"


def test_feedback_record_refuses_an_empty_event() -> None:
    with pytest.raises(ValueError, match="at least one of score, correction, comment"):
        feedback_record("r-1")
    ev = feedback_record("r-1", correction="better")
    assert records.to_wire(ev) == {"type": "feedback", "request_id": "r-1", "timestamp": ev.timestamp,
                                   "feedback_id": ev.feedback_id, "correction": "better"}  # fmt: skip


def test_a_server_record_round_trips_through_the_decoder() -> None:
    from driftloop.serve.routes.completions import record
    from driftloop.serve.schemas import ChatRequest

    st = SimpleNamespace(model_id="served")
    req = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "model": "served-v2",
                                      "user": "u-9", "metadata": {"ticket": 4}})  # fmt: skip
    gen = SimpleNamespace(model_version="v2", text="hello", tokens_in=3, tokens_out=1, finish_reason="stop",
                          adapter="served-v2")  # fmt: skip
    rec = record(st, "chatcmpl-1", "2024-05-01T10:00:00.000Z", req, gen, 12.5, "chat", "hi",
                 [records.ChatMessage(role="user", content="hi")])  # fmt: skip
    assert type(rec) is LogRecordV1  # the server builds the one type too
    raw = msgspec.json.encode(records.to_wire(rec))
    assert msgspec.json.decode(raw, type=LogRecordV1) == rec
    kind, row, _ = _decode(raw)
    assert kind == "interaction" and row["request_id"] == "chatcmpl-1" and row["model_version"] == "v2"
    assert row["prompt"] == "hi" and row["messages"] == [{"role": "user", "content": "hi"}]
    assert row["metadata"] == {"ticket": 4, "adapter": "served-v2", "endpoint": "chat",
                               "requested_model": "served-v2", "server": "driftloop-serve"}  # fmt: skip
    assert row["user_hash"] is not None and row["latency_ms"] == 12.5
