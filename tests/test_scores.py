"""Scores: one row per quality signal with its source; ``quality_scores`` reads user feedback and the rest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from driftloop.store.db import create_engine_from_url, migrate
from driftloop.store.models import feedback
from driftloop.store.scores import Score, ScoreError, cached_values, content_key, quality_scores, record_scores

T = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        u = f"sqlite:///{tmp_path}/s.db"
        migrate(u)
        return u
    return str(request.getfixturevalue("pg_url"))


def test_view_reads_user_feedback_and_other_sources_and_writes_are_idempotent(url: str) -> None:
    eng = create_engine_from_url(url)
    with eng.begin() as c:
        c.execute(insert(feedback), [
            {"event_key": "e1", "request_id": "r1", "ts": T, "score": 1.0, "comment": None, "correction": None,
             "source": "event", "metadata": None, "ingested_at": T},
            {"event_key": "e2", "request_id": "r2", "ts": T, "score": None, "comment": "no score", "correction": None,
             "source": "event", "metadata": None, "ingested_at": T}])  # fmt: skip
        k = content_key("prompt", "answer", "rubric-v1")
        added = record_scores(c, [Score("r1", "judge:gpt", 0.2, content_key=k),
                                  Score("r2", "human_review", 1.0, correction="better answer", tags=["tone"],
                                        event="review-7")])  # fmt: skip
        assert added == 2
        assert record_scores(c, [Score("r1", "judge:gpt", 0.9, content_key=k)]) == 0  # same event: kept as is
        rows = c.execute(select(quality_scores).order_by(quality_scores.c.request_id, quality_scores.c.source)).all()
        assert [(r.request_id, r.source, r.name, r.value, r.correction) for r in rows] == [
            ("r1", "judge:gpt", "quality", 0.2, None),
            ("r1", "user", "feedback", 1.0, None),
            ("r2", "human_review", "quality", 1.0, "better answer"),
        ]  # r2's unscored feedback is not a score
        assert cached_values(c, "judge:gpt", [k, "other"]) == {k: 0.2}
    eng.dispose()


@pytest.mark.parametrize(("score", "msg"), [
    (Score("r", "user", 1.0), "ingested from Kafka"),
    (Score("r", "judge", 1.0), "is not one of"),
    (Score("r", "judge:a b", 1.0), "is not one of"),
    (Score("r", "estimator:v3", 1.5), r"outside \[0, 1\]"),
    (Score("r", "heuristic:refusal", 0.0, name="Bad Name"), "name"),
    (Score("", "human_review", 0.0), "request_id"),
])  # fmt: skip
def test_bad_scores_name_the_field(score: Score, msg: str) -> None:
    with pytest.raises(ScoreError, match=msg):
        score.validate()


def test_content_key_separates_parts() -> None:
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("a", None) == content_key("a", "")


def test_judge_names_must_be_unique() -> None:
    from pydantic import ValidationError

    from driftloop.settings import Settings

    j = {"name": "gpt", "base_url": "http://127.0.0.1:9", "model": "m"}
    with pytest.raises(ValidationError, match="names must be unique; repeated: gpt"):
        Settings(quality={"judges": [j, j]})
    assert [x.name for x in Settings(quality={"judges": [j, j | {"name": "other"}]}).quality.judges] == ["gpt", "other"]
