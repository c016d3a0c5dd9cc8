"""driftloop.client: the logging helper for users' own apps (DriftloopLogger, wrap_openai, RecordLogger)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.broker import free_port
from driftloop.client import DriftloopLogger, RecordLogger, wrap_openai


def decode(raw: bytes) -> tuple[str, dict[str, Any]]:
    from driftloop.ingest.decode import DecodePolicy, Decoder, Source
    from driftloop.ingest.redact import Redactor

    kind, row, _ = Decoder(DecodePolicy(), Redactor()).decode(raw, Source("t", 0, 0, None))
    return kind, row


def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """The first ``count`` record values of ``topic`` (a 60 s guard against hanging, not a timing assertion)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest")  # fmt: skip
    try:
        c.assign([TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())])
        out: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out.extend(r.value for r in recs)
        assert len(out) >= count, f"only {len(out)} of {count} records arrived on {topic}"
        return out
    finally:
        c.close()


def fake_chat_create(**kwargs: Any) -> Any:
    """Stands in for ``openai_client.chat.completions.create`` (SDK-style objects)."""
    if kwargs.get("stream"):
        return iter(
            [
                {
                    "id": "chatcmpl-s1",
                    "model": "gpt-x",
                    "choices": [{"delta": {"role": "assistant", "content": "Hel"}}],
                },
                {
                    "id": "chatcmpl-s1",
                    "model": "gpt-x",
                    "choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}],
                },
            ]
        )
    content = kwargs["messages"][-1]["content"]
    return SimpleNamespace(
        id="chatcmpl-1",
        model="gpt-x-2025",
        choices=[
            SimpleNamespace(
                index=0, message=SimpleNamespace(role="assistant", content=f"echo: {content}"), finish_reason="stop"
            )
        ],
        usage=SimpleNamespace(prompt_tokens=5, completion_tokens=3, total_tokens=8),
    )


def fake_completion_create(**kwargs: Any) -> dict[str, Any]:
    """Stands in for ``client.completions.create`` returning plain dicts."""
    return {"id": "cmpl-2", "model": kwargs["model"], "choices": [{"text": "42", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1}}  # fmt: skip


def test_logger_and_wrap_openai_deliver_valid_v1_records(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    topic = topics["logs"]
    with DriftloopLogger(kafka_bootstrap, topic, model_id="my-app", model_version="prompt-v3",
                         metadata={"env": "test"}) as dl:  # fmt: skip
        rid = dl.log("What is 2 plus 2?", "4", latency_ms=12.5, tokens_in=6, tokens_out=1, user_id="alice",
                     session_id="s-1", metadata={"route": "/ask"}, region="eu")  # fmt: skip
        assert dl.feedback(rid, score=1, correction="2 plus 2 is 4.")
        create = wrap_openai(fake_chat_create, dl)
        resp = create(model="gpt-x", messages=[{"role": "user", "content": "hi"}], user="bob")
        assert resp.choices[0].message.content == "echo: hi"  # the original response, untouched
        out = wrap_openai(fake_completion_create, dl, model_version="ft-7")(model="davinci", prompt="6 times 7?")
        assert out["id"] == "cmpl-2"
        chunks = list(create(model="gpt-x", messages=[{"role": "user", "content": "stream"}], stream=True))
        assert len(chunks) == 2
        assert dl.flush(60), f"not delivered: {dl.stats()}"
        st = dl.stats()
        assert (st.sent, st.dropped, st.buffered) == (5, 0, 0)

    recs = {}
    for raw in read_all(kafka_bootstrap, topic, 5):
        kind, row = decode(raw)
        recs[(kind, row["request_id"])] = (json.loads(raw), row)
    rec, row = recs[("interaction", rid)]
    assert rec["model_id"] == "my-app" and rec["model_version"] == "prompt-v3" and rec["prompt"] == "What is 2 plus 2?"
    assert row["latency_ms"] == 12.5 and row["tokens_in"] == 6 and row["session_id"] == "s-1"
    assert row["user_hash"] and row["user_hash"] != "alice"  # the decoder hashes user ids
    assert row["metadata"] == {"env": "test", "route": "/ask", "region": "eu"}  # unknown fields kept in metadata
    _, fb = recs[("feedback", rid)]
    assert fb["score"] == 1 and fb["correction"] == "2 plus 2 is 4."
    rec, row = recs[("interaction", "chatcmpl-1")]
    assert rec["messages"] == [{"role": "user", "content": "hi"}] and rec["response"] == "echo: hi"
    assert (row["tokens_in"], row["tokens_out"], row["finish_reason"]) == (5, 3, "stop")
    assert row["model_version"] == "prompt-v3" and row["metadata"]["requested_model"] == "gpt-x"
    assert row["prompt"] == "user: hi" and row["latency_ms"] >= 0
    rec, row = recs[("interaction", "cmpl-2")]
    assert (rec["prompt"], rec["response"], rec["model_version"], rec["finish_reason"]) == ("6 times 7?", "42", "ft-7",
                                                                                           "length")  # fmt: skip
    rec, _ = recs[("interaction", "chatcmpl-s1")]
    assert rec["response"] == "Hello" and rec["finish_reason"] == "stop"


def test_log_never_blocks_or_raises_when_the_broker_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    dl = DriftloopLogger(f"127.0.0.1:{port}", "logs", model_id="m", buffer_size=3)
    ids = [dl.log(f"prompt {i}", f"answer {i}") for i in range(10)]
    assert len(set(ids)) == 10
    assert dl.feedback(ids[0], score=0) is False  # buffer full: dropped, counted
    st = dl.stats()
    assert (st.buffered, st.dropped, st.sent) == (3, 8, 0)
    assert dl.close(timeout=0.5) == 3  # what could not be delivered is reported


def test_submit_returns_while_the_sender_is_stuck_on_the_broker() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck_producer() -> Any:  # a broker that never answers: the sender thread blocks here
        entered.set()
        release.wait()
        raise ConnectionError("broker unreachable")

    rl = RecordLogger("unused:9092", "logs", buffer_size=5, producer_factory=stuck_producer)
    try:
        assert rl.submit({"request_id": "r0", "prompt": "p"})
        assert entered.wait(30)
        results = [rl.submit({"request_id": f"r{i}", "prompt": "p"}) for i in range(1, 10)]
        assert results == [True] * 4 + [False] * 5  # never waits for the sender; full buffer drops
        assert rl.stats().dropped == 5 and rl.stats().buffered == 5
        assert rl.submit({"request_id": "bad", "x": object()}) is False and rl.stats().invalid == 1
    finally:
        release.set()
        rl.close(timeout=0.2)


class _Future:
    """A send's future, already done: failed with ``exc``, or succeeded without one."""

    def __init__(self, exc: BaseException | None) -> None:
        self.is_done = True
        self.exception = exc

    def succeeded(self) -> bool:
        return self.exception is None


class _FakeProducer:
    """The producer calls RecordLogger makes besides send(): nothing to flush or close here."""

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class _FlakyProducer(_FakeProducer):
    """Fails every send while ``down`` is set; records what was acknowledged."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Future:
        ok = not self.state["down"].is_set()
        if ok:
            self.state["acked"].append(json.loads(value)["request_id"])
        return _Future(None if ok else ConnectionError("down"))


def test_failed_sends_stay_buffered_in_order_and_are_retried() -> None:
    state: dict[str, Any] = {"down": threading.Event(), "acked": []}
    state["down"].set()
    rl = RecordLogger("unused:9092", "logs", buffer_size=100, producer_factory=lambda: _FlakyProducer(state),
                      backoff_s=0.01, max_backoff_s=0.05)  # fmt: skip
    try:
        for i in range(5):
            rl.submit({"request_id": f"r{i}"})
        deadline = time.monotonic() + 30
        while rl.stats().send_errors < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rl.stats().send_errors >= 3 and rl.stats().buffered == 5 and state["acked"] == []
        state["down"].clear()  # the broker is back
        assert rl.flush(30)
        assert state["acked"] == [f"r{i}" for i in range(5)] and rl.stats().sent == 5
    finally:
        rl.close(timeout=1)


def test_feedback_needs_content_and_wrap_openai_errors_propagate() -> None:
    dl = DriftloopLogger(f"127.0.0.1:{free_port()}", "logs", buffer_size=10)
    try:
        with pytest.raises(ValueError, match="at least one of"):
            dl.feedback("r1")

        def failing(**kwargs: Any) -> Any:
            raise RuntimeError("rate limited")

        with pytest.raises(RuntimeError, match="rate limited"):
            wrap_openai(failing, dl)(model="m", messages=[])
        assert dl.stats().buffered == 0  # a failed call is not logged
        odd = wrap_openai(lambda **kw: 42, dl)(model="m", prompt="x")  # an unexpected response shape
        assert odd == 42
    finally:
        dl.close(timeout=0.1)


# ------------------------------------------------------------------------------ oversized and refused records


def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def topic_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of the one-partition ``topic``, in order: a sentinel is appended and read up to.

    Exact, without waiting for "no more records": whatever precedes the sentinel was acknowledged before it.
    """
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    prod = KafkaProducer(bootstrap_servers=bootstrap)
    prod.send(topic, value=b'{"request_id": "sentinel"}', partition=0).get(timeout=30)
    prod.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", max_partition_fetch_bytes=32 * 1024 * 1024)  # fmt: skip
    out: list[dict[str, Any]] = []
    try:
        c.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + 60  # a guard against hanging, not a timing assertion
        while not out or out[-1]["request_id"] != "sentinel":
            assert time.monotonic() < deadline, f"the sentinel never arrived; read {len(out)} records"
            for recs in c.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in recs)
    finally:
        c.close()
    return out[:-1]


class _PickyProducer(_FakeProducer):
    """Refuses records by request_id: ``raise`` in send(), ``fail`` in the future; acknowledges the rest."""

    def __init__(self, raise_: dict[str, BaseException], fail: dict[str, BaseException], acked: list[str]) -> None:
        self.raise_, self.fail, self.acked = raise_, fail, acked

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> _Future:
        rid = json.loads(value)["request_id"]
        if rid in self.raise_:
            raise self.raise_[rid]
        if rid in self.fail:
            return _Future(self.fail[rid])
        self.acked.append(rid)
        return _Future(None)


def test_a_record_the_producer_refuses_does_not_block_the_following_records() -> None:
    from kafka.errors import InvalidRecordError, KafkaTimeoutError, MessageSizeTooLargeError

    from driftloop.client import INVALID, RETRIES_EXHAUSTED, TOO_LARGE

    acked: list[str] = []
    prod = _PickyProducer({"huge": MessageSizeTooLargeError("The message is 17000123 bytes")},
                          {"corrupt": InvalidRecordError("bad record"),
                           "stuck": KafkaTimeoutError("Batch expired")}, acked)  # fmt: skip
    rl = RecordLogger("unused:9092", "logs", buffer_size=100, producer_factory=lambda: prod, backoff_s=0.01,
                      max_backoff_s=0.05, max_record_attempts=3)  # fmt: skip
    try:
        ids = ["r0", "huge", "r1", "corrupt", "r2", "r3"]
        for rid in ids:
            assert rl.submit({"request_id": rid})
        assert rl.flush(30), rl.stats()
        st = rl.stats()
        assert acked == ["r0", "r1", "r2", "r3"]  # in order, none held back by the refused ones
        assert (st.sent, st.rejected, st.buffered, st.send_errors) == (4, 2, 0, 0)
        assert st.rejected_reasons == {TOO_LARGE: 1, INVALID: 1} and st.last_error is None
        assert st.last_rejected == f"{INVALID}: [Error 87] InvalidRecordError: bad record"

        # a record failing with a transient error while others are delivered is retried, then dropped
        assert rl.submit({"request_id": "stuck"})
        n = 0
        while rl.stats().rejected_reasons.get(RETRIES_EXHAUSTED, 0) == 0:
            n += 1
            assert n <= 50, rl.stats()
            rid = f"g{n}"
            assert rl.submit({"request_id": rid})
            wait_until(lambda rid=rid: rid in acked, f"{rid} delivered while 'stuck' keeps failing")  # type: ignore[misc]
        assert rl.flush(30)
        st = rl.stats()
        assert acked[4:] == [f"g{i}" for i in range(1, n + 1)] and st.sent == 4 + n and st.buffered == 0
        assert st.rejected_reasons == {TOO_LARGE: 1, INVALID: 1, RETRIES_EXHAUSTED: 1}
        assert st.last_rejected == (f"{RETRIES_EXHAUSTED}: 3 attempts, last: broker unreachable: "
                                    "KafkaTimeoutError: Batch expired")  # fmt: skip
        assert st.send_errors >= 3 and st.last_error is None  # the later successes cleared the transient error
    finally:
        rl.close(timeout=1)


def test_fit_record_truncates_with_a_note_and_gives_up_on_many_small_fields() -> None:
    from driftloop.client import TRUNCATED_KEY, TRUNCATION_MARKER, RecordTooLarge, fit_record

    small = {"request_id": "r", "prompt": "hi", "metadata": {"a": 1}}
    assert fit_record(small, 1000, 100) == (json.dumps(small, separators=(",", ":")).encode(), None)

    rec = {"request_id": "r", "prompt": "p" * 300, "messages": [{"role": "user", "content": "é" * 5000}],
           "response": "ok", "metadata": {"tenant": "t1", "blob": {"x": "y" * 20_000}}}  # fmt: skip
    raw, note = fit_record(rec, 4096, 200)
    out = json.loads(raw)
    assert len(raw) <= 4096 and rec["prompt"] == "p" * 300  # the caller's record is left alone
    assert out["prompt"] == "p" * (200 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER and len(out["prompt"]) == 200
    assert out["messages"][0]["content"].endswith(TRUNCATION_MARKER) and out["response"] == "ok"
    assert out["metadata"]["tenant"] == "t1" and out["metadata"]["blob"] == "[truncated by driftloop: 20008 bytes]"
    assert (
        note == out["metadata"][TRUNCATED_KEY] == {"prompt": 302, "messages.0.content": 10002, "metadata.blob": 20008}
    )
    _kind, row = decode(raw)  # still a valid v1 record
    assert row["metadata"][TRUNCATED_KEY]["metadata.blob"] == 20008

    with pytest.raises(RecordTooLarge, match="max 4096"):
        fit_record({"request_id": "r", "prompt": "p", "metadata": {f"k{i}": i for i in range(2000)}}, 4096, None)


def test_oversized_records_on_a_real_broker_are_truncated_or_refused_and_never_stall_the_rest(
    kafka_bootstrap: str,
) -> None:
    from driftloop.broker import ensure_topics
    from driftloop.client import DEFAULT_MAX_RECORD_BYTES, TOO_LARGE, TRUNCATED_KEY

    topic = f"big-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    blob = "x" * 17_000_000
    # the default cap: a 17 MB metadata value is cut, the interaction still arrives
    with DriftloopLogger(kafka_bootstrap, topic, model_id="m") as dl:
        big = dl.log("What is 2 plus 2?", "4", metadata={"blob": blob, "tenant": "t1"})
        after = [dl.log(f"prompt {i}", f"answer {i}") for i in range(3)]
        assert dl.flush(60), dl.stats()
        st = dl.stats()
        assert (st.sent, st.truncated, st.rejected, st.dropped, st.buffered) == (4, 1, 0, 0, 0)
    # no cap above the producer's max_request_size (16 MiB): kafka-python refuses the record; it is dropped
    # with its reason, not retried, and the records after it are delivered (the stall of issue 12)
    rl = RecordLogger(kafka_bootstrap, topic, max_record_bytes=32 * 1024 * 1024, max_field_chars=None)
    try:
        assert rl.submit({"request_id": "raw-huge", "prompt": "p", "metadata": {"blob": blob}})
        raw_after = [f"raw-{i}" for i in range(3)]
        for rid in raw_after:
            assert rl.submit({"request_id": rid, "prompt": "p", "response": "r"})
        assert rl.flush(60), rl.stats()
        st = rl.stats()
        assert (st.sent, st.rejected, st.buffered, st.send_errors) == (3, 1, 0, 0)
        assert st.rejected_reasons == {TOO_LARGE: 1}
        assert st.last_rejected is not None and "MessageSizeTooLargeError" in st.last_rejected
        assert st.last_error is None
    finally:
        assert rl.close(timeout=5) == 0

    records = topic_records(kafka_bootstrap, topic)
    assert [r["request_id"] for r in records] == [big, *after, *raw_after]  # exactly these, in order
    got = {r["request_id"]: r for r in records}
    rec = got[big]
    assert len(json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode()) <= DEFAULT_MAX_RECORD_BYTES
    assert rec["metadata"][TRUNCATED_KEY] == {"metadata.blob": 17_000_002} and rec["metadata"]["tenant"] == "t1"
    assert rec["prompt"] == "What is 2 plus 2?" and rec["metadata"]["blob"].startswith("xxx")
    assert decode(json.dumps(rec).encode())[0] == "interaction"
