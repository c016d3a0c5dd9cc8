"""Dataset snapshots from stored traffic (PostgreSQL and SQLite): selection, filters, split, manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftloop.retrain.dataset import (
    DatasetError,
    build_snapshot,
    count_eligible,
    load_snapshot,
    near_key,
    select_records,
)
from driftloop.settings import FeedbackSettings
from driftloop.settings.retrain import DataSettings
from driftloop.store.db import create_engine_from_url
from tests.alpaca import store_records
from tests.retrain_helpers import toy_records

POS = FeedbackSettings().positive_threshold  # feedback.positive_threshold's default


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


def _special(start: datetime) -> list[dict]:
    base = {"model_id": "toy", "finish_reason": "stop", "latency_ms": 10.0}

    def rec(i: int, prompt: str, response: str, fb: dict) -> dict:
        ts = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        return {**base, "request_id": f"s-{i}", "timestamp": ts, "prompt": prompt, "response": response, "feedback": fb}

    return [
        rec(0, "How do I cancel?", "I'm sorry, but I cannot help with that.", {"score": 1.0}),  # refusal
        rec(1, "Say nothing", "", {"score": 1.0}),  # empty
        rec(2, "What is 2 plus 2?", "2 plus 2 is 4.", {"score": 1.0}),
        rec(3, "what is 2 plus 2", "2 plus 2 is 4", {"score": 1.0}),  # near duplicate of 2
        rec(4, "Wrong one?", "bad answer", {"score": 0.0, "correction": "the corrected answer"}),
        rec(5, "Unhelpful?", "meh", {"score": 0.0}),  # negative, no correction: not eligible
    ]


def test_selection_filters_and_corrections(db: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    store_records(db, _special(start), topic="special")
    eng = create_engine_from_url(db)
    recs, dropped = select_records(eng, "toy", DataSettings(), positive_threshold=POS)
    by_prompt = {r["prompt"]: r for r in recs}
    assert set(by_prompt) == {"What is 2 plus 2?", "Wrong one?"}
    assert by_prompt["Wrong one?"]["response"] == "the corrected answer"
    assert by_prompt["Wrong one?"]["source"] == "correction"
    assert dropped == {"refusal": 1, "empty": 1, "duplicate": 1, "cap": 0}
    # exact dedupe keeps the near duplicate; dedupe off keeps both
    recs2, dropped2 = select_records(eng, "toy", DataSettings(dedupe="exact"), positive_threshold=POS)
    assert len(recs2) == 3 and dropped2["duplicate"] == 0
    # corrections off: the corrected record is not eligible any more
    recs3, _ = select_records(eng, "toy", DataSettings(use_corrections=False), positive_threshold=POS)
    assert "Wrong one?" not in {r["prompt"] for r in recs3}
    since = start - timedelta(hours=1)
    assert count_eligible(eng, "toy", since, datetime.now(UTC), DataSettings(), positive_threshold=POS) == 5
    # feedback.positive_threshold decides what is positive: at 0 the unhelpful score-0 record counts too
    assert count_eligible(eng, "toy", since, datetime.now(UTC), DataSettings(), positive_threshold=0.0) == 6
    eng.dispose()


def test_late_feedback_event_makes_a_record_eligible(db: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    recs = toy_records("B", 3, start=start, good=False, correction_rate=0.0, prefix="late")
    store_records(db, recs, topic="t1")
    eng = create_engine_from_url(db)
    assert select_records(eng, "toy", DataSettings(), positive_threshold=POS)[0] == []
    store_records(db, [{"type": "feedback", "request_id": recs[1]["request_id"], "score": 0.0,
                        "correction": "fixed"}], topic="t2")  # fmt: skip
    got = select_records(eng, "toy", DataSettings(), positive_threshold=POS)[0]
    assert [(r["request_id"], r["response"]) for r in got] == [(recs[1]["request_id"], "fixed")]
    eng.dispose()


def test_snapshot_split_by_time_manifest_and_hash(db: str, tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    recs = toy_records("A", 300, start=start, prefix="a")
    # a prompt asked early and again late: it must not be evaluated on (it was trained on)
    dup = dict(recs[100], request_id="dup-late", timestamp=recs[-1]["timestamp"], response=recs[100]["response"] + " ok")
    store_records(db, [*recs, dup], topic="snap")
    eng = create_engine_from_url(db)
    data = DataSettings(eval_fraction=0.2, max_samples=250, min_eval_samples=10)
    snap = build_snapshot(eng, "toy", data, tmp_path / "ds", positive_threshold=POS, policy="p1")
    m = snap.manifest
    assert m["dropped"]["cap"] == 301 - m["dropped"]["duplicate"] - 250
    assert m["rows"] == m["train_rows"] + m["eval_rows"]
    assert m["train_rows"] == 200 and 40 <= m["eval_rows"] <= 50
    assert max(r["ts"] for r in snap.train) <= min(r["ts"] for r in snap.eval)  # split by time
    assert not {near_key(r["prompt"]) for r in snap.eval} & {near_key(r["prompt"]) for r in snap.train}
    assert "dup-late" not in {r["request_id"] for r in snap.eval}
    on_disk = load_snapshot(snap.path)
    assert on_disk.train == snap.train and on_disk.eval == snap.eval
    assert json.loads((snap.path / "manifest.json").read_text())["content_hash"] == snap.content_hash
    assert snap.path.name == f"p1-{snap.content_hash[:12]}"
    # same data -> same snapshot; new data -> a new version
    assert build_snapshot(eng, "toy", data, tmp_path / "ds", positive_threshold=POS, policy="p1").path == snap.path
    store_records(db, toy_records("A", 20, start=start + timedelta(hours=1), prefix="more", seed=9), topic="snap2")
    snap2 = build_snapshot(eng, "toy", data, tmp_path / "ds", positive_threshold=POS, policy="p1")
    assert snap2.content_hash != snap.content_hash and snap.path.exists()
    eng.dispose()


def test_too_little_data_is_a_clear_error(db: str, tmp_path: Path) -> None:
    store_records(db, toy_records("A", 10, start=datetime.now(UTC) - timedelta(hours=1)), topic="few")
    eng = create_engine_from_url(db)
    with pytest.raises(DatasetError, match="need >= 20 eval"):
        build_snapshot(eng, "toy", DataSettings(), tmp_path / "ds", positive_threshold=POS)
    eng.dispose()


def test_the_latest_score_decides(db: str) -> None:
    """Positive is a request's latest scored feedback (the view feedback_latest, the definition the monitor
    and the dashboards share): a record rated 1 and later 0 is no longer eligible (it was under the former
    rule, any score >= positive_feedback_min); a record rated 0 and later 1 is."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    good = toy_records("A", 2, start=start, good=True, prefix="regood")
    bad = toy_records("B", 1, start=start + timedelta(seconds=5), good=False, correction_rate=0.0, prefix="rebad")
    store_records(db, good + bad, topic="rated")
    eng = create_engine_from_url(db)

    def eligible() -> set[str]:
        return {r["request_id"] for r in select_records(eng, "toy", DataSettings(), positive_threshold=POS)[0]}

    assert eligible() == {good[0]["request_id"], good[1]["request_id"]}
    later = (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    store_records(db, [{"type": "feedback", "request_id": good[0]["request_id"], "score": 0.0, "timestamp": later},
                       {"type": "feedback", "request_id": bad[0]["request_id"], "score": 1.0, "timestamp": later}],
                  topic="rerated")  # fmt: skip
    assert eligible() == {good[1]["request_id"], bad[0]["request_id"]}
    eng.dispose()
