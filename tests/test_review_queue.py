"""The human review queue (driftloop.monitor.review): sampling into slices, claims with a lease, labels as scores.

PostgreSQL for the queue semantics (claims under concurrency use ``FOR UPDATE SKIP LOCKED``); SQLite where the
same code must also work (the conditional-update claim); the dataset builder reads reviewers' corrections.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest
from sqlalchemy import Engine, func, insert, select

from driftloop.jobs import JobContext, run_named
from driftloop.monitor.review import (
    ReviewError,
    claim_next,
    in_uniform,
    label_item,
    review_items,
    sample_once,
    skip_item,
    stats,
)
from driftloop.monitor.tables import monitor_windows
from driftloop.retrain.dataset import select_records
from driftloop.settings.retrain import DataSettings
from driftloop.settings.review import ReviewSettings
from driftloop.store.db import create_engine_from_url
from driftloop.store.scores import Score, record_scores, scores
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction

NOW = T0 + timedelta(hours=1)
LEASE = 600.0


def cfg(**over: Any) -> ReviewSettings:
    return ReviewSettings(enabled=True, **over)


def items(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as c:
        return {r.request_id: dict(r._mapping) for r in c.execute(select(review_items))}


def rows(n: int, model: str = "m", start: int = 0) -> list[dict[str, Any]]:
    return [interaction(i, model=model, prompt=f"question {i} for {model}", response=f"answer {i * 7 % 13}")
            for i in range(start, start + n)]  # fmt: skip


@pytest.fixture
def pg(pg_url: str) -> Engine:
    return create_engine_from_url(pg_url)


def test_uniform_slice_is_a_content_hash_sample_independent_of_order_and_feedback(pg: Engine, sqlite_url: str) -> None:
    data = rows(2000)
    # every third record gets negative feedback: the uniform slice must not care
    insert_rows(pg, data, scores={r["request_id"]: 0.0 for r in data[::3]})
    other = create_engine_from_url(sqlite_url)
    insert_rows(other, list(reversed(data)))  # other arrival order (and so other ids), no feedback
    c = cfg(negative_feedback={"rate": 0.0})
    added = sample_once(pg, c, 0.5, NOW)
    assert added["uniform"] == len(items(pg))
    assert sample_once(other, c, 0.5, NOW)["uniform"] == added["uniform"]
    assert set(items(pg)) == set(items(other)), "membership depends on content only, not on ids or arrival"
    pol = c.for_model("m")
    expected = {r["request_id"] for r in data if in_uniform(c, pol, "m", r["prompt"], r["response"])}
    assert set(items(pg)) == expected
    assert binomtest(len(expected), len(data), c.uniform_rate).pvalue > 1e-4
    neg = {r["request_id"] for r in data[::3]}
    assert binomtest(len(expected & neg), len(neg), c.uniform_rate).pvalue > 1e-4
    assert all(i["slice"] == "uniform" and i["sample_rate"] == c.uniform_rate for i in items(pg).values())
    # a rerun reads past its cursor only: nothing is added twice
    assert sample_once(pg, c, 0.5, NOW) == {"uniform": 0, "drift": 0, "low_confidence": 0, "negative_feedback": 0}
    # a different seed draws a different (still uniform-rate) sample
    other_seed = cfg(seed="another")
    diff = {r["request_id"] for r in data if in_uniform(other_seed, pol, "m", r["prompt"], r["response"])}
    assert diff != expected and binomtest(len(diff), len(data), 0.1).pvalue > 1e-4


def test_targeted_slices_never_touch_the_uniform_slice(pg: Engine) -> None:
    data = rows(600)
    insert_rows(pg, data, scores={r["request_id"]: 0.0 for r in data[:300]})
    with pg.begin() as conn:
        conn.execute(insert(monitor_windows), {
            "model_id": "m", "segment": "", "window_kind": "count", "window_index": 3,
            "window_start": T0 + timedelta(seconds=300), "window_end": T0 + timedelta(seconds=399), "n_records": 100,
            "ref_kind": "previous", "ref_n": 100, "status": "ok", "drifted": True, "created_at": NOW})  # fmt: skip
    record_scores_for = [r["request_id"] for r in data[450:]]
    with pg.begin() as conn:
        record_scores(conn, [Score(rid, "estimator:v1", 0.55 if k % 2 else 0.95)
                             for k, rid in enumerate(record_scores_for)])  # fmt: skip
    c = cfg(drift={"rate": 1.0, "max_per_run": 1000}, low_confidence={"rate": 1.0, "max_per_run": 1000},
            negative_feedback={"rate": 1.0, "max_per_run": 1000})  # fmt: skip
    pol = c.for_model("m")
    uniform = {r["request_id"] for r in data if in_uniform(c, pol, "m", r["prompt"], r["response"])}
    out = sample_once(pg, c, 0.5, NOW)
    got = items(pg)
    by_slice = {s: {k for k, v in got.items() if v["slice"] == s} for s in ("uniform", "drift", "low_confidence",
                                                                           "negative_feedback")}  # fmt: skip
    assert by_slice["uniform"] == uniform and out["uniform"] == len(uniform)
    ids = {r["request_id"]: i for i, r in enumerate(data)}
    assert by_slice["negative_feedback"] == {k for k in ids if ids[k] < 300} - uniform
    assert by_slice["drift"] == {k for k in ids if 300 <= ids[k] <= 399} - uniform
    assert by_slice["low_confidence"] == {rid for k, rid in enumerate(record_scores_for) if k % 2} - uniform
    assert all(got[k]["reason"] for s in ("drift", "low_confidence", "negative_feedback") for k in by_slice[s])
    assert {out[s] for s in by_slice} == {len(by_slice[s]) for s in by_slice}


def test_the_drift_slice_takes_the_drifted_windows_workload_only(pg: Engine) -> None:
    # two workloads of one model interleaved over the same time span; only the "rag" window drifted
    data = [{**r, "workload": ("rag", "agent", None)[k % 3]} for k, r in enumerate(rows(300))]
    insert_rows(pg, data)
    with pg.begin() as conn:
        for wl, drifted in (("rag", True), ("agent", False), ("", False)):
            conn.execute(insert(monitor_windows), {
                "model_id": "m", "workload": wl, "segment": "", "window_kind": "count", "window_index": 0,
                "window_start": T0, "window_end": T0 + timedelta(seconds=299), "n_records": 100, "ref_kind": "previous",
                "ref_n": 100, "status": "ok", "drifted": drifted, "created_at": NOW})  # fmt: skip
    c = cfg(uniform_rate=0.0, drift={"rate": 1.0, "max_per_run": 1000})
    assert sample_once(pg, c, 0.5, NOW)["drift"] == 100
    workload = {r["request_id"]: r["workload"] for r in data}
    assert {workload[k] for k, v in items(pg).items() if v["slice"] == "drift"} == {"rag"}


def test_targeted_rates_caps_and_workload_overrides(pg: Engine) -> None:
    data, quiet = rows(400), rows(400, model="quiet")
    insert_rows(pg, data + quiet, scores={r["request_id"]: 0.1 for r in data + quiet})
    c = cfg(negative_feedback={"rate": 0.5, "max_per_run": 15},
            workloads={"quiet": {"uniform_rate": 0.0, "negative_feedback": {"rate": 0.0}}})  # fmt: skip
    first = sample_once(pg, c, 0.5, NOW)
    got = items(pg).values()
    assert not [i for i in got if i["model_id"] == "quiet"], "the override turned both slices off"
    assert sum(i["slice"] == "negative_feedback" for i in got) == first["negative_feedback"] == 15
    second = sample_once(pg, c, 0.5, NOW)
    assert second["negative_feedback"] == 15, "the next run takes the next ones up to the cap"
    # a record rejected by its slice's coin stays rejected: the runs stop when the eligible half is used up
    total = 30
    while (n := sample_once(pg, c, 0.5, NOW)["negative_feedback"]) > 0:
        total += n
    eligible = len(data) - first["uniform"]
    assert binomtest(total, eligible, 0.5).pvalue > 1e-4 and total < eligible


def _queue(engine: Engine, n: int) -> list[int]:
    insert_rows(engine, rows(n))
    sample_once(engine, cfg(uniform_rate=1.0), 0.5, NOW)
    with engine.connect() as c:
        return [r[0] for r in c.execute(select(review_items.c.id).order_by(review_items.c.id))]


@pytest.mark.parametrize("which", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_claim_label_skip_and_lease(which: str, request: pytest.FixtureRequest) -> None:
    eng = request.getfixturevalue("pg") if which == "pg" else create_engine_from_url(request.getfixturevalue(
        "sqlite_url"))  # fmt: skip
    ids = _queue(eng, 3)
    t = datetime.now(UTC)
    a = claim_next(eng, "alice", LEASE, now=t)
    assert a is not None and a.id == ids[0] and a.claimed_by == "alice"
    assert a.prompt == "question 0 for m" and a.lease_expires_at == a.claimed_at + timedelta(seconds=LEASE)
    again = claim_next(eng, "alice", LEASE, now=t + timedelta(seconds=5))
    assert again is not None and again.id == a.id, "a reviewer's unexpired claim comes back (a reloaded page)"
    b = claim_next(eng, "bob", LEASE, now=t + timedelta(seconds=5))
    assert b is not None and b.id == ids[1]
    with pytest.raises(ReviewError) as e:
        label_item(eng, a.id, "bob", 1.0)
    assert e.value.code == 409 and "not claimed by you" in str(e.value)
    with pytest.raises(ReviewError) as e:
        label_item(eng, 10**9, "alice", 1.0)
    assert e.value.code == 404
    s = label_item(eng, a.id, "alice", 0.0, correction="a better answer", tags=["wrong", "tone"])
    with eng.connect() as c:
        row = c.execute(select(scores).where(scores.c.request_id == a.request_id)).one()
    assert (row.source, row.value, row.correction) == ("human_review", 0.0, "a better answer")
    assert row.tags == ["wrong", "tone"]
    assert row.metadata["slice"] == "uniform" and row.metadata["review_item"] == a.id and s.event == f"review:{a.id}"
    with pytest.raises(ReviewError) as e:
        label_item(eng, a.id, "alice", 1.0)
    assert e.value.code == 409 and "already labelled" in str(e.value)
    # bob's claim expires: carol takes it over; bob can no longer label it
    late = t + timedelta(seconds=LEASE + 10)
    c2 = claim_next(eng, "carol", LEASE, now=late)
    assert c2 is not None and c2.id == b.id
    with pytest.raises(ReviewError):
        label_item(eng, b.id, "bob", 1.0)
    skip_item(eng, c2.id, "carol", "cannot judge code")
    last = claim_next(eng, "carol", LEASE, now=late)
    assert last is not None and last.id == ids[2]
    skip_item(eng, last.id, "carol")
    assert claim_next(eng, "carol", LEASE, now=late) is None
    counts = {(r["slice"], r["status"]): r["n"] for r in stats(eng)}
    assert counts == {("uniform", "labelled"): 1, ("uniform", "skipped"): 2}


def test_concurrent_reviewers_never_get_the_same_item(pg: Engine) -> None:
    ids = _queue(pg, 40)
    got: dict[str, list[int]] = {}
    start = threading.Barrier(8)

    def reviewer(name: str) -> None:
        start.wait()
        mine = got.setdefault(name, [])
        while (it := claim_next(pg, name, LEASE)) is not None:
            mine.append(it.id)
            label_item(pg, it.id, name, 1.0)

    threads = [threading.Thread(target=reviewer, args=(f"r{k}",)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    claimed = [i for v in got.values() for i in v]
    assert sorted(claimed) == ids, "every item labelled exactly once"
    with pg.connect() as c:
        assert c.execute(select(func.count()).select_from(scores)).scalar_one() == len(ids)


def test_filters_and_redacted_content_only(pg: Engine) -> None:
    insert_rows(pg, [interaction(1, model="a", prompt="mail [EMAIL] please", response="sure"),
                     interaction(2, model="b", prompt="call [PHONE]", response="ok")])  # fmt: skip
    sample_once(pg, cfg(uniform_rate=1.0), 0.5, NOW)
    it = claim_next(pg, "x", LEASE, model_id="b")
    assert it is not None and it.model_id == "b" and it.prompt == "call [PHONE]"
    assert claim_next(pg, "y", LEASE, slices=["drift"]) is None
    assert set(it.__dict__) == {"id", "request_id", "model_id", "slice", "reason", "ts", "prompt", "response",
                                "claimed_by", "claimed_at", "lease_expires_at"}  # fmt: skip


def test_reviewer_corrections_flow_into_the_dataset(pg: Engine) -> None:
    now = datetime.now(UTC)
    data = [interaction(i, ts=now - timedelta(minutes=30 - i), prompt=f"how do I do thing {i}?",
                        response=f"an answer about {i}") for i in range(4)]  # fmt: skip
    insert_rows(pg, data)
    sample_once(pg, cfg(uniform_rate=1.0), 0.5, now)
    first = claim_next(pg, "rev", LEASE)
    assert first is not None
    label_item(pg, first.id, "rev", 0.0, correction="the corrected answer, reviewed")
    second = claim_next(pg, "rev", LEASE)
    assert second is not None
    label_item(pg, second.id, "rev", 0.0)  # negative without a correction: not training data
    recs, _ = select_records(pg, "m", DataSettings(lookback_hours=2), now, positive_threshold=0.5)
    got = [(r["request_id"], r["response"], r["source"]) for r in recs]
    assert got == [(first.request_id, "the corrected answer, reviewed", "correction")]
    off, _ = select_records(pg, "m", DataSettings(lookback_hours=2, use_corrections=False), now, positive_threshold=0.5)
    assert off == []


def test_the_review_sample_job(pg_url: str, tmp_path: Path) -> None:
    eng = create_engine_from_url(pg_url)
    now = datetime.now(UTC)
    # a history from before review was turned on, then recent traffic
    insert_rows(eng, [interaction(i, prefix="old", ts=now - timedelta(days=30)) for i in range(50)])
    insert_rows(eng, [interaction(i, prompt=f"recent {i}", ts=now - timedelta(minutes=5)) for i in range(50)])
    off = JobContext(make_settings(pg_url), eng, "test")
    assert run_named("review_sample", off) == "skipped"
    on = JobContext(make_settings(pg_url, quality={"review": {"enabled": True, "uniform_rate": 0.5}}), eng, "test")
    assert run_named("review_sample", on) == "succeeded"
    got = items(eng)
    assert 0 < len(got) < 50 and all(k.startswith("r-") for k in got), "the first run starts lookback_hours back"
    from driftloop.jobs import JOBS

    assert JOBS["review_sample"].interval_s(on.settings) == 60 and JOBS["review_sample"].interval_s(off.settings) == 0


def test_retention_drops_old_review_items(pg_url: str) -> None:
    eng = create_engine_from_url(pg_url)
    now = datetime.now(UTC)
    insert_rows(eng, [interaction(i, ts=now - timedelta(days=10 if i < 2 else 0)) for i in range(4)])
    sample_once(eng, cfg(uniform_rate=1.0, lookback_hours=24 * 30), 0.5, now)
    assert len(items(eng)) == 4
    with eng.begin() as c:  # the first two were queued when they arrived, ten days ago
        c.execute(review_items.update().where(review_items.c.request_id.in_(["r-m-0", "r-m-1"]))
                  .values(created_at=now - timedelta(days=10)))  # fmt: skip
    s = make_settings(pg_url, scheduler={"retention": {"interactions_days": 7}})
    assert run_named("retention", JobContext(s, eng, "test")) == "succeeded"
    assert set(items(eng)) == {"r-m-2", "r-m-3"}
