"""Alert evaluation: N-of-M hysteresis (pure), backtests, and the stored lifecycle on real databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from driftloop.monitor.alerts.engine import (
    AlertEvaluationJob,
    Verdict,
    WindowPoint,
    acknowledge,
    alert_state,
    backtest,
    evaluate,
    load_points,
)
from driftloop.monitor.alerts.tables import alert_notifications, alerts
from driftloop.settings import load_settings
from driftloop.settings.conditions import parse_condition
from driftloop.store.db import downgrade, migrate
from tests.alerts_helpers import T0, Broken, HttpServer, Recorder, add_window, ensure_monitor_tables, monitor_engine
from tests.helpers import make_settings

# -- pure hysteresis -------------------------------------------------------------------------------


def _points(values: list[float | None], status: str = "ok") -> list[WindowPoint]:
    return [
        WindowPoint(i, "m", "", T0 + timedelta(minutes=5 * i), status, {} if v is None else {"drift.score": v})
        for i, v in enumerate(values)
    ]


NODE = parse_condition("drift.score > 0.3")


@pytest.mark.parametrize(
    ("values", "n", "m", "expected"),
    [
        ([0.1, 0.5], 2, 3, ("hold", 1, 2)),  # 1 of 2: not yet
        ([0.5, 0.1, 0.5], 2, 3, ("firing", 2, 3)),
        ([0.5, 0.5, None, None], 2, 3, ("firing", 2, 2)),  # windows without the metric are skipped
        ([0.5, 0.1, 0.1], 2, 3, ("hold", 1, 3)),  # no flapping between fire and clear
        ([0.5, 0.1, 0.1, 0.1], 2, 3, ("clear", 0, 3)),
        ([0.9, 0.1, 0.1, 0.1], 1, 1, ("clear", 0, 1)),
        ([0.9, 0.9, 0.9, 0.1], 3, 3, ("hold", 2, 3)),  # only the last M count
        ([], 1, 1, ("no_data", 0, 0)),
        ([None, None], 1, 1, ("no_data", 0, 0)),
    ],
)
def test_n_of_m(values: list[float | None], n: int, m: int, expected: tuple[str, int, int]) -> None:
    assert evaluate(NODE, _points(values), n, m) == Verdict(*expected)  # type: ignore[arg-type]


def test_insufficient_data_windows_are_neither_true_nor_false() -> None:
    pts = _points([0.9, 0.9])
    pts += [WindowPoint(9, "m", "", T0 + timedelta(hours=1), "insufficient_data", {"drift.score": 0.0})]
    assert evaluate(NODE, pts, 2, 2) == Verdict("firing", 2, 2)  # the unusable newest window is looked past
    only_bad = _points([0.9, 0.9], status="insufficient_data")
    assert evaluate(NODE, only_bad, 1, 1).decision == "no_data"
    errors = _points([0.9], status="error")
    assert evaluate(NODE, errors, 1, 1).decision == "no_data"


def test_evaluate_accepts_plain_metric_dicts_and_reports_latest_window() -> None:
    hist: list[Any] = [{"drift.score": 0.9}, {"drift.score": 0.8}, {}, {"latency.p95_ms": 1.0}]
    v = evaluate(NODE, hist, 2, 2)
    assert (v.decision, v.hits, v.known) == ("firing", 2, 2)
    assert v.latest == {"drift.score": 0.8}  # newest window where the condition was known


def test_backtest_reports_fire_and_resolve_times_per_group() -> None:
    s = load_settings(None, alerts={"rules": [
        {"name": "drift", "condition": "drift.score > 0.3", "windows": 2, "of": 3}]})  # fmt: skip
    a = _points([0.1, 0.1, 0.5, 0.6, 0.2, 0.1, 0.1, 0.1])
    b = [WindowPoint(100 + p.window_id, "other", "", p.window_end, p.status, {"drift.score": 0.9}) for p in a[:3]]
    tr = backtest(s.alerts.rules, a + b)
    got = [(t.group, t.event, t.at) for t in tr]
    assert got == [
        ("other", "fired", a[1].window_end),
        ("m", "fired", a[3].window_end),
        ("m", "resolved", a[6].window_end),
    ]
    assert tr[1].value == pytest.approx(0.6)


# -- lifecycle on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    yield from monitor_engine(pg_url)


CHANNELS = [{"name": "rec", "type": "log"}, {"name": "broken", "type": "log"}]


def _job(pg_url: str, eng: Engine, rules: list[dict[str, Any]], sinks: dict[str, Any]) -> AlertEvaluationJob:
    """The alert job over CHANNELS with these rules, configured as a config file would configure it."""
    return AlertEvaluationJob(make_settings(pg_url, alerts={"channels": CHANNELS, "rules": rules}), eng, sinks=sinks)


QUALITY = {"name": "quality", "condition": "quality.feedback_positive_rate < 0.3", "windows": 2, "of": 3,
           "channels": ["rec", "broken"], "cooldown_minutes": 30, "severity": "critical"}  # fmt: skip


def _rows(eng: Engine, table: Any = alerts) -> list[Any]:
    with eng.connect() as c:
        return list(c.execute(select(table).order_by(table.c.id)).mappings())


def test_fire_dedup_cooldown_reminder_ack_resolve(pg_url: str, pg_engine: Engine) -> None:
    eng = pg_engine
    rec = Recorder()
    job = _job(pg_url, eng, [QUALITY], sinks={"rec": rec, "broken": Broken()})
    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    add_window(eng, 0, {"quality.feedback_positive_rate": 0.5})
    add_window(eng, 1, {"quality.feedback_positive_rate": 0.1})
    assert job.run_once(t) == []  # 1 of 2: hysteresis holds
    add_window(eng, 2, {"quality.feedback_positive_rate": 0.05})
    assert [type(e).__name__ for e in job.run_once(t)] == ["AlertFired"]
    assert job.run_once(t + timedelta(minutes=5)) == []  # still firing: deduplicated, within cooldown
    assert [type(e).__name__ for e in job.run_once(t + timedelta(minutes=31))] == ["AlertReminded"]
    assert job.run_once(t + timedelta(minutes=40)) == []  # the reminder restarted the cooldown
    rows = _rows(eng)
    assert len(rows) == 1
    row = rows[0]
    assert (row["state"], row["severity"], row["group_key"], row["notify_count"]) == ("fired", "critical", "m", 2)
    assert row["value"] == pytest.approx(0.05)
    assert "held in 2 of the last 3 window(s)" in row["message"]
    notes = _rows(eng, alert_notifications)
    assert [(n["channel"], n["event"], n["ok"]) for n in notes] == [
        ("rec", "fired", True),
        ("broken", "fired", False),
        ("rec", "reminder", True),
        ("broken", "reminder", False),
    ]
    assert all("channel down" in n["error"] for n in notes if not n["ok"])

    assert acknowledge(eng, row["id"], "alice", now=t + timedelta(minutes=41))
    assert not acknowledge(eng, row["id"], "bob")  # only fired alerts can be acknowledged
    assert alert_state(eng, row["id"]) == "acknowledged"
    assert not acknowledge(eng, 999_999, "bob") and alert_state(eng, 999_999) is None
    assert job.run_once(t + timedelta(hours=5)) == []  # acknowledged: no more reminders

    add_window(eng, 3, {"quality.feedback_positive_rate": 0.6})
    add_window(eng, 4, {"quality.feedback_positive_rate": 0.6})
    assert job.run_once(t + timedelta(hours=6)) == []  # 1 of the last 3 still true: holds
    add_window(eng, 5, {"quality.feedback_positive_rate": 0.6})
    assert [type(e).__name__ for e in job.run_once(t + timedelta(hours=7))] == ["AlertResolved"]
    row = _rows(eng)[0]
    assert (row["state"], row["acknowledged_by"]) == ("resolved", "alice")
    assert row["resolved_at"] == t + timedelta(hours=7)
    assert not acknowledge(eng, row["id"], "bob")
    assert rec.kinds() == ["AlertFired", "AlertReminded", "AlertResolved"]
    assert job.run_once(t + timedelta(hours=8)) == []


def _drift_job_with_cooldown(pg_url: str, eng: Engine) -> tuple[AlertEvaluationJob, Recorder, datetime]:
    """A drift rule with a 60-minute cooldown notifying a Recorder, and the time its windows start at."""
    rule = {"name": "drift", "condition": "drift.score > 0.3", "channels": ["rec"], "cooldown_minutes": 60}
    rec = Recorder()
    return _job(pg_url, eng, [rule], sinks={"rec": rec}), rec, datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_refire_within_cooldown_is_stored_but_not_notified(pg_url: str, pg_engine: Engine) -> None:
    eng = pg_engine
    job, rec, t = _drift_job_with_cooldown(pg_url, eng)
    for i, (v, minute) in enumerate([(0.9, 0), (0.1, 10), (0.9, 20), (0.1, 30), (0.9, 90)]):
        add_window(eng, i, {"drift.score": v})
        job.run_once(t + timedelta(minutes=minute))
    # stored: fired, resolved, fired (quiet), resolved (quiet), fired (cooldown over: notified)
    assert [r["state"] for r in _rows(eng)] == ["resolved", "resolved", "fired"]
    assert [r["notify_count"] for r in _rows(eng)] == [2, 0, 1]
    assert rec.kinds() == ["AlertFired", "AlertResolved", "AlertFired"]


def test_quiet_refire_is_announced_as_fired_once_the_cooldown_is_over(pg_url: str, pg_engine: Engine) -> None:
    eng = pg_engine
    job, rec, t = _drift_job_with_cooldown(pg_url, eng)
    steps = [(0.9, 0), (0.1, 10), (0.9, 20), (0.9, 50), (0.9, 70), (0.9, 100), (0.9, 130)]
    kinds = []
    for i, (v, minute) in enumerate(steps):
        add_window(eng, i, {"drift.score": v})
        before = len(rec.events)
        job.run_once(t + timedelta(minutes=minute))
        kinds.append([type(e).__name__ for e in rec.events[before:]])
    # notified at 0 (fired) and 10 (resolved); the re-fire at 20 is within 60 min of the last notice:
    # stored, kept quiet, and announced as *fired* (not "still firing") at 70; then a reminder at 130.
    assert kinds == [["AlertFired"], ["AlertResolved"], [], [], ["AlertFired"], [], ["AlertReminded"]]
    rows = _rows(eng)
    assert [r["state"] for r in rows] == ["resolved", "fired"]
    assert rec.events[2].alert_id == rec.events[3].alert_id == rows[1]["id"]
    assert (rows[1]["notify_count"], rows[1]["fired_at"]) == (2, t + timedelta(minutes=20))


def test_live_job_and_backtest_agree_window_by_window(pg_url: str, pg_engine: Engine) -> None:
    """The scheduled job, run after each new window, fires and resolves exactly where the backtest says."""
    import random

    rnd = random.Random(7)
    rule = {"name": "q", "condition": "latency.p95_ms > 2000 and quality.feedback_positive_rate < 0.5",
            "windows": 2, "of": 3, "channels": ["rec"], "cooldown_minutes": 0}  # fmt: skip
    s = make_settings(pg_url, alerts={"channels": CHANNELS, "rules": [rule]})
    job = AlertEvaluationJob(s, pg_engine, sinks={"rec": Recorder()})
    live: list[tuple[str, datetime]] = []
    for i in range(40):
        bad = rnd.random() < (0.7 if 12 <= i < 24 else 0.15)
        status = "insufficient_data" if rnd.random() < 0.1 else "ok"
        metrics: dict[str, float | None] = {
            "latency.p95_ms": 2500.0 if bad else 900.0,
            "quality.feedback_positive_rate": 0.3,
        }
        add_window(pg_engine, i, metrics, status=status)
        end = T0 + timedelta(minutes=5 * i)
        live += [(e.event, end) for e in job.run_once(end)]
    replay = [(t.event, t.at) for t in backtest(s.alerts.rules, load_points(pg_engine))]
    assert live == replay
    assert {e for e, _ in live} == {"fired", "resolved"}  # the history both fires and resolves
    fired = _rows(pg_engine)
    assert len(fired) == sum(e == "fired" for e, _ in live)
    assert all(r["value"] in (2500.0, 900.0) for r in fired)  # value: the first metric of the condition


@pytest.mark.parametrize("kind", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_load_points_keeps_the_newest_windows_of_each_group(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if kind == "pg" else "sqlite_url")
    eng = create_engine(url)
    ensure_monitor_tables(eng)
    groups = [("a", ""), ("a", "eu"), ("b", "")]
    order = [(g, i) for i in (3, 0, 5, 1, 4, 2) for g in groups]  # stored out of time order
    for (model, seg), i in order:
        add_window(eng, i, {"drift.score": float(i), "volume.records": 10.0 * i}, model=model, segment=seg)
    pts = load_points(eng, per_group=2)
    got = sorted((p.model_id, p.segment, p.metrics["drift.score"]) for p in pts)
    assert got == sorted((m, s, float(i)) for (m, s) in groups for i in (4, 5))
    assert [p.window_end for p in pts] == sorted(p.window_end for p in pts)  # oldest first
    assert all(p.metrics["volume.records"] == 10 * p.metrics["drift.score"] for p in pts)  # type: ignore[operator]
    assert all(p.window_end.tzinfo is not None for p in pts)
    few = load_points(eng, per_group=3, model_id="a", until=T0 + timedelta(minutes=5 * 3))
    assert sorted((p.segment, p.metrics["drift.score"]) for p in few) == [
        (s, float(i)) for s in ("", "eu") for i in (1, 2, 3)
    ]
    assert len(load_points(eng)) == len(order)
    eng.dispose()


def test_open_alerts_of_removed_rules_are_closed_quietly(pg_url: str, pg_engine: Engine) -> None:
    keep = {"name": "keep", "condition": "drift.score > 0.3", "channels": ["rec"]}
    gone = {"name": "gone", "condition": "drift.score > 0.1", "channels": ["rec"]}
    add_window(pg_engine, 0, {"drift.score": 0.9})
    _job(pg_url, pg_engine, [keep, gone], sinks={"rec": Recorder()}).run_once()
    assert sorted((r["rule"], r["state"]) for r in _rows(pg_engine)) == [("gone", "fired"), ("keep", "fired")]
    rec = Recorder()
    assert _job(pg_url, pg_engine, [keep], sinks={"rec": rec}).run_once() == []
    rows = {r["rule"]: r for r in _rows(pg_engine)}
    assert (rows["keep"]["state"], rows["gone"]["state"]) == ("fired", "resolved")
    assert "no longer in the alert policy" in rows["gone"]["message"] and rec.events == []
    _job(pg_url, pg_engine, [], sinks={}).run_once()  # no rules at all
    assert {r["state"] for r in _rows(pg_engine)} == {"resolved"}


def test_insufficient_data_and_missing_metrics_neither_fire_nor_resolve(pg_url: str, pg_engine: Engine) -> None:
    eng = pg_engine
    rec = Recorder()
    rule = {"name": "drift", "condition": "drift.score > 0.3", "channels": ["rec"]}
    job = _job(pg_url, eng, [rule], sinks={"rec": rec})
    add_window(eng, 0, {"drift.score": 0.9}, status="insufficient_data")
    assert job.run_once() == []
    add_window(eng, 1, {"drift.score": 0.9})
    assert [type(e).__name__ for e in job.run_once()] == ["AlertFired"]
    add_window(eng, 2, {"drift.score": 0.0}, status="insufficient_data")
    add_window(eng, 3, {"latency.p95_ms": 10.0})  # the metric is missing: unknown
    add_window(eng, 4, {"drift.score": None})  # stored as NULL: unknown
    assert job.run_once() == []  # none of these clears it
    assert _rows(eng)[0]["state"] == "fired"
    add_window(eng, 5, {"drift.score": 0.1})
    assert [type(e).__name__ for e in job.run_once()] == ["AlertResolved"]


def test_grouping_per_model_and_per_segment(pg_url: str, pg_engine: Engine) -> None:
    eng = pg_engine
    per_model = {"name": "m", "condition": "latency.p95_ms > 2000", "channels": ["rec"]}
    per_seg = {"name": "s", "condition": "latency.p95_ms > 2000", "channels": ["rec"], "group_by": ["model", "segment"]}
    job = _job(pg_url, eng, [per_model, per_seg], sinks={"rec": Recorder()})
    add_window(eng, 0, {"latency.p95_ms": 2500.0}, model="a", segment="eu")
    add_window(eng, 0, {"latency.p95_ms": 2600.0}, model="a", segment="us")
    add_window(eng, 0, {"latency.p95_ms": 100.0}, model="b", segment="eu")
    job.run_once()
    got = sorted((r["rule"], r["group_key"], r["model_id"], r["segment"]) for r in _rows(eng))
    assert got == [("m", "a", "a", ""), ("s", "a/eu", "a", "eu"), ("s", "a/us", "a", "us")]


def test_one_open_alert_per_rule_and_group_is_enforced_by_the_database(pg_engine: Engine) -> None:
    row = {"rule": "r", "group_key": "m", "model_id": "m", "segment": "", "severity": "warning", "state": "fired",
           "condition": "drift.score > 1", "message": "x", "fired_at": T0, "last_evaluated_at": T0,
           "notify_count": 0}  # fmt: skip
    with pg_engine.begin() as c:
        c.execute(insert(alerts), [row, {**row, "state": "resolved"}, {**row, "state": "resolved"}])
    with pytest.raises(IntegrityError), pg_engine.begin() as c:
        c.execute(insert(alerts), {**row, "state": "acknowledged"})
    with pg_engine.begin() as c:  # another group is fine
        c.execute(insert(alerts), {**row, "group_key": "m/eu"})


def test_webhook_channel_end_to_end_records_delivery(pg_url: str, pg_engine: Engine) -> None:
    with HttpServer(fail_first=1, secret="k") as srv:
        chans = [{"name": "ops", "type": "webhook", "url": srv.url + "/hook", "secret": "k", "backoff_s": 0.01},
                 {"name": "dead", "type": "webhook", "url": "http://127.0.0.1:9/nothing", "retries": 1,
                  "backoff_s": 0.01, "timeout_s": 2}]  # fmt: skip
        rule = {"name": "drift", "condition": "drift.score > 0.3", "channels": ["dead", "ops"], "severity": "info"}
        job = AlertEvaluationJob(make_settings(pg_url, alerts={"channels": chans, "rules": [rule]}), pg_engine)
        add_window(pg_engine, 0, {"drift.score": 0.42})
        assert [type(e).__name__ for e in job.run_once()] == ["AlertFired"]
    assert all(srv.verified) and len(srv.requests) == 2  # 500 then 200, both correctly signed
    body = srv.json()
    assert (body["event"], body["rule"], body["model_id"], body["severity"]) == ("fired", "drift", "m", "info")
    assert body["value"] == pytest.approx(0.42)
    notes = {n["channel"]: n for n in _rows(pg_engine, alert_notifications)}
    assert notes["ops"]["ok"] is True
    assert notes["dead"]["ok"] is False and "failed after 2 attempt(s)" in notes["dead"]["error"]


# -- SQLite and migrations -------------------------------------------------------------------------


def test_lifecycle_on_sqlite(sqlite_url: str) -> None:
    eng = create_engine(sqlite_url)
    rec = Recorder()
    rule = {"name": "drift", "condition": "drift.score > 0.3", "channels": ["rec"], "windows": 1, "of": 2}
    job = AlertEvaluationJob(make_settings(sqlite_url, alerts={"channels": CHANNELS, "rules": [rule]}), eng, sinks={"rec": rec})
    add_window(eng, 0, {"drift.score": 0.9})
    job.run_once()
    job.run_once()
    assert acknowledge(eng, _rows(eng)[0]["id"], "ops")
    add_window(eng, 1, {"drift.score": 0.1})
    add_window(eng, 2, {"drift.score": 0.1})
    job.run_once()
    assert rec.kinds() == ["AlertFired", "AlertResolved"]
    assert [r["state"] for r in _rows(eng)] == ["resolved"]
    eng.dispose()


@pytest.mark.parametrize("kind", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_migration_0003_up_and_down(kind: str, empty_pg_url: str, tmp_path: Any) -> None:
    url = empty_pg_url if kind == "pg" else f"sqlite:///{tmp_path}/m.db"
    migrate(url, "0003_alerts")
    eng = create_engine(url)
    names = set(inspect(eng).get_table_names())
    assert {"alerts", "alert_notifications"} <= names
    idx = {i["name"]: i for i in inspect(eng).get_indexes("alerts")}
    assert idx["uq_alerts_open_rule_group"]["unique"]
    downgrade(url, "0002_monitor")
    eng.dispose()
    eng = create_engine(url)
    assert not {"alerts", "alert_notifications"} & set(inspect(eng).get_table_names())
    migrate(url)
    downgrade(url, "base")
    eng.dispose()
