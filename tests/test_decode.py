"""The v1 log record schema: what ``Decoder.decode`` accepts, what it stores, and why it rejects.

Pure unit tests (no broker); one test stores edge-case rows in the real PostgreSQL.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from driftloop.ingest import decode as D
from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source, feedback_key
from driftloop.ingest.redact import Redactor
from driftloop.ingest.sample import BAD_MESSAGES, sample_records

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BROKER_MS = int(datetime(2024, 5, 1, 11, 0, tzinfo=UTC).timestamp() * 1000)


def src(timestamp_ms: int | None = BROKER_MS, offset: int = 42) -> Source:
    return Source("logs", 1, offset, timestamp_ms)


def dec(**policy: Any) -> Decoder:
    return Decoder(DecodePolicy(**policy), Redactor())


def decode(record: Any, *, decoder: Decoder | None = None, source: Source | None = None, now: datetime = NOW) -> Any:
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    return (decoder or dec()).decode(raw, source or src(), now)


def reject(record: Any, **kw: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as ei:
        decode(record, **kw)
    assert ei.value.detail, "a reject must say what is wrong"
    return ei.value


def strings(obj: Any) -> list[str]:
    """Every string in a row (values, dict keys, nested)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in strings(k) + strings(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in strings(v)]
    return []


# --- the happy path -------------------------------------------------------------------------------


def test_minimal_record_gets_defaults_and_source() -> None:
    kind, row, fbs = decode({"request_id": "r-1", "prompt": "hello"})
    assert kind == "interaction" and fbs == []
    assert row["request_id"] == "r-1" and row["prompt"] == "hello"
    assert row["model_id"] == "unknown"
    assert row["ts"] == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)  # the broker timestamp
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("logs", 1, 42)
    assert row["ingested_at"] == NOW
    assert row["messages"] is None and row["metadata"] is None and row["user_hash"] is None


def test_full_record_maps_every_field() -> None:
    rec = {
        "request_id": "r-2",
        "timestamp": "2024-05-01T10:00:00Z",
        "model_id": "chat-large",
        "model_version": "v7",
        "prompt": "what is drift?",
        "response": "a change in distribution",
        "latency_ms": 812.5,
        "tokens_in": 12,
        "tokens_out": 2**31 - 1,
        "finish_reason": "stop",
        "session_id": "s-9",
        "reference": "distribution shift",
        "metadata": {"region": "eu", "nested": {"a": [1, 2]}},
    }
    _, row, _ = decode(rec)
    for k in ("model_id", "model_version", "prompt", "response", "latency_ms", "tokens_in", "tokens_out"):
        assert row[k] == rec[k]
    assert (row["finish_reason"], row["session_id"], row["reference"]) == ("stop", "s-9", "distribution shift")
    assert row["metadata"] == rec["metadata"]
    assert row["ts"] == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_default_model_id_comes_from_the_policy() -> None:
    _, row, _ = decode({"request_id": "r", "prompt": "p"}, decoder=dec(default_model_id="legacy"))
    assert row["model_id"] == "legacy"


def test_sample_records_all_decode_and_pii_is_redacted() -> None:
    recs = list(sample_records(300, seed=3, pii_share=0.3, start=NOW - timedelta(hours=2)))
    with_pii = 0
    for i, rec in enumerate(recs):
        _, row, fbs = decode(rec, source=src(offset=i))
        assert row["request_id"] == rec["request_id"]
        if "@example.com" in rec["prompt"]:
            with_pii += 1
            assert "@example.com" not in row["prompt"] and "[email]" in row["prompt"]
            assert "415-555-" not in row["prompt"] and "[phone]" in row["prompt"]
        assert len(fbs) == (1 if "feedback" in rec else 0)
    assert with_pii > 0


# --- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("2024-05-01T12:30:00+02:00", datetime(2024, 5, 1, 10, 30, tzinfo=UTC)),
        ("2024-04-30T23:00:00-05:00", datetime(2024, 5, 1, 4, 0, tzinfo=UTC)),
        ("2024-05-01T10:00:00.250Z", datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        (1714557600000, datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        (1714557600250.0, datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        # RFC 3339 section 5.6: "T" and "Z" may be lowercase
        ("2024-05-01t10:00:00z", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("2024-05-01T10:00:00z", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("2024-05-01t12:30:00.5+02:00", datetime(2024, 5, 1, 10, 30, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_timestamp_formats(value: Any, expected: datetime) -> None:
    _, row, _ = decode({"request_id": "r", "prompt": "p", "timestamp": value})
    assert row["ts"] == expected
    assert row["ts"].utcoffset() == timedelta(0)


def test_missing_timestamp_uses_broker_time_else_now() -> None:
    rec = {"request_id": "r", "prompt": "p"}
    assert decode(rec, source=src(BROKER_MS + 1500))[1]["ts"] == datetime(2024, 5, 1, 11, 0, 1, 500_000, tzinfo=UTC)
    assert decode(rec, source=src(None))[1]["ts"] == NOW
    assert decode(rec, source=src(-1))[1]["ts"] == NOW  # Kafka's "no timestamp"


@pytest.mark.parametrize(
    "value",
    [
        "3024-01-01T00:00:00Z",  # far future
        "1970-01-01T00:00:00Z",  # before min_timestamp
        "2024-05-03T00:00:00Z",  # more than a day ahead of NOW
        0,
        -1,
        -1e15,
        -999_999_999_999_999,
        1714557600,  # epoch *seconds* by mistake: 1970-01-20
        10**20,
        True,
        False,
        {"seconds": 1},
        [2024, 5, 1],
        "2024-05-01T10:00:00",  # no offset
        "yesterday",
        "",
        "0001-01-01T00:00:00+01:00",  # overflows when converted to UTC
        "9999-12-31T23:59:59-01:00",
        "2024-05-01T10:00:00Z" + " " * 60,
    ],
)
def test_absurd_timestamps_are_bad_timestamp(value: Any) -> None:
    e = reject({"request_id": "r", "prompt": "p", "timestamp": value})
    assert e.reason == D.BAD_TIMESTAMP, e


def test_absurd_broker_timestamp_is_rejected_too() -> None:
    e = reject({"request_id": "r", "prompt": "p"}, source=src(int(datetime(1999, 1, 1, tzinfo=UTC).timestamp() * 1000)))
    assert e.reason == D.BAD_TIMESTAMP and "1999" in e.detail


def test_timestamp_range_comes_from_the_policy() -> None:
    d = dec(min_timestamp=datetime(2024, 4, 1, tzinfo=UTC), max_future_skew=timedelta(0))
    assert reject({"request_id": "r", "prompt": "p", "timestamp": "2024-03-31T23:59:59Z"}, decoder=d).reason == (
        D.BAD_TIMESTAMP
    )
    assert reject({"request_id": "r", "prompt": "p", "timestamp": "2024-05-01T12:00:01Z"}, decoder=d).reason == (
        D.BAD_TIMESTAMP
    )
    assert decode({"request_id": "r", "prompt": "p", "timestamp": "2024-05-01T12:00:00Z"}, decoder=d)[1]["ts"] == NOW


# --- prompt / messages ----------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi, I am a@b.io"}]


def test_prompt_as_messages_list() -> None:
    _, row, _ = decode({"request_id": "r", "prompt": CHAT})
    assert row["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi, I am [email]"},
    ]
    assert row["prompt"] == "system: be brief\nuser: hi, I am [email]"


def test_messages_field() -> None:
    _, row, _ = decode({"request_id": "r", "messages": [*CHAT, {"role": "assistant", "content": None}]})
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["prompt"].splitlines() == ["system: be brief", "user: hi, I am [email]", "assistant: "]


def test_prompt_string_with_messages_keeps_both() -> None:
    _, row, _ = decode({"request_id": "r", "prompt": "summary", "messages": CHAT})
    assert row["prompt"] == "summary" and len(row["messages"]) == 2


def test_message_extra_fields_are_tolerated() -> None:
    _, row, _ = decode({"request_id": "r", "messages": [{"role": "user", "content": "x", "name": "bob"}]})
    assert row["messages"] == [{"role": "user", "content": "x"}]


def test_prompt_or_messages_is_required() -> None:
    e = reject({"request_id": "r", "response": "orphan"})
    assert e.reason == D.MISSING_FIELD and "prompt" in e.detail and "messages" in e.detail


# --- metadata, user id ----------------------------------------------------------------------------


def test_unknown_top_level_fields_are_kept_in_metadata() -> None:
    _, row, _ = decode(
        {"request_id": "r", "prompt": "p", "metadata": {"app": "demo"}, "tenant": "acme", "ab_arm": {"id": 2}}
    )
    assert row["metadata"] == {"app": "demo", "tenant": "acme", "ab_arm": {"id": 2}}
    _, row, _ = decode({"request_id": "r", "prompt": "p", "tenant": "acme"})
    assert row["metadata"] == {"tenant": "acme"}


def test_unknown_fields_decode_the_same_as_known_ones() -> None:
    """The fast path (known fields only) and the general path (unknown fields) build the same row."""
    rec = {"request_id": "r", "prompt": "call +1 415-555-0132", "timestamp": 1714557600000, "tokens_in": 3}
    _, fast, _ = decode(rec)
    _, slow, _ = decode({**rec, "extra": 1})
    assert slow.pop("metadata") == {"extra": 1}
    fast.pop("metadata")
    assert fast == slow


def test_metadata_is_stored_as_sent_not_redacted() -> None:
    _, row, _ = decode({"request_id": "r", "prompt": "p", "metadata": {"contact": "a@b.io"}})
    assert row["metadata"] == {"contact": "a@b.io"}


def test_user_id_is_stored_hashed_never_in_clear() -> None:
    uid = "alice.smith-4711"
    rec = {"request_id": "r", "prompt": "p", "user_id": uid, "feedback": {"score": 1, "comment": "ok"}}
    _, row, fbs = decode(rec)
    assert row["user_hash"] == Redactor().user_hash(uid)
    assert len(row["user_hash"]) == 64
    assert "user_id" not in row
    assert not any(uid in s for s in strings(row) + strings(fbs))
    salted = Decoder(DecodePolicy(), Redactor(user_id_salt="other"))
    assert salted.decode(json.dumps(rec).encode(), src(), NOW)[1]["user_hash"] != row["user_hash"]


def test_text_fields_are_redacted() -> None:
    rec = {
        "request_id": "r",
        "prompt": "mail bob@example.com",
        "response": "card 4111 1111 1111 1111",
        "reference": "ip 10.1.2.3",
    }
    _, row, _ = decode(rec)
    assert row["prompt"] == "mail [email]"
    assert row["response"] == "card [credit_card]"
    assert row["reference"] == "ip [ip_address]"


# --- feedback -------------------------------------------------------------------------------------


def test_inline_feedback_object() -> None:
    _, row, fbs = decode(
        {
            "request_id": "r-7",
            "prompt": "p",
            "feedback": {"score": 0.5, "comment": "call 415-555-0132", "correction": "x"},
        }
    )
    (fb,) = fbs
    assert fb["request_id"] == "r-7" and fb["score"] == 0.5 and fb["correction"] == "x"
    assert fb["comment"] == "call [phone]"
    assert fb["source"] == "inline" and fb["ts"] == row["ts"]
    assert len(fb["event_key"]) <= 64


def test_inline_feedback_bare_number() -> None:
    _, _, fbs = decode({"request_id": "r", "prompt": "p", "feedback": 1})
    assert [(f["score"], f["comment"]) for f in fbs] == [(1.0, None)]
    assert isinstance(fbs[0]["score"], float)


def test_inline_feedback_empty_object_gives_no_row() -> None:
    assert decode({"request_id": "r", "prompt": "p", "feedback": {}})[2] == []


def test_inline_feedback_key_is_stable_per_request() -> None:
    a = decode({"request_id": "r", "prompt": "p", "feedback": 1}, source=src(BROKER_MS))[2][0]["event_key"]
    b = decode({"request_id": "r", "prompt": "p", "feedback": 1}, source=src(BROKER_MS + 5000, offset=99))[2][0]
    c = decode({"request_id": "other", "prompt": "p", "feedback": 1})[2][0]["event_key"]
    assert a == b["event_key"] and a != c
    with_id = decode({"request_id": "r", "prompt": "p", "feedback": {"score": 1, "feedback_id": "fb-1"}})[2][0]
    assert with_id["event_key"] == feedback_key("r", None, None, None, None, "fb-1") != a


def test_inline_feedback_unknown_key_is_rejected() -> None:
    e = reject({"request_id": "r", "prompt": "p", "feedback": {"score": 1, "stars": 5}})
    assert e.reason == D.WRONG_TYPE and "stars" in e.detail


FB = {"type": "feedback", "request_id": "r-9", "score": 0, "comment": "wrong answer, mail me a@b.io"}


def test_feedback_event_row() -> None:
    kind, row, extra = decode({**FB, "timestamp": "2024-05-01T11:30:00Z", "channel": "thumbs"})
    assert kind == "feedback" and extra == []
    assert row["request_id"] == "r-9" and row["score"] == 0.0 and row["source"] == "event"
    assert row["comment"] == "wrong answer, mail me [email]"
    assert row["ts"] == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    assert row["metadata"] == {"channel": "thumbs"}
    assert len(row["event_key"]) <= 64


def test_feedback_event_metadata_merges_with_extras() -> None:
    _, row, _ = decode({**FB, "metadata": {"ui": "web"}, "channel": "thumbs"})
    assert row["metadata"] == {"ui": "web", "channel": "thumbs"}


def test_feedback_event_key_depends_on_content_not_on_delivery() -> None:
    """A resend (new offset, broker time, clock) is the same event; different content is not."""
    k1 = decode(FB, source=src(BROKER_MS, offset=1), now=NOW)[1]["event_key"]
    k2 = decode(FB, source=src(BROKER_MS + 60_000, offset=2), now=NOW + timedelta(minutes=5))[1]["event_key"]
    k3 = decode(FB, source=src(None), now=NOW + timedelta(seconds=1))[1]["event_key"]
    assert k1 == k2 == k3
    assert decode({**FB, "score": 1})[1]["event_key"] != k1
    assert decode({**FB, "comment": "other"})[1]["event_key"] != k1
    assert decode({**FB, "request_id": "r-10"})[1]["event_key"] != k1
    # an explicit timestamp is content: the same instant in two notations is one event
    z = decode({**FB, "timestamp": "2024-05-01T11:30:00Z"})[1]["event_key"]
    off = decode({**FB, "timestamp": "2024-05-01T13:30:00+02:00"})[1]["event_key"]
    assert z == off != k1
    assert decode({**FB, "timestamp": "2024-05-01T11:31:00Z"})[1]["event_key"] != z


def test_feedback_event_key_from_feedback_id() -> None:
    a = decode({**FB, "feedback_id": "fb-1"})[1]["event_key"]
    b = decode({**FB, "feedback_id": "fb-1", "score": 1, "comment": "changed"})[1]["event_key"]
    assert a == b == feedback_key("r-9", None, None, None, None, "fb-1")
    assert a.startswith("id:") and len(a) <= 64
    assert decode({**FB, "feedback_id": "fb-2"})[1]["event_key"] != a


def test_feedback_event_needs_content_and_request_id() -> None:
    e = reject({"type": "feedback", "request_id": "r"})
    assert e.reason == D.MISSING_FIELD and "score" in e.detail
    e = reject({"type": "feedback", "score": 1})
    assert e.reason == D.MISSING_FIELD and "request_id" in e.detail
    e = reject({"type": "feedback", "request_id": "r", "score": "great"})
    assert e.reason == D.WRONG_TYPE and "score" in e.detail
    e = reject(
        {"type": "feedback", "request_id": "r", "score": 1, "comment": "x" * 11}, decoder=dec(max_field_chars=10)
    )
    assert e.reason == D.FIELD_TOO_LONG and "comment" in e.detail


def test_interaction_type_is_explicitly_allowed() -> None:
    assert decode({"type": "interaction", "request_id": "r", "prompt": "p"})[0] == "interaction"


@pytest.mark.parametrize("kind", ["Feedback", "click", "", 3, ["feedback"]])
def test_unknown_type_is_rejected(kind: Any) -> None:
    e = reject({"type": kind, "request_id": "r", "prompt": "p"})
    assert e.reason in (D.UNKNOWN_TYPE, D.WRONG_TYPE)
    if isinstance(kind, str):
        assert e.reason == D.UNKNOWN_TYPE and repr(kind) in e.detail


# --- rejects --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason", "named"),
    [
        (b'{"request_id": "x", "prompt": ', D.INVALID_JSON, "JSON"),
        (b"", D.INVALID_JSON, "JSON"),
        (b'{"request_id": "x", "prompt": NaN}', D.INVALID_JSON, "JSON"),
        (b'{"request_id": "x", "prompt": "a\\ud800"}', D.INVALID_JSON, "lone UTF-16 surrogate escape \\ud800"),
        (b'{"request_id": "x", "prompt": "a\\udc00b"}', D.INVALID_JSON, "surrogate"),
        (b'{"request_id": "x", "prompt": "caf\xc3\x28"}', D.INVALID_UTF8, "UTF-8"),
        (b'{"request_id": "x", "prompt": "\xed\xa0\x80"}', D.INVALID_UTF8, "UTF-8"),  # UTF-8-encoded surrogate
        (b'{"request_id": "x\xff", "prompt": "p"}', D.INVALID_UTF8, "UTF-8"),
        (b'{"request_id": "x", "prompt": "a\\u0000b"}', D.NUL_BYTE, "NUL"),
        (b'{"request_id": "x", "prompt": "p", "metadata": {"k\\u0000": 1}}', D.NUL_BYTE, "NUL"),
        (b'{"request_id": "x", "prompt": "p", "tenant": ["\\u0000"]}', D.NUL_BYTE, "NUL"),
        (b'{"request_id": "x", "messages": [{"role": "user", "content": "\\u0000"}]}', D.NUL_BYTE, "NUL"),
        (b'{"request_id": "x", "prompt": "p", "tokens_in": "many"}', D.WRONG_TYPE, "tokens_in"),
        (b'{"request_id": "x", "prompt": "p", "tokens_in": -1}', D.WRONG_TYPE, "tokens_in"),
        (b'{"request_id": "x", "prompt": "p", "tokens_out": 2147483648}', D.WRONG_TYPE, "tokens_out"),
        (b'{"request_id": "x", "prompt": "p", "tokens_in": 1.5}', D.WRONG_TYPE, "tokens_in"),
        (b'{"request_id": "x", "prompt": "p", "latency_ms": -3}', D.WRONG_TYPE, "latency_ms"),
        (b'{"request_id": "x", "prompt": "p", "latency_ms": "fast"}', D.WRONG_TYPE, "latency_ms"),
        (b'{"request_id": "x", "prompt": 5}', D.WRONG_TYPE, "prompt"),
        (b'{"request_id": "x", "prompt": "p", "metadata": [1]}', D.WRONG_TYPE, "metadata"),
        (b'{"request_id": "x", "prompt": "p", "user_id": 42}', D.WRONG_TYPE, "user_id"),
        (b'{"request_id": "x", "prompt": "p", "feedback": "good"}', D.WRONG_TYPE, "feedback"),
        (b'{"request_id": "x", "prompt": "p", "feedback": true}', D.WRONG_TYPE, "feedback"),
        (b'{"request_id": "x", "prompt": "p", "feedback": 1e13}', D.WRONG_TYPE, "feedback"),
        (b'{"request_id": "x", "messages": [{"content": "hi"}]}', D.MISSING_FIELD, "role"),
        (b'{"request_id": "x", "messages": "hi"}', D.WRONG_TYPE, "messages"),
        (b'{"request_id": 7, "prompt": "p"}', D.WRONG_TYPE, "request_id"),
        (b'{"request_id": "", "prompt": "p"}', D.WRONG_TYPE, "request_id"),
        (b'{"prompt": "no id"}', D.MISSING_FIELD, "request_id"),
        (b'{"request_id": null, "prompt": "p"}', D.WRONG_TYPE, "request_id"),
        (b'["request_id", "x"]', D.NOT_AN_OBJECT, "object"),
        (b'"a string"', D.NOT_AN_OBJECT, "str"),
        (b"42", D.NOT_AN_OBJECT, "int"),
        (b"null", D.NOT_AN_OBJECT, "object"),
    ],
)
def test_bad_input_gives_reason_and_names_the_problem(raw: bytes, reason: str, named: str) -> None:
    e = reject(raw)
    assert e.reason == reason, e
    assert named in e.detail, e


@pytest.mark.parametrize(("reason", "raw"), sorted(BAD_MESSAGES.items()))
def test_sample_bad_messages_have_their_reason(reason: str, raw: bytes) -> None:
    assert reject(raw).reason == reason


def test_tombstone_is_rejected() -> None:
    with pytest.raises(InvalidMessage) as ei:
        dec().decode(None, src(), NOW)
    assert ei.value.reason == D.INVALID_JSON and "tombstone" in ei.value.detail


def test_oversize() -> None:
    raw = json.dumps({"request_id": "r", "prompt": "x" * 200}).encode()
    e = reject(raw, decoder=dec(max_message_bytes=100))
    assert e.reason == D.OVERSIZE and str(len(raw)) in e.detail and "100" in e.detail
    assert decode(raw, decoder=dec(max_message_bytes=len(raw)))[0] == "interaction"


def test_request_id_longer_than_256_chars() -> None:
    assert decode({"request_id": "r" * 256, "prompt": "p"})[1]["request_id"] == "r" * 256
    e = reject({"request_id": "r" * 257, "prompt": "p"})
    assert e.reason == D.WRONG_TYPE and "request_id" in e.detail


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"request_id": "r", "prompt": "x" * 11}, "prompt"),
        ({"request_id": "r", "prompt": "p", "response": "x" * 11}, "response"),
        ({"request_id": "r", "prompt": "p", "reference": "x" * 11}, "reference"),
        ({"request_id": "r", "prompt": "p", "user_id": "x" * 11}, "user_id"),
        ({"request_id": "r", "messages": [{"role": "user", "content": "x" * 11}]}, "messages.content"),
        ({"request_id": "r", "prompt": "p", "feedback": {"comment": "x" * 11}}, "feedback.comment"),
        ({"request_id": "r", "prompt": "p", "feedback": {"correction": "x" * 11}}, "feedback.correction"),
    ],
)
def test_field_too_long(record: dict[str, Any], named: str) -> None:
    d = dec(max_field_chars=10)
    e = reject(record, decoder=d)
    assert e.reason == D.FIELD_TOO_LONG and repr(named) in e.detail and "11" in e.detail
    # exactly at the limit is fine
    at_limit = json.loads(json.dumps(record).replace("x" * 11, "x" * 10))
    assert decode(at_limit, decoder=d)[0] == "interaction"


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"request_id": "r", "prompt": "p", "model_id": "m" * 257}, "model_id"),
        ({"request_id": "r", "prompt": "p", "session_id": "s" * 257}, "session_id"),
        ({"request_id": "r", "prompt": "p", "finish_reason": "f" * 65}, "finish_reason"),
        ({"request_id": "r", "messages": [{"role": "r" * 65, "content": "c"}]}, "role"),
    ],
)
def test_short_columns_are_bounded(record: dict[str, Any], named: str) -> None:
    e = reject(record)
    assert e.reason == D.WRONG_TYPE and named in e.detail


@pytest.mark.parametrize("depth", [101, 990, 5000])
def test_deeply_nested_json_is_invalid_json(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for raw in (
        b'{"request_id": "r", "prompt": "p", "metadata": {"x": ' + nested + b"}}",
        b'{"request_id": "r", "prompt": "p", "deep": ' + nested + b"}",
        nested,
    ):
        e = reject(raw)
        assert e.reason == D.INVALID_JSON and "nested" in e.detail, e


def test_moderate_nesting_is_fine() -> None:
    nested: Any = "leaf"
    for _ in range(45):  # 90 levels, plus the record and the metadata object
        nested = {"k": [nested]}
    _, row, _ = decode({"request_id": "r", "prompt": "p", "metadata": nested, "extra": nested})
    assert row["metadata"]["k"] == nested["k"] and row["metadata"]["extra"] == nested


def test_bracket_heavy_text_is_not_mistaken_for_nesting() -> None:
    text = "code: " + "[" * 300 + "{" * 300
    _, row, _ = decode({"request_id": "r", "prompt": text, "metadata": {"a": {"b": 1}}})
    assert row["prompt"] == text and row["metadata"] == {"a": {"b": 1}}


def test_huge_integers_in_metadata_survive() -> None:
    _, row, _ = decode({"request_id": "r", "prompt": "p", "big": 10**40, "neg": -(10**40)})
    assert row["metadata"] == {"big": 10**40, "neg": -(10**40)}


def test_non_ascii_text_round_trips() -> None:
    text = "naïve café — 日本語 🙂 \uffff \u2028"
    _, row, _ = decode({"request_id": "é-🙂", "prompt": text})
    assert row["prompt"] == text and row["request_id"] == "é-🙂"


# --- PostgreSQL accepts what the decoder returns ------------------------------------------------


def test_edge_case_rows_are_accepted_by_postgresql(pg_url: str) -> None:
    """Rows from awkward but valid input insert cleanly into the real tables."""
    from sqlalchemy import func, select

    from driftloop.store.db import create_engine_from_url
    from driftloop.store.models import feedback, interactions

    awkward = "naïve 日本語 🙂 \uffff \u2028 \\u0000 (escaped, not NUL) \x01\x1f"
    recs: list[dict[str, Any]] = [
        {"request_id": "r" * 256, "prompt": awkward, "big": 10**40, "flt": 1e300, "neg": -(10**30)},
        {"request_id": "🙂" * 256, "messages": [{"role": "user", "content": awkward}], "metadata": {"🙂": [None]}},
        {"request_id": "r3", "prompt": "p", "tokens_in": 2**31 - 1, "tokens_out": 0, "latency_ms": 1e12},
        {"request_id": "r4", "prompt": "p", "model_id": "m" * 256, "finish_reason": "f" * 64, "feedback": 1e12},
        {
            "request_id": "r5",
            "prompt": "p",
            "user_id": "u" * 1000,
            "feedback": {"comment": awkward, "feedback_id": "f" * 256},
        },
    ]
    rows, fbs = [], []
    for i, rec in enumerate(recs):
        _, row, fb = decode(rec, source=src(offset=2**63 - 1 - i))
        rows.append(row)
        fbs.extend(fb)
    _, fb_event, _ = decode({"type": "feedback", "request_id": "r" * 256, "comment": awkward, "x": 10**40})
    fbs.append(fb_event)
    eng = create_engine_from_url(pg_url)
    try:
        with eng.begin() as c:
            c.execute(interactions.insert(), rows)
            c.execute(feedback.insert(), fbs)
        with eng.connect() as c:
            assert c.execute(select(func.count()).select_from(interactions)).scalar() == len(recs)
            assert c.execute(select(func.count()).select_from(feedback)).scalar() == len(fbs)
            got = c.execute(
                select(interactions.c.prompt, interactions.c.metadata).where(interactions.c.request_id == "r" * 256)
            ).one()
            assert got.prompt == awkward and got.metadata["big"] == 10**40
    finally:
        eng.dispose()


def test_spool_dirs_of_dead_consumers_are_removed(tmp_path: Path) -> None:
    """A consumer killed with kill -9 leaves its batch spool behind; the next one removes it."""
    from driftloop.ingest import step

    dead = tmp_path / f"{step._SPOOL_PREFIX}999999999-abc"  # no such pid
    alive = tmp_path / f"{step._SPOOL_PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated"
    for d in (dead, alive, other):
        d.mkdir()
        (d / "1.batch").write_bytes(b"x")
    new = step.make_spool_dir(str(tmp_path))
    assert not dead.exists()
    assert alive.exists() and other.exists()
    assert Path(new).parent == tmp_path and Path(new).name.startswith(f"{step._SPOOL_PREFIX}{os.getpid()}-")


@pytest.mark.parametrize(("meta_depth", "ok"), [(99, True), (100, False)])
def test_metadata_nesting_limit_is_exact_on_the_fast_path(meta_depth: int, ok: bool) -> None:
    meta: Any = 1
    for _ in range(meta_depth):
        meta = {"k": meta}
    rec = {"request_id": "r", "prompt": "p", "metadata": meta}  # known fields only: the fast path
    if ok:
        assert decode(rec)[1]["metadata"] == meta
    else:
        assert reject(rec).reason == D.INVALID_JSON
