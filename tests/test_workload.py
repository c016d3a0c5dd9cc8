"""Workloads (issue 16): one model serving several tasks is watched as several streams.

Derivation at ingestion (unit tests through the real decoder), then on PostgreSQL: one model serving
three workloads becomes three streams of windows, a drift in one workload is flagged (and alerted) there
only, and the dashboards' workload variable lists the workloads.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from driftloop.dashboards import iter_panels
from driftloop.ingest.decode import DecodePolicy, Decoder, Source
from driftloop.ingest.redact import Redactor
from driftloop.ingest.workload import system_prompt_workload, workload_of
from driftloop.ingest.writer import Batch, BatchWriter
from driftloop.monitor.alerts.engine import AlertEvaluationJob
from driftloop.monitor.alerts.sinks import LogAlertSink
from driftloop.monitor.alerts.tables import alerts
from driftloop.monitor.check import DriftCheckJob
from driftloop.monitor.tables import monitor_windows
from driftloop.monitor.windows import due_windows, reference_for
from driftloop.records import ChatMessage
from driftloop.settings import WorkloadSettings, load_settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import interactions
from tests.grafana_macros import ALL, TimeRange, dashboard_variables, expand
from tests.helpers import make_settings

DASH_DIR = Path(__file__).resolve().parents[1] / "dashboards"

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _decode(record: dict[str, Any], ws: WorkloadSettings | None) -> str | None:
    dec = Decoder(DecodePolicy(workload=ws), Redactor())
    kind, row, _ = dec.decode(json.dumps(record).encode(), Source("logs", 0, 1, None), NOW)
    assert kind == "interaction"
    return row["workload"]


def _chat(system: str | None, user: str = "hi", **extra: Any) -> dict[str, Any]:
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    return {"request_id": "r1", "model_id": "m", "messages": msgs, "response": "ok", **extra}


# ------------------------------------------------------------------------------------------ derivation
def test_first_configured_metadata_key_with_a_value_wins() -> None:
    ws = WorkloadSettings(keys=["gen_ai.agent.name", "route"], system_prompt_hash=True, default="misc")
    assert _decode(_chat("sys", metadata={"route": "/faq", "gen_ai.agent.name": "triage"}), ws) == "triage"
    # empty, null, blank and structured values name nothing: the next key is tried
    for empty in ("", "   ", None, {"a": 1}, [1]):
        assert _decode(_chat("sys", metadata={"gen_ai.agent.name": empty, "route": "/faq"}), ws) == "/faq"
    # a scalar is stringified; unknown top-level fields are metadata too (v1 keeps them)
    assert _decode(_chat(None, metadata={"route": 7}), ws) == "7"
    assert _decode(_chat(None, metadata={"route": 7.0}), ws) == "7"
    assert _decode(_chat(None, metadata={"route": True}), ws) == "true"
    assert _decode(_chat(None, route="/top-level"), ws) == "/top-level"
    # capped at the column's 256 characters
    assert _decode(_chat(None, metadata={"route": "x" * 300}), ws) == "x" * 256


def test_system_prompt_hash_then_default() -> None:
    ws = WorkloadSettings(keys=["route"], system_prompt_hash=True, default="misc")
    a, b = _decode(_chat("You are a support bot."), ws), _decode(_chat("You translate to French."), ws)
    assert a == system_prompt_workload("You are a support bot.") and a != b
    assert a is not None and a.startswith("sp-") and len(a) == 3 + 12 and int(a[3:], 16) >= 0
    assert _decode(_chat("You are a support bot.", user="other question"), ws) == a, "the user turn does not count"
    assert _decode(_chat(None), ws) == "misc"  # no system message
    assert _decode({"request_id": "p", "prompt": "plain", "response": "x"}, ws) == "misc"
    assert _decode(_chat("You are a support bot."), WorkloadSettings(default="misc")) == "misc"  # hash off


def test_nothing_configured_leaves_the_workload_null() -> None:
    assert _decode(_chat("sys", metadata={"route": "/faq"}), None) is None
    assert _decode(_chat("sys", metadata={"route": "/faq"}), WorkloadSettings()) is None
    assert _decode(_chat("sys", metadata={"route": "/faq"}), WorkloadSettings(keys=["agent"])) is None
    assert _decode(_chat("sys"), WorkloadSettings(default="")) is None  # "" is no name
    assert workload_of({"route": "a"}, [ChatMessage(role="system", content="s")], None) is None


def test_the_default_settings_derive_nothing() -> None:
    ws = load_settings(None).ingest.workload
    assert (ws.keys, ws.system_prompt_hash, ws.default) == ([], False, None)


@pytest.mark.parametrize("bad", [{"keys": "route"}, {"default": "x" * 257}])
def test_bad_workload_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WorkloadSettings(**bad)


# ------------------------------------------------------------------------------------------ on PostgreSQL
MODEL = "bot"
WINDOW = 100
SQL_SYSTEM = "You write PostgreSQL queries for the analytics team."
WORKLOADS = ("support", "translate", system_prompt_workload(SQL_SYSTEM))
SETTINGS = WorkloadSettings(keys=["gen_ai.agent.name", "route"], system_prompt_hash=True)


def _record(workload: str, i: int, ts: datetime, drifted: bool) -> dict[str, Any]:
    """One chat record of ``workload``, named the way its producer names it; values cycle, so the windows of a
    workload are alike unless ``drifted`` (long prompts, short answers, slow)."""
    k = i % 10
    if workload == "support":
        system, user, meta = "You are a support agent.", f"my order {k} did not arrive", {"route": "support"}
    elif workload == "translate":
        system, user, meta = (
            "You translate to French.",
            f"translate: good morning number {k}",
            {"gen_ai.agent.name": "translate"},
        )
    elif workload == "":
        system, user, meta = None, f"hello {k}", {}
    else:
        system, user, meta = SQL_SYSTEM, f"count the orders of region {k} per month", {}
    words, latency = (40 + 4 * k, 100.0 + k) if workload != "" else (10 + k, 50.0 + k)
    if drifted:
        user = f"please write a long legal analysis of clause {k} with every citation and caveat you know of"
        words, latency = 2 + k % 3, 900.0 + 10 * k
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {
        "request_id": f"{workload or 'none'}-{i}",
        "model_id": MODEL,
        "timestamp": ts.isoformat(),
        "messages": msgs,
        "response": " ".join(f"w{(k + j) % 30}" for j in range(words)),
        "latency_ms": latency,
        "metadata": meta,
        "feedback": 1.0 if k < 7 else 0.0,
    }


def _store(url: str, records: list[dict[str, Any]]) -> None:
    """Decode (deriving the workload) and write, as the ingestion service does."""
    dec = Decoder(DecodePolicy(workload=SETTINGS), Redactor())
    batch = Batch()
    for n, r in enumerate(records):
        _, row, fbs = dec.decode(json.dumps(r).encode(), Source("logs", 0, n, None))
        batch.interactions.append(row)
        batch.feedback.extend(fbs)
    eng = create_engine_from_url(url)
    try:
        assert BatchWriter(eng, "test").write(batch).inserted == len(records)
    finally:
        eng.dispose()


def test_one_model_three_workloads_are_three_streams(pg_url: str, tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    records, n = [], 0
    # interleaved in time: windows that ignored the workload would mix the three tasks
    for i in range(3 * WINDOW):
        for wl in WORKLOADS:
            records.append(_record(wl, i, t0 + timedelta(seconds=n), drifted=wl == "translate" and i >= 2 * WINDOW))
            n += 1
        if i < 2 * WINDOW:  # and records nothing names: the unnamed stream
            records.append(_record("", i, t0 + timedelta(seconds=n), drifted=False))
            n += 1
    _store(pg_url, records)
    s = make_settings(pg_url, monitor={
        "window": {"kind": "count", "size": WINDOW}, "reference": {"kind": "previous", "windows": 1},
        "min_window_size": 50, "reports": False, "reports_dir": str(tmp_path), "embeddings": {"enabled": False},
        "text_drift": False, "language_sample": 0},
        alerts={"rules": [{"name": "drift", "condition": "drift.drifted == 1"}]})  # fmt: skip
    eng = create_engine_from_url(pg_url)
    try:
        with eng.connect() as c:
            named = dict(c.execute(select(interactions.c.request_id, interactions.c.workload)).all())
            assert named["support-0"] == "support" and named["translate-0"] == "translate"
            assert named["none-0"] is None and named[f"{WORKLOADS[2]}-0"] == WORKLOADS[2]
            wins = due_windows(c, s.monitor.model_copy(update={"max_windows_per_run": 99}), MODEL)
            per = {wl: [w.index for w in wins if w.workload == wl] for wl in (*WORKLOADS, "")}
            assert per == {WORKLOADS[0]: [0, 1, 2], WORKLOADS[1]: [0, 1, 2], WORKLOADS[2]: [0, 1, 2], "": [0, 1]}
            assert {w.segment for w in wins} == {""} and all(len(w.ids) == WINDOW for w in wins)
            for w in wins:  # a window and its reference hold records of the window's workload only
                ref = reference_for(c, s.monitor, w)
                got = set(c.execute(select(interactions.c.workload).where(interactions.c.id.in_(w.ids + ref.ids))
                                    .distinct()).scalars())  # fmt: skip
                assert got == {w.workload or None}, (w, got)
                assert ref.n == (0 if w.index == 0 else WINDOW)

        res = DriftCheckJob(s, eng).run_once()
        drifted = sorted((r.window.workload, r.window.index) for r in res if r.outcome and r.outcome.drifted)
        assert drifted == [("translate", 2)], [(r.window.workload, r.window.index, r.outcome and r.outcome.score)
                                               for r in res]  # fmt: skip
        with eng.connect() as c:
            stored = c.execute(
                select(monitor_windows.c.workload, func.count()).group_by(monitor_windows.c.workload)
            ).all()
            assert dict(stored) == {"support": 3, "translate": 3, WORKLOADS[2]: 3, "": 2}
            metric_wl = (
                c.execute(
                    text(
                        "SELECT DISTINCT m.workload = w.workload FROM window_metrics m "
                        "JOIN monitor_windows w ON w.id = m.window_id"
                    )
                )
                .scalars()
                .all()
            )
            assert metric_wl == [True]

        events = AlertEvaluationJob(s, eng, sinks={"log": LogAlertSink()}).run_once()
        assert [(e.event, e.model_id, e.workload, e.payload()["workload"]) for e in events] == [
            ("fired", MODEL, "translate", "translate")
        ]
        with eng.connect() as c:
            rows = c.execute(select(alerts.c.rule, alerts.c.model_id, alerts.c.workload, alerts.c.group_key)).all()
        assert [tuple(r) for r in rows] == [("drift", MODEL, "translate", "bot[translate]")]
        _dashboards_see_the_workloads(pg_url, t0)
    finally:
        eng.dispose()


def _dashboards_see_the_workloads(url: str, t0: datetime) -> None:
    """The workload variable lists the streams; a panel filtered by it counts that workload's windows only."""
    d = json.loads((DASH_DIR / "drift.json").read_text())
    var = next(v for v in d["templating"]["list"] if v["name"] == "workload")
    panel = next(p for p in iter_panels(d["panels"]) if p["title"] == "Windows with dataset drift")
    tr = TimeRange(t0 - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        sql = expand(var["query"], tr, dashboard_variables(d, {"model": ALL}, {"model": [MODEL]}))
        options = [r[1] for r in conn.execute(sql).fetchall()]
        assert options == ["(none)", *sorted(WORKLOADS)]

        def drifted_windows(workload: str | list[str]) -> int:
            v = dashboard_variables(
                d, {"model": [MODEL], "workload": workload}, {"model": [MODEL], "workload": options}
            )
            (row,) = conn.execute(expand(panel["targets"][0]["rawSql"], tr, v)).fetchall()
            return int(row[0])

        assert drifted_windows(ALL) == drifted_windows(["translate"]) == 1
        assert drifted_windows(["support"]) == drifted_windows(["(none)"]) == 0
        assert drifted_windows(["support", "translate"]) == 1


# ------------------------------------------------------------------------------------------ dashboards, statically
def test_every_panel_over_workload_tables_filters_by_workload() -> None:
    for f in sorted(DASH_DIR.glob("*.json")):
        d = json.loads(f.read_text())
        sqls = [t["rawSql"] for p in iter_panels(d["panels"]) for t in p.get("targets") or []]
        sqls += [a["target"]["rawSql"] for a in d["annotations"]["list"] if "target" in a]
        for sql in sqls:
            if re.search(r"\b(FROM|JOIN)\s+(interactions|monitor_windows|window_metrics|alerts)\b", sql):
                assert "IN ($workload)" in sql and "'__all' IN ($workload)" in sql, (f.name, sql)


# ------------------------------------------------- streams checked at different times (due_windows' reads)
def _two_workloads(kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Workload "a": 100 records in the first 100 s; workload "b": 60 records between them and 40 more much
    later. Count windows of 100: a#0 is complete at once, b#0 only with its late 40 (and needs its early 60).
    Time windows of 5 min: both have a window #idx0 in the first 5 minutes."""
    from tests.monitor_helpers import T0, interaction

    a = [interaction(i, ts=T0 + timedelta(seconds=i), prefix="a") | {"workload": "a"} for i in range(100)]
    b = [interaction(i, ts=T0 + timedelta(seconds=i, milliseconds=500), prefix="b") | {"workload": "b"}
         for i in range(60)]  # fmt: skip
    late = [interaction(i, ts=T0 + timedelta(seconds=200 + i), prefix="b") | {"workload": "b"} for i in range(60, 100)]
    window = {"kind": "count", "size": 100} if kind == "count" else {"kind": "time", "minutes": 5, "grace_s": 0}
    monitor = {"window": window, "reference": {"kind": "previous", "windows": 1}, "min_window_size": 50,
               "reports": False, "embeddings": {"enabled": False}, "text_drift": False, "language_sample": 0}  # fmt: skip
    return a + b + late, monitor


@pytest.mark.parametrize("kind", ["count", "time"])
def test_checking_one_workload_first_keeps_the_other_workloads_early_records(pg_url: str, kind: str) -> None:
    """Issue 16 review: a stream without a checked window must not lose the records before another stream's."""
    from driftloop.monitor.check import run_check
    from tests.monitor_helpers import T0, insert_rows

    rows, monitor = _two_workloads(kind)
    s = make_settings(pg_url, monitor=monitor)
    eng = create_engine_from_url(pg_url)
    try:
        insert_rows(eng, rows)
        idx0 = 0 if kind == "count" else int(T0.timestamp() // 300)
        first = run_check(eng, s, "m", window=idx0, workload="a")
        assert first is not None and first.window.workload == "a" and len(first.window.ids) == 100
        with eng.connect() as c:
            due = due_windows(c, s.monitor, "m")
        b0 = [w for w in due if w.workload == "b" and w.index == idx0]
        assert len(b0) == 1, due
        b_ids = {r["request_id"] for r in rows if r["workload"] == "b"}
        if kind == "time":  # the first 5 minutes hold all of b's records
            b_ids = {r["request_id"] for r in rows if r["workload"] == "b" and r["ts"] < T0 + timedelta(minutes=5)}
        with eng.connect() as c:
            got = set(c.execute(select(interactions.c.request_id).where(interactions.c.id.in_(b0[0].ids))).scalars())
        assert got == b_ids
        res = run_check(eng, s, "m", window=idx0, workload="b")
        assert res is not None and res.window.ids == b0[0].ids
    finally:
        eng.dispose()


def test_a_slow_workload_keeps_its_records_across_runs(pg_url: str) -> None:
    """The scheduled job checks "a"'s window while "b" has too few records; b's first window, complete later,
    still starts with b's first record."""
    from tests.monitor_helpers import insert_rows

    rows, monitor = _two_workloads("count")
    s = make_settings(pg_url, monitor=monitor)
    eng = create_engine_from_url(pg_url)
    try:
        insert_rows(eng, rows[:160])  # a's 100, b's first 60
        first = DriftCheckJob(s, eng).run_once()
        assert [(r.window.workload, r.window.index) for r in first] == [("a", 0)]
        insert_rows(eng, rows[160:])  # b's late 40
        second = DriftCheckJob(s, eng).run_once()
        assert [(r.window.workload, r.window.index, len(r.window.ids)) for r in second] == [("b", 0, 100)]
        with eng.connect() as c:
            firsts = c.execute(select(interactions.c.id).where(interactions.c.request_id == "b-m-0")).scalar_one()
        assert second[0].window.first_id == firsts
    finally:
        eng.dispose()
