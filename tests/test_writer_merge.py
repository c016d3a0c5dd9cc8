"""BatchWriter merge rule: records sharing a request_id fill each other's empty columns (real PostgreSQL and SQLite).

The OpenTelemetry case: a span (model, tokens, timing, no content) and a log record of the same span
(content only) arrive separately, in either order, in one batch or two, and must end up as one row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from driftloop.ingest.decode import DecodePolicy, Decoder, Source
from driftloop.ingest.redact import Redactor
from driftloop.ingest.writer import Batch, BatchWriter, Row, WriteResult
from driftloop.store.db import create_engine_from_url, migrate
from driftloop.store.models import interactions

RID = "otel-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
# a span knows no content: the mappers give it an empty messages list (prompt '' once decoded)
SPAN = {"request_id": RID, "timestamp": "2026-01-05T10:00:00Z", "model_id": "gpt-4o", "messages": [],
        "tokens_in": 12, "tokens_out": 5, "latency_ms": 830.0, "finish_reason": "stop",
        "metadata": {"gen_ai.system": "openai", "shared": "from-span"}}  # fmt: skip
CONTENT = {"request_id": RID, "timestamp": "2026-01-05T10:00:01Z",
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
           "response": "Paris.", "metadata": {"shared": "from-log", "log.only": 1}}  # fmt: skip


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    migrate(url)
    return url


def _decoding(records: list[dict[str, Any]], batch: Batch, first_offset: int) -> Iterator[Row]:
    """Decode lazily like the ingest step: fill ``batch`` and yield interaction rows."""
    dec = Decoder(DecodePolicy(), Redactor())
    for i, r in enumerate(records):
        kind, row, _ = dec.decode(json.dumps(r).encode(), Source("t", 0, first_offset + i, None))
        assert kind == "interaction"
        batch.interactions.append(row)
        yield row


class _Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine_from_url(url)
        self.writer = BatchWriter(self.engine, "g")
        self.offset = 0

    def write(self, *records: dict[str, Any]) -> WriteResult:
        """One batch, streamed as the ingest step does (PostgreSQL: direct COPY first)."""
        batch = Batch(offsets={("t", 0): self.offset + len(records)}, n_messages=len(records))
        res = self.writer.write(batch, stream=_decoding(list(records), batch, self.offset))
        self.offset += len(records)
        return res

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            res = c.execute(interactions.select().order_by(interactions.c.request_id)).mappings()
            return [dict(r) for r in res]

    def row_version(self) -> str:
        """PostgreSQL's xmin of the one row: changes whenever the row is rewritten."""
        with self.engine.connect() as c:
            return str(c.execute(text("SELECT xmin::text FROM interactions")).scalar_one())


@pytest.fixture
def db(db_url: str) -> Iterator[_Db]:
    d = _Db(db_url)
    yield d
    d.engine.dispose()


def _assert_joined(row: dict[str, Any], shared: str) -> None:
    assert row["model_id"] == "gpt-4o"
    assert (row["tokens_in"], row["tokens_out"], row["latency_ms"], row["finish_reason"]) == (12, 5, 830.0, "stop")
    assert row["prompt"] == "system: Be brief.\nuser: Capital of France?"
    assert [m["role"] for m in row["messages"]] == ["system", "user"]
    assert row["response"] == "Paris."
    assert row["metadata"] == {"gen_ai.system": "openai", "shared": shared, "log.only": 1}


def test_span_then_content_fills_the_row(db: _Db) -> None:
    assert (db.write(SPAN).inserted, db.write(CONTENT).merged) == (1, 1)
    [row] = db.rows()
    _assert_joined(row, shared="from-span")  # the stored metadata key wins
    assert (row["source_offset"], row["ts"].minute, row["ts"].second) == (0, 0, 0)  # origin: the first record


def test_content_then_span_fills_the_row(db: _Db) -> None:
    db.write(CONTENT)
    assert db.rows()[0]["model_id"] == "unknown"  # the decoder's placeholder: a real model id replaces it
    res = db.write(SPAN)
    assert (res.inserted, res.merged, res.duplicates) == (0, 1, 0)
    [row] = db.rows()
    _assert_joined(row, shared="from-log")
    assert row["source_offset"] == 0 and row["ts"].second == 1


def test_both_in_one_batch_become_one_row(db: _Db) -> None:
    res = db.write(SPAN, CONTENT)
    assert (res.inserted, res.merged, res.duplicates) == (1, 1, 0)
    [row] = db.rows()
    _assert_joined(row, shared="from-span")


def test_identical_redelivery_changes_nothing(db: _Db, db_url: str) -> None:
    db.write(SPAN)
    db.write(CONTENT)
    before = db.rows()
    version = db.row_version() if db_url.startswith("postgresql") else None
    res = db.write(SPAN, CONTENT)  # a replay of both, in one batch
    assert (res.inserted, res.merged, res.duplicates) == (0, 0, 2)
    res = db.write(CONTENT)
    assert (res.inserted, res.merged, res.duplicates) == (0, 0, 1)
    assert db.rows() == before
    if version is not None:
        assert db.row_version() == version  # the row was not rewritten


def test_non_empty_values_are_never_overwritten(db: _Db) -> None:
    first = {"request_id": "r1", "model_id": "m1", "prompt": "p1", "response": "a1", "tokens_in": 3,
             "metadata": {"k": "v1"}}  # fmt: skip
    later = {"request_id": "r1", "model_id": "m2", "prompt": "p2", "response": "a2", "tokens_in": 99,
             "metadata": {"k": "v2"}, "tokens_out": 7}  # fmt: skip
    db.write(first)
    res = db.write(later)
    assert (res.merged, res.duplicates) == (1, 0)  # tokens_out was empty: filled
    [row] = db.rows()
    assert (row["model_id"], row["prompt"], row["response"], row["tokens_in"]) == ("m1", "p1", "a1", 3)
    assert (row["tokens_out"], row["metadata"]) == (7, {"k": "v1"})
    later.pop("tokens_out")
    res = db.write(later)
    assert (res.merged, res.duplicates) == (0, 1)


def test_metadata_is_merged_key_wise(db: _Db) -> None:
    db.write({"request_id": "a", "prompt": "x"}, {"request_id": "b", "prompt": "x", "metadata": {"k": 1}})
    db.write({"request_id": "a", "prompt": "y", "metadata": {"n": {"deep": [1, 2]}}},
             {"request_id": "b", "prompt": "y", "metadata": {"k": 2, "j": None}})  # fmt: skip
    a, b = db.rows()
    assert a["metadata"] == {"n": {"deep": [1, 2]}} and a["prompt"] == "x"
    assert b["metadata"] == {"k": 1, "j": None}


def test_many_merges_and_inserts_in_one_batch(db: _Db) -> None:
    spans = [{**SPAN, "request_id": f"s{i}"} for i in range(300)]
    db.write(*spans[:100])
    contents = [{**CONTENT, "request_id": f"s{i}"} for i in range(300)]
    res = db.write(*contents[:200], *spans[100:])  # 100 fill stored rows, 100 are joined inside the batch
    assert (res.inserted, res.merged, res.duplicates) == (200, 200, 0)
    rows = db.rows()
    assert len(rows) == 300
    for r in rows:
        if int(r["request_id"][1:]) < 200:
            _assert_joined(r, shared="from-span" if int(r["request_id"][1:]) < 100 else "from-log")
        else:
            assert r["response"] is None and r["model_id"] == "gpt-4o"


# --- messages in parts: per-message events of one call split over export bodies ---------------------------

T0 = 1_767_607_200_000_000_000  # 2026-01-05T10:00:00Z in ns
PARTS_KEY = "otel.message_times"


def _part(rid: str, role: str, content: str, t: int) -> dict[str, Any]:
    """A record the OTLP logs mapper makes of one per-message event alone (marked with its event time)."""
    return {"request_id": rid, "timestamp": "2026-01-05T10:00:00Z", "messages": [{"role": role, "content": content}],
            "metadata": {"source_format": "otlp_logs", "gen_ai.system": "openai", PARTS_KEY: [t]}}  # fmt: skip


def _call(rid: str) -> dict[str, dict[str, Any]]:
    return {
        "span": {**SPAN, "request_id": rid},
        "system": _part(rid, "system", "Be brief.", T0 + 1000),
        "user": _part(rid, "user", "Capital of France?", T0 + 2000),
        # a gen_ai.choice alone: the answer, no input
        "choice": {"request_id": rid, "timestamp": "2026-01-05T10:00:01Z", "messages": [], "response": "Paris.",
                   "finish_reason": "stop", "metadata": {"source_format": "otlp_logs"}},
    }  # fmt: skip


def _rendered(messages: list[dict[str, Any]]) -> str:
    """The prompt the decoder renders for one record holding all the messages."""
    _, row, _ = Decoder(DecodePolicy(), Redactor()).decode(
        json.dumps({"request_id": "x", "messages": messages}).encode(), Source("t", 0, 0, None))
    return str(row["prompt"])


def _assert_whole_call(row: dict[str, Any]) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    assert row["messages"] == msgs
    assert row["prompt"] == _rendered(msgs) == "system: Be brief.\nuser: Capital of France?"
    assert (row["response"], row["finish_reason"], row["model_id"], row["tokens_in"]) == ("Paris.", "stop",
                                                                                          "gpt-4o", 12)
    assert row["metadata"][PARTS_KEY] == [T0 + 1000, T0 + 2000]


ORDERS = [
    ["span", "system", "user", "choice"],
    ["user", "system", "choice", "span"],
    ["choice", "user", "span", "system"],
    ["system", "span", "choice", "user"],
]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_messages_in_parts_are_appended_in_event_order(db: _Db, db_url: str, order: list[str]) -> None:
    call = _call(RID)
    results = [db.write(call[name]) for name in order]  # one batch each
    assert sum(r.inserted for r in results) == 1 and sum(r.merged for r in results) == 3
    [row] = db.rows()
    _assert_whole_call(row)
    assert row["source_offset"] == 0  # origin: the first record
    version = db.row_version() if db_url.startswith("postgresql") else None
    res = db.write(*(call[n] for n in order))  # a replay of everything: nothing changes
    assert (res.inserted, res.merged, res.duplicates) == (0, 0, 4)
    for name in order:
        assert db.write(call[name]).duplicates == 1
    assert db.rows() == [row]
    if version is not None:
        assert db.row_version() == version


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_messages_in_parts_in_one_batch_and_split(db: _Db, order: list[str]) -> None:
    one, two = "otel-" + "1" * 32 + "-" + "2" * 16, "otel-" + "3" * 32 + "-" + "4" * 16
    a, b = _call(one), _call(two)
    res = db.write(*(a[n] for n in order), b[order[0]], b[order[1]])  # a whole, b's first half
    assert (res.inserted, res.merged) == (2, 4)
    res = db.write(b[order[2]], b[order[3]], a[order[1]])  # b's second half, a redelivered part
    assert res.inserted == 0 and res.merged >= 1  # a stored row filled by two records of a batch may count once
    for row in db.rows():
        _assert_whole_call(row)


def test_parts_dedup_by_time_role_and_content(db: _Db) -> None:
    """A repeated message at another time is another message; the same event again is not."""
    db.write(_part("r", "user", "yes", T0 + 1), _part("r", "assistant", "Sure?", T0 + 2))
    db.write(_part("r", "user", "yes", T0 + 3), _part("r", "user", "yes", T0 + 1))
    [row] = db.rows()
    assert [m["content"] for m in row["messages"]] == ["yes", "Sure?", "yes"]
    assert row["prompt"] == "user: yes\nassistant: Sure?\nuser: yes"
    res = db.write(_part("r", "assistant", "Sure?", T0 + 2))
    assert (res.merged, res.duplicates) == (0, 1)


def test_the_mapper_marks_parts_with_the_key_the_writer_reads() -> None:
    from driftloop.ingest.formats.otlp import MESSAGE_TIMES_KEY
    from driftloop.ingest.writer import PARTIAL_MESSAGES_KEY

    assert PARTS_KEY == PARTIAL_MESSAGES_KEY == MESSAGE_TIMES_KEY


def test_equal_times_keep_arrival_order(db: _Db) -> None:
    db.write(_part("r", "system", "S", T0))
    db.write(_part("r", "user", "U", T0))
    assert [m["role"] for m in db.rows()[0]["messages"]] == ["system", "user"]


def test_a_complete_list_is_not_appended_to(db: _Db) -> None:
    """Only marked lists (per-message events) take parts: a list from one record is the whole input."""
    db.write(CONTENT)
    res = db.write(_part(RID, "user", "Another question?", T0 + 5))
    [row] = db.rows()
    assert len(row["messages"]) == 2 and PARTS_KEY in row["metadata"]  # the key was new: filled in
    assert res.merged == 1
    db.write(_part(RID, "user", "A third?", T0 + 6))  # the stored list is still not marked as parts
    assert len(db.rows()[0]["messages"]) == 2


def test_a_marker_that_does_not_fit_its_messages_is_ignored(db: _Db) -> None:
    bad = _part("r", "user", "U", T0)
    bad["metadata"][PARTS_KEY] = [T0, T0 + 1]  # two times for one message
    db.write(_part("r", "system", "S", T0))
    db.write(bad)
    assert [m["role"] for m in db.rows()[0]["messages"]] == ["system"]
