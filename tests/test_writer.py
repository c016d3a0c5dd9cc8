"""BatchWriter: rows streamed into the COPY while they are decoded (real PostgreSQL and SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from driftloop.ingest.decode import DecodePolicy, Decoder, Source
from driftloop.ingest.redact import Redactor
from driftloop.ingest.sample import sample_records
from driftloop.ingest.writer import Batch, BatchWriter, Row
from driftloop.store.db import create_engine_from_url, migrate


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    migrate(url)
    return url


def _decoding(records: list[dict[str, Any]], batch: Batch, seen: list[int]) -> Iterator[Row]:
    """Decode lazily like the ingest step: fill ``batch`` and yield interaction rows."""
    dec = Decoder(DecodePolicy(), Redactor())
    for i, r in enumerate(records):
        seen.append(i)
        kind, row, fbs = dec.decode(json.dumps(r).encode(), Source("t", 0, i, None))
        if kind == "interaction":
            batch.interactions.append(row)
            batch.feedback.extend(fbs)
            yield row
        else:
            batch.feedback.append(row)


def _count(url: str, table: str) -> int:
    eng = create_engine_from_url(url)
    try:
        with eng.connect() as c:
            return int(c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        eng.dispose()


def test_streamed_batch_is_written_whole_with_offsets(db_url: str) -> None:
    records = list(sample_records(300, seed=7, feedback_share=0.5))
    batch, seen = Batch(offsets={("t", 0): 300}, n_messages=300), []
    calls: list[int] = []
    eng = create_engine_from_url(db_url)
    try:
        w = BatchWriter(eng, "g")
        res = w.write(batch, stream=_decoding(records, batch, seen), before_commit=lambda: calls.append(1))
        assert w.stored_offsets([("t", 0)]) == {("t", 0): 300}
    finally:
        eng.dispose()
    n_fb = sum(1 for r in records if "feedback" in r)
    assert seen == list(range(300)) and len(batch.interactions) == 300 and calls == [1]
    assert (res.inserted, res.duplicates, res.feedback_inserted) == (300, 0, n_fb)
    assert _count(db_url, "interactions") == 300 and _count(db_url, "feedback") == n_fb


def test_streamed_duplicates_fall_back_to_the_deduplicating_path(db_url: str) -> None:
    records = list(sample_records(200, seed=8))
    eng = create_engine_from_url(db_url)
    try:
        w = BatchWriter(eng, "g")
        first = Batch()
        w.write(first, stream=_decoding(records[:50], first, []))
        # a replay of the first 50 records (unique violation inside the COPY) followed by 150 new ones
        batch, seen = Batch(), []
        res = w.write(batch, stream=_decoding(records, batch, seen))
    finally:
        eng.dispose()
    assert seen == list(range(200))  # the stream was finished although the COPY failed half-way
    assert (res.inserted, res.duplicates) == (150, 50)
    assert _count(db_url, "interactions") == 200


def test_failing_before_commit_writes_nothing(db_url: str) -> None:
    records = list(sample_records(20, seed=9))
    eng = create_engine_from_url(db_url)

    def boom() -> None:
        raise RuntimeError("dead-letter topic unreachable")

    try:
        batch = Batch(offsets={("t", 0): 20})
        with pytest.raises(RuntimeError, match="dead-letter"):
            BatchWriter(eng, "g").write(batch, stream=_decoding(records, batch, []), before_commit=boom)
        assert BatchWriter(eng, "g").stored_offsets([("t", 0)]) == {}
    finally:
        eng.dispose()
    assert _count(db_url, "interactions") == 0
