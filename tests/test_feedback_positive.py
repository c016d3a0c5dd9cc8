"""One definition of positive feedback (issue 13): the view ``feedback_latest`` and its threshold row.

On the same data, for two thresholds, the monitor's ``quality.feedback_positive_rate``, the dataset
builder's eligible records and the Quality dashboard's positive-rate panel (its SQL as Grafana runs it)
agree with each other and with an oracle computed here in Python: a request is positive when its latest
scored feedback (by ts, then id) has score >= ``feedback.positive_threshold``. PostgreSQL and SQLite
(the dashboard only on PostgreSQL, which is what Grafana reads).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, delete, insert, inspect, select
from sqlalchemy.engine import make_url

from driftloop.monitor.check import WindowChecker
from driftloop.monitor.windows import due_windows
from driftloop.retrain.dataset import count_eligible, select_records
from driftloop.settings import Settings
from driftloop.settings.retrain import DataSettings
from driftloop.store.db import create_engine_from_url, downgrade, migrate
from driftloop.store.feedback import (
    feedback_latest,
    feedback_settings,
    store_feedback_threshold,
    stored_feedback_threshold,
)
from driftloop.store.models import feedback
from tests.grafana_macros import ALL, TimeRange, Variable, expand
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fbm"
N = 20
THRESHOLDS = (0.5, 0.8)


def _feedback_rows() -> list[dict[str, Any]]:
    """Feedback in insertion (id) order. Requests 0, 5, 10, 15 have none; the others one scored row,
    score (i % 10) / 10, plus:

    * r1: 0.1, then later 1.0            -> latest positive although its first score was not;
    * r9: 0.9, then later 0.2            -> not positive although a score was (the old "any score" rule);
    * r2: 0.2, then later a correction without a score -> scoreless feedback is ignored: still 0.2;
    * r4: 0.9 and 0.4 at the same ts     -> the higher id wins: 0.4;
    * r8: 0.8                            -> positive at 0.8 (>=), and at 0.5.
    """
    later = T0 + timedelta(hours=1)
    rows: list[dict[str, Any]] = []

    def fb(i: int, score: float | None, ts: datetime, correction: str | None = None) -> None:
        rows.append({"event_key": f"fb-{i}-{len(rows)}", "request_id": f"r-{MODEL}-{i}", "ts": ts, "score": score,
                     "comment": None, "correction": correction, "source": "event", "metadata": None,
                     "ingested_at": datetime.now(UTC)})  # fmt: skip

    for i in range(N):
        if i % 5:
            fb(i, 0.9 if i == 4 else (i % 10) / 10, T0 + timedelta(minutes=i))
    fb(1, 1.0, later)
    fb(9, 0.2, later)
    fb(2, None, later, correction="a better answer")
    fb(4, 0.4, T0 + timedelta(minutes=4))  # same ts as its first row, higher id
    return rows


def _oracle(rows: list[dict[str, Any]], threshold: float) -> dict[str, bool]:
    """request_id -> positive, straight from the definition."""
    latest: dict[str, tuple[datetime, int, float]] = {}
    for k, r in enumerate(rows):  # k: the id order
        if r["score"] is not None and (r["request_id"] not in latest or (r["ts"], k) > latest[r["request_id"]][:2]):
            latest[r["request_id"]] = (r["ts"], k, r["score"])
    return {rid: score >= threshold for rid, (_, _, score) in latest.items()}


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    url = str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))
    eng = create_engine_from_url(url)
    insert_rows(eng, [interaction(i, model=MODEL) for i in range(N)])
    with eng.begin() as c:
        c.execute(insert(feedback), _feedback_rows())
    yield url, eng
    eng.dispose()


def _settings(url: str, threshold: float) -> Settings:
    return make_settings(
        url, feedback={"positive_threshold": threshold},
        monitor={"window": {"kind": "count", "size": N}, "reference": {"kind": "previous", "windows": 1},
                 "min_window_size": 1, "reports": False, "embeddings": {"enabled": False}, "text_drift": False,
                 "language_sample": 0},
    )  # fmt: skip


def _monitor_rate(eng: Engine, s: Settings) -> float | None:
    with eng.connect() as c:
        (win,) = due_windows(c, s.monitor, MODEL)
    res = WindowChecker(s, eng).check(win, persist=False, report=False)
    return res.metrics["quality.feedback_positive_rate"]


def _dataset_ids(eng: Engine, threshold: float, *, corrections: bool = False) -> set[str]:
    data = DataSettings(use_corrections=corrections, drop_refusals=False, drop_empty=False, dedupe="none")
    recs, _ = select_records(eng, MODEL, data, now=T0 + timedelta(days=1), since=T0 - timedelta(days=1),
                             positive_threshold=threshold)  # fmt: skip
    n = count_eligible(eng, MODEL, T0 - timedelta(days=1), T0 + timedelta(days=1), data, positive_threshold=threshold)
    assert n == len(recs)
    return {r["request_id"] for r in recs}


def _panel_sql(title: str) -> str:
    d = json.loads((ROOT / "dashboards/quality.json").read_text())
    (sql,) = [t["rawSql"] for p in d["panels"] if p["title"] == title for t in p["targets"]]
    return str(sql)


def _dashboard_rate(url: str) -> Any:
    """The 'Feedback positive rate' stat as Grafana runs it (read-only, model = MODEL)."""
    sql = expand(_panel_sql("Feedback positive rate"), TimeRange(T0 - timedelta(hours=1), T0 + timedelta(hours=1)),
                 {"model": Variable("model", [MODEL], multi=True, include_all=True, options=[MODEL]),
                  "workload": Variable("workload", ALL, multi=True, include_all=True, all_value="'__all'")})  # fmt: skip
    assert "0.5" not in sql and "feedback_latest" in sql
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, options="-c default_transaction_read_only=on") as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_monitor_dataset_builder_and_dashboard_agree(db: tuple[str, Engine]) -> None:
    url, eng = db
    rows = _feedback_rows()
    seen: dict[float, float | None] = {}
    for threshold in THRESHOLDS:
        want = _oracle(rows, threshold)
        positive = {rid for rid, pos in want.items() if pos}
        s = _settings(url, threshold)
        rate = _monitor_rate(eng, s)
        # the monitor wrote the configured threshold for every reader of the view
        assert stored_feedback_threshold(eng) == threshold
        assert rate == pytest.approx(len(positive) / len(want))
        assert _dataset_ids(eng, threshold) == positive
        with eng.connect() as c:
            view = {r.request_id: r.positive for r in c.execute(select(feedback_latest))}
        assert view == want
        if eng.dialect.name == "postgresql":
            assert float(_dashboard_rate(url)) == pytest.approx(rate)
        seen[threshold] = rate
    # the two thresholds really differ on this data (r6, r7 are positive at 0.5 only); the latest score
    # decides (r1 positive, r9 not; r4's later row of the same ts wins; r2's scoreless correction is ignored)
    assert seen[0.5] != seen[0.8]
    assert {"r-fbm-1", "r-fbm-6", "r-fbm-8"} <= _dataset_ids(eng, 0.5)
    assert not {"r-fbm-9", "r-fbm-4", "r-fbm-2"} & _dataset_ids(eng, 0.5)
    # corrections stay eligible whatever the score
    assert "r-fbm-2" in _dataset_ids(eng, 0.8, corrections=True)


def test_changing_the_setting_changes_the_dashboard_like_the_monitor(pg_url: str) -> None:
    """The dashboard reads no YAML: the stored threshold is what it applies, and the daemon's runs set it."""
    eng = create_engine_from_url(pg_url)
    try:
        insert_rows(eng, [interaction(i, model=MODEL) for i in range(N)])
        with eng.begin() as c:
            c.execute(insert(feedback), _feedback_rows())
        before = _dashboard_rate(pg_url)
        assert stored_feedback_threshold(eng) == 0.5  # the migration's seed
        assert float(before) == pytest.approx(_monitor_rate(eng, _settings(pg_url, 0.5)))
        monitor_high = _monitor_rate(eng, _settings(pg_url, 0.8))  # the monitor's run stores 0.8
        after = _dashboard_rate(pg_url)
        assert float(after) == pytest.approx(monitor_high) and float(after) < float(before)
        # the dataset builder's run stores its threshold too
        _dataset_ids(eng, 0.5)
        assert float(_dashboard_rate(pg_url)) == pytest.approx(float(before))
    finally:
        eng.dispose()


def test_threshold_row_upsert_and_a_missing_row(db: tuple[str, Engine]) -> None:
    _, eng = db
    assert stored_feedback_threshold(eng) == 0.5
    assert store_feedback_threshold(eng, 0.5) is False  # unchanged: nothing written
    assert store_feedback_threshold(eng, 0.7) is True and stored_feedback_threshold(eng) == 0.7
    with eng.connect() as c:
        pos = dict(c.execute(select(feedback_latest.c.request_id, feedback_latest.c.positive)).all())
    assert pos["r-fbm-7"] is True and pos["r-fbm-6"] is False
    # without the row nothing is called positive or negative (NULL), and the upsert recreates it
    with eng.begin() as c:
        c.execute(delete(feedback_settings))
    with eng.connect() as c:
        assert {p for _, p in c.execute(select(feedback_latest.c.request_id, feedback_latest.c.positive))} == {None}
    assert store_feedback_threshold(eng, 0.6) is True and stored_feedback_threshold(eng) == 0.6


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migration_creates_the_view_and_downgrades(backend: str, empty_pg_url: str, tmp_path: Path) -> None:
    url = empty_pg_url if backend == "postgresql" else f"sqlite:///{tmp_path}/v.db"
    migrate(url)
    eng = create_engine_from_url(url)
    try:
        insp = inspect(eng)
        assert "feedback_latest" in insp.get_view_names()
        assert [c["name"] for c in insp.get_columns("feedback_latest")] == [c.name for c in feedback_latest.columns]
        assert "feedback_latest" not in insp.get_table_names()  # a view, which autogenerate does not model
        downgrade(url, "0008_retrain_queue")
        insp = inspect(eng)
        assert "feedback_latest" not in insp.get_view_names()
        assert "feedback_settings" not in insp.get_table_names()
        migrate(url)
        assert stored_feedback_threshold(eng) == 0.5
    finally:
        eng.dispose()


def test_the_daemon_stores_the_configured_threshold_at_start(sqlite_url: str) -> None:
    from driftloop.daemon import Daemon

    s = make_settings(sqlite_url, feedback={"positive_threshold": 0.7},
                      scheduler={"enabled": False, "ingest": False})  # fmt: skip
    d = Daemon(s, ingest=False, api=False, instance="t:fb")
    stop = threading.Event()
    stop.set()  # start, then shut down at once
    assert d.run(stop) == 0
    eng = create_engine_from_url(sqlite_url)
    try:
        assert stored_feedback_threshold(eng) == 0.7
    finally:
        eng.dispose()
