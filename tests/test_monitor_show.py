"""``driftloop monitor show|check --all|check --dry-run|repin``: seeing what a check stored, checking every due
window in order, re-inspecting a checked window, and re-pinning the baseline."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import create_engine, insert, select
from typer.testing import CliRunner

from driftloop.monitor.cli import monitor_app
from driftloop.monitor.tables import drift_results, monitor_baselines, monitor_windows, window_metrics
from tests.helpers import write_config
from tests.monitor_helpers import T0, insert_rows, interaction

MONITOR = {"window": {"kind": "count", "size": 100}, "reference": {"kind": "previous", "windows": 1},
           "min_window_size": 50, "reports": False, "embeddings": {"enabled": False}, "text_drift": False}  # fmt: skip


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(monitor_app, name="monitor")
    return app


def _store_window(url: str, index: int, *, new_columns: bool, workload: str = "", score: float = 0.5) -> int:
    """A checked window as a check stores it; ``new_columns=False``: a row from before migration 0010."""
    end = T0 + timedelta(minutes=10 * index)
    row: dict[str, Any] = {
        "model_id": "chat", "workload": workload, "segment": "", "window_kind": "count", "window_index": index,
        "window_start": end - timedelta(minutes=10), "window_end": end, "first_id": 1, "last_id": 100,
        "n_records": 100, "ref_kind": "previous", "ref_start": end - timedelta(minutes=20),
        "ref_end": end - timedelta(minutes=10), "ref_n": 100, "status": "ok", "drift_score": score, "drifted": True,
        "n_features": 2, "n_drifted": 1, "created_at": end}  # fmt: skip
    if new_columns:
        row |= {"n_groups": 4, "n_groups_drifted": 2, "drift_share": 0.5, "healthy": False}
    eng = create_engine(url)
    with eng.begin() as c:
        wid = c.execute(insert(monitor_windows).returning(monitor_windows.c.id), row).scalar_one()
        c.execute(insert(drift_results), [
            {"window_id": wid, "feature": "latency_ms", "feature_type": "numerical", "method": "ks", "statistic": 0.41,
             "threshold": 0.05, "p_value": 1e-6, "p_adjusted": 2e-6, "drifted": True,
             "feature_group": "latency" if new_columns else None},
            {"window_id": wid, "feature": "prompt_chars", "feature_type": "numerical", "method": "ks",
             "statistic": 0.02, "threshold": 0.05, "p_value": 0.7, "p_adjusted": 0.7, "drifted": False,
             "feature_group": "prompt" if new_columns else None}])  # fmt: skip
        c.execute(insert(window_metrics), [
            {"window_id": wid, "model_id": "chat", "workload": workload, "segment": "", "window_end": end, "name": n,
             "value": v}
            for n, v in {"quality.feedback_positive_rate": 0.61, "ref.quality.feedback_positive_rate": 0.8,
                         "latency.p95_ms": 900.0}.items()])  # fmt: skip
    eng.dispose()
    return int(wid)


def test_show_prints_a_stored_window_and_older_rows_with_dashes(cli: typer.Typer, sqlite_url: str,
                                                               tmp_path: Path) -> None:  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", sqlite_url, monitor=MONITOR)
    _store_window(sqlite_url, 3, new_columns=False)
    _store_window(sqlite_url, 4, new_columns=True)
    run = CliRunner()
    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert out[0].startswith("chat window #4 [2026-01-05 12:30:00Z .. 2026-01-05 12:40:00Z] n=100 status ok")
    assert out[1] == "  reference: previous n=100 [2026-01-05 12:20:00Z .. 2026-01-05 12:30:00Z]"
    assert "verdict: DRIFT, score 0.50, groups drifted 2/4 (threshold drift_share 0.50)" in out[2]
    assert out[4].split() == ["latency", "latency_ms", "ks", "0.41", "0.05", "1e-06", "2e-06", "DRIFT"]
    assert out[5].split()[:2] == ["prompt", "prompt_chars"] and out[5].split()[-1] == "-"
    assert out[6].split() == ["quality.feedback_positive_rate", "0.61"]
    assert out[7].split() == ["ref.quality.feedback_positive_rate", "0.8"]

    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--window", "3", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "groups drifted -/- (threshold drift_share -)" in res.output and "healthy -" in res.output
    assert res.output.splitlines()[4].split()[:2] == ["-", "latency_ms"]

    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--window", "4", "--json", "-c", str(cfg)])
    rows = [json.loads(ln) for ln in res.output.splitlines()]
    assert [r["type"] for r in rows] == ["window", "feature", "feature", "metric", "metric", "metric"]
    assert all(r["model"] == "chat" and r["window"] == 4 and r["window_end"] == "2026-01-05T12:40:00Z" for r in rows)
    assert rows[0]["drift_share"] == 0.5 and rows[0]["n_groups_drifted"] == 2 and rows[0]["healthy"] is False
    assert rows[1]["feature_group"] == "latency" and rows[1]["p_adjusted"] == 2e-6
    assert {r["name"]: r["value"] for r in rows[3:]}["latency.p95_ms"] == 900.0

    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--window", "9", "-c", str(cfg)])
    assert res.exit_code == 2 and "no window #9 of model 'chat'" in res.output
    res = run.invoke(cli, ["monitor", "show", "--model", "nope", "-c", str(cfg)])
    assert res.exit_code == 2 and "no checked window of model 'nope'" in res.output


def test_check_all_in_order_then_dry_run_reinspects_a_checked_window(cli: typer.Typer, sqlite_url: str,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", sqlite_url, monitor=MONITOR)
    eng = create_engine(sqlite_url)
    # stored out of event-time order: count windows follow ts, then id
    insert_rows(eng, [interaction(i, model="chat") for i in range(150, 320)] +
                [interaction(i, model="chat") for i in range(150)])  # fmt: skip
    run = CliRunner()
    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--all", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert [ln.split()[0] for ln in out[:3]] == ["[1/3]", "[2/3]", "[3/3]"]
    assert ["window #0" in out[0], "window #1" in out[1], "window #2" in out[2]] == [True] * 3
    assert "[2026-01-05 12:00:00 .. 12:01:39]" in out[0]  # the first 100 records by event time
    assert out[3] == "checked 3 window(s) of 'chat'"
    with eng.connect() as c:
        assert c.execute(select(monitor_windows.c.window_index).order_by(monitor_windows.c.id)).scalars().all() == [
            0, 1, 2]  # fmt: skip
    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--all", "-c", str(cfg)])
    assert res.exit_code == 1 and "nothing to do" in res.output

    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "1", "-c", str(cfg)])
    assert res.exit_code == 2 and "already checked" in res.output
    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "1", "--dry-run", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "note: window #1 was already checked" in res.output and "window #1" in res.output.splitlines()[1]
    with eng.connect() as c:
        assert len(c.execute(select(monitor_windows.c.id)).all()) == 3  # nothing stored
    eng.dispose()


def test_repin_stores_a_baseline(cli: typer.Typer, sqlite_url: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", sqlite_url, monitor=MONITOR)
    _store_window(sqlite_url, 4, new_columns=True)
    res = CliRunner().invoke(cli, ["monitor", "repin", "--model", "chat", "--from-window", "4", "--note",
                                   "new prompt template", "--by", "alice", "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "re-pinned 'chat' (count windows): a last_healthy reference now starts at window #4" in res.output
    assert "not checked yet" not in res.output
    res = CliRunner().invoke(cli, ["monitor", "repin", "--model", "chat", "--from-window", "9", "--segment",
                                   "lang=de", "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 0 and "window #9 is not checked yet" in res.output
    eng = create_engine(sqlite_url)
    with eng.connect() as c:
        rows = c.execute(select(monitor_baselines).order_by(monitor_baselines.c.id)).mappings().all()
    eng.dispose()
    assert [(r["model_id"], r["segment"], r["window_kind"], r["from_window_index"], r["note"]) for r in rows] == [
        ("chat", "", "count", 4, "new prompt template"), ("chat", "lang=de", "count", 9, None)]  # fmt: skip
    assert rows[0]["pinned_by"] == "alice" and rows[1]["pinned_by"]


def test_show_check_and_repin_name_the_workload_of_a_window(cli: typer.Typer, sqlite_url: str,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Window #4 exists once per workload: each command picks the one of ``--workload`` (default: unnamed)."""
    cfg = write_config(tmp_path / "c.yaml", sqlite_url, monitor=MONITOR)
    ids = {wl: _store_window(sqlite_url, 4, new_columns=True, workload=wl, score=sc)
           for wl, sc in (("rag", 0.25), ("", 0.5), ("agent", 0.75))}  # fmt: skip
    run = CliRunner()
    for wl, score in (("rag", "0.25"), ("agent", "0.75")):
        for args in ([], ["--window", "4"]):
            res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--workload", wl, *args, "-c", str(cfg)])
            assert res.exit_code == 0, res.output
            out = res.output.splitlines()
            assert out[0].startswith(f"chat[{wl}] window #4 ") and f"score {score}," in out[2]
            assert sum(ln.startswith("chat") for ln in out) == 1
    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--window", "4", "-c", str(cfg)])
    assert res.output.startswith("chat window #4 ") and "score 0.50," in res.output
    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--workload", "rag", "--json", "-c", str(cfg)])
    rows = [json.loads(ln) for ln in res.output.splitlines()]
    assert len(rows) == 6 and {r["workload"] for r in rows} == {"rag"} and rows[0]["drift_score"] == 0.25
    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--workload", "chatbot", "-c", str(cfg)])
    assert res.exit_code == 2 and "workload 'chatbot'" in res.output
    assert "stored workloads: '', 'agent', 'rag' (--workload)" in res.output

    # repin: the baseline belongs to the named workload's stream, and the known-window check looks there
    res = run.invoke(cli, ["monitor", "repin", "--model", "chat", "--from-window", "4", "--workload", "agent",
                           "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 0 and "re-pinned 'chat' workload 'agent' (count windows)" in res.output
    assert "not checked yet" not in res.output
    res = run.invoke(cli, ["monitor", "repin", "--model", "chat", "--from-window", "5", "--workload", "agent",
                           "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 0 and "window #5 is not checked yet" in res.output
    eng = create_engine(sqlite_url)
    with eng.connect() as c:
        got = c.execute(select(monitor_baselines.c.workload, monitor_baselines.c.from_window_index)).all()
    assert sorted(got) == [("agent", 4), ("agent", 5)]

    # check --window: "already checked" names the window of the asked workload
    insert_rows(eng, [{**interaction(i, model="chat"), "workload": "rag"} for i in range(10)])
    eng.dispose()
    for wl in ("rag", "agent"):
        res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "4", "--workload", wl,
                               "-c", str(cfg)])  # fmt: skip
        assert res.exit_code == 2 and f"monitor_windows.id {ids[wl]})" in res.output, res.output


def test_check_window_of_a_workload_checks_that_workloads_records(cli: typer.Typer, sqlite_url: str,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", sqlite_url, monitor=MONITOR)
    eng = create_engine(sqlite_url)
    # two workloads interleaved in time: 200 records each, so windows #0 and #1 of each, over the same span
    insert_rows(eng, [{**interaction(i, model="chat", latency=100.0 if i % 2 else 5000.0),
                       "workload": "rag" if i % 2 else "agent"} for i in range(400)])  # fmt: skip
    run = CliRunner()
    for wl, p95 in (("rag", 100), ("agent", 5000)):
        res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "1", "--workload", wl, "--dry-run",
                               "-c", str(cfg)])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert f"chat[{wl}] window #1" in res.output and f"p95 latency {p95} ms" in res.output
    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "1", "-c", str(cfg)])
    assert res.exit_code == 2 and "not complete" in res.output  # the unnamed stream has no records
    res = run.invoke(cli, ["monitor", "check", "--model", "chat", "--window", "1", "--workload", "agent",
                           "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 0, res.output
    with eng.connect() as c:
        got = c.execute(select(monitor_windows.c.workload, monitor_windows.c.window_index,
                               monitor_windows.c.n_records)).all()  # fmt: skip
    eng.dispose()
    assert got == [("agent", 1, 100)]
    res = run.invoke(cli, ["monitor", "show", "--model", "chat", "--workload", "agent", "--json", "-c", str(cfg)])
    metrics = {r["name"]: r["value"] for r in map(json.loads, res.output.splitlines()) if r["type"] == "metric"}
    assert metrics["latency.p95_ms"] == 5000.0  # the agent's records only
