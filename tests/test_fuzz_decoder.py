"""Property tests: `Decoder.decode` turns ANY bytes into a storable row or an InvalidMessage.

A storable row: every string (recursively, keys included) is NUL-free and UTF-8 encodable, token
counts fit int32, timestamps are timezone-aware, request_id is 1..256 characters.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from driftloop.ingest import decode as d
from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source
from driftloop.ingest.redact import Redactor
from driftloop.ingest.sample import sample_records

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SRC = Source("t", 0, 0, int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp() * 1000))
REASONS = {
    d.OVERSIZE,
    d.INVALID_UTF8,
    d.INVALID_JSON,
    d.NOT_AN_OBJECT,
    d.NUL_BYTE,
    d.MISSING_FIELD,
    d.WRONG_TYPE,
    d.BAD_TIMESTAMP,
    d.FIELD_TOO_LONG,
    d.UNKNOWN_TYPE,
}  # INTERNAL_ERROR is deliberately absent: it would mean a bug
DECODER = Decoder(DecodePolicy(max_message_bytes=64 * 1024, max_field_chars=2000), Redactor())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "é", "😀", "a@b.io", "415-555-0132", "", " " * 3]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=25,
)
FIELDS = sorted(d.INTERACTION_FIELDS | d.FEEDBACK_FIELDS)


def check_decoded(out: d.Decoded) -> None:
    kind, row, fb_rows = out
    assert kind in ("interaction", "feedback")
    rows = [row, *fb_rows]
    if kind == "feedback":
        assert fb_rows == []
    for r in rows:
        assert_storable(r)
        assert isinstance(r["request_id"], str) and 1 <= len(r["request_id"]) <= 256
        assert r["ts"].tzinfo is not None and r["ts"].utcoffset() is not None
        assert NOW.year - 30 < r["ts"].year <= NOW.year
    if kind == "interaction":
        for k in ("tokens_in", "tokens_out"):
            v = row[k]
            assert v is None or (type(v) is int and 0 <= v <= 2**31 - 1)
        assert row["prompt"] is not None
        assert "user_id" not in row
        # JSON columns must encode
        d.encode_json(row["metadata"])
        d.encode_json(row["messages"])
    for f in fb_rows if kind == "interaction" else [row]:
        assert isinstance(f["event_key"], str) and f["event_key"]
        assert f["score"] is None or isinstance(f["score"], float)


def assert_storable(obj: Any) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            assert "\x00" not in o
            o.encode("utf-8")  # raises on lone surrogates
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            stack.extend(o)
        elif isinstance(o, float):
            assert o == o and abs(o) != float("inf")


def run(raw: bytes) -> d.Decoded | None:
    try:
        out = DECODER.decode(raw, SRC, NOW)
    except InvalidMessage as e:
        assert e.reason in REASONS, f"{e.reason}: {e.detail}"
        assert e.detail and isinstance(e.detail, str)
        return None
    check_decoded(out)
    return out


def dumps(obj: Any) -> bytes:
    # ensure_ascii: lone surrogates and NULs become \\u escapes, as other JSON producers send them
    return json.dumps(obj, ensure_ascii=True).encode()


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    run(raw)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_inside_an_object(junk: bytes) -> None:
    run(b'{"request_id": "r", "prompt": "' + junk + b'"}')
    run(b'{"request_id": "r", "prompt": "x", ' + junk + b"}")


@FUZZ
@given(JSONISH)
def test_arbitrary_json_values(value: Any) -> None:
    run(dumps(value))


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), TEXT), JSONISH, max_size=5))
def test_objects_with_known_and_unknown_fields(obj: dict[str, Any]) -> None:
    run(dumps(obj))
    run(dumps({"request_id": "r-1", "prompt": "p", **obj}))


_BASE = list(sample_records(20, seed=1, start=datetime(2024, 5, 1, 9, tzinfo=UTC), pii_share=0.5))


@FUZZ
@given(
    st.integers(min_value=0, max_value=len(_BASE) - 1),
    st.sampled_from([*FIELDS, "metadata", "extra", "feedback", "messages"]),
    JSONISH,
    st.booleans(),
)
def test_mutated_valid_records(i: int, field: str, value: Any, drop: bool) -> None:
    obj = dict(_BASE[i])
    if drop:
        obj.pop(field, None)
    else:
        obj[field] = value
    run(dumps(obj))


_MSG = st.fixed_dictionaries({"role": st.one_of(TEXT, st.integers()), "content": st.one_of(st.none(), TEXT, JSONISH)})


@FUZZ
@given(
    st.lists(_MSG, max_size=4),
    st.one_of(
        st.none(),
        st.floats(),
        st.integers(),
        st.dictionaries(st.sampled_from(["score", "comment", "feedback_id"]), SCALARS),
    ),
    st.one_of(
        st.none(),
        st.integers(),
        st.integers(min_value=-(10**16), max_value=10**16),
        st.floats(allow_nan=False, min_value=-1e16, max_value=1e16),
        TEXT,
        st.booleans(),
        st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
        st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-05-01T09:00:00Z"]),
    ),
    st.sampled_from([None, "interaction", "feedback"]),
)
def test_structured_records(msgs: list[Any], feedback: Any, ts: Any, kind: str | None) -> None:
    obj: dict[str, Any] = {"request_id": "r", "messages": msgs, "timestamp": ts, "feedback": feedback, "score": 1}
    if kind:
        obj["type"] = kind
    try:
        raw = dumps(obj)
    except ValueError:  # nan/inf floats are not JSON
        assume(False)
    run(raw)


@FUZZ
@given(st.integers(min_value=0, max_value=len(_BASE) - 1), st.integers(min_value=0, max_value=2**32), st.integers(1, 8))
def test_byte_flips_of_valid_records(i: int, seed: int, flips: int) -> None:
    raw = bytearray(dumps(_BASE[i]))
    rng = random.Random(seed)
    for _ in range(flips):
        pos = rng.randrange(len(raw))
        choice = rng.random()
        if choice < 0.4:
            raw[pos] = rng.randrange(256)
        elif choice < 0.7:
            del raw[pos]
        else:
            raw[pos:pos] = rng.choice(
                [b"\\u0000", b"\\ud800", b"\x00", b"\xff", b"[", b"{", b'"', b"\\", b"99999999999999999999"]
            )
    run(bytes(raw))


def test_deeply_nested_json_is_rejected_cleanly() -> None:
    for depth in (50, 150, 1000, 20_000):
        for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
            run(b'{"request_id": "r", "prompt": "x", "metadata": {"m": ' + body + b"}}")
            run(b'{"request_id": "r", "prompt": "x", "extra": ' + body + b"}")
            run(body)


def test_lone_surrogates_and_nul_escapes_never_stored() -> None:
    for esc in (b"\\ud800", b"\\udfff", b"\\ud83d", b"\\u0000", b"\\udc00\\ud800"):
        for where in (b'"prompt": "a{}b"', b'"prompt": "x", "meta": "{}"', b'"prompt": "x", "metadata": {{"{}": 1}}'):
            raw = b'{"request_id": "r", ' + where.replace(b"{}", esc).replace(b"{{", b"{").replace(b"}}", b"}") + b"}"
            assert run(raw) is None, raw
