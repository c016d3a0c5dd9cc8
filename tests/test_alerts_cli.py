"""``driftloop alerts list|ack`` and ``driftloop policies test`` (backtest without notifying or writing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from driftloop.monitor.alerts.cli import register
from driftloop.monitor.alerts.engine import AlertEvaluationJob
from driftloop.monitor.alerts.tables import alert_notifications, alerts
from driftloop.settings import load_settings
from tests.alerts_helpers import HttpServer, Recorder, add_window, monitor_engine


def _flat(out: str) -> str:
    """Usage errors come in a box that wraps lines: drop the frame, join the words."""
    return " ".join(w for w in out.split() if w not in ("│", "╭", "╰"))


@pytest.fixture
def cli() -> typer.Typer:
    """A root app with only this module's commands, as driftloop/cli.py wires them."""
    app = typer.Typer()
    register(app)
    register(app)  # registering twice replaces, it does not duplicate
    assert [g.name for g in app.registered_groups] == ["alerts", "policies"]
    return app


@pytest.fixture
def eng(pg_url: str) -> Iterator[Engine]:
    yield from monitor_engine(pg_url)


def _config(tmp_path: Path, url: str, rules: list[dict[str, Any]] | None = None,
            channels: list[dict[str, Any]] | None = None) -> Path:  # fmt: skip
    p = tmp_path / "policy.yaml"
    alerts_cfg: dict[str, Any] = {"rules": rules or []}
    if channels:
        alerts_cfg["channels"] = channels
    p.write_text(yaml.safe_dump({"database": {"url": url}, "alerts": alerts_cfg}))
    return p


def test_alerts_list_and_ack(cli: typer.Typer, pg_url: str, eng: Engine, tmp_path: Path) -> None:
    cfg = _config(tmp_path, pg_url, [{"name": "slow", "condition": "latency.p95_ms > 2000"},
                                     {"name": "drift", "condition": "drift.score > 0.3"}])  # fmt: skip
    run = CliRunner()
    res = run.invoke(cli, ["alerts", "list", "--config", str(cfg)])
    assert res.exit_code == 0 and "no open alerts" in res.output
    add_window(eng, 0, {"latency.p95_ms": 2500.0, "drift.score": 0.5}, model="chat")
    add_window(eng, 0, {"latency.p95_ms": 100.0, "drift.score": 0.1}, model="search")
    AlertEvaluationJob(load_settings(cfg), eng, sinks={"log": Recorder("log")}).run_once()
    with eng.connect() as c:
        ids = dict(c.execute(select(alerts.c.rule, alerts.c.id)).all())
    assert set(ids) == {"slow", "drift"}

    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "SEVERITY", "RULE"]
    assert len(lines) == 3 and all(" fired " in ln and " chat " in ln for ln in lines[1:])

    res = run.invoke(cli, ["alerts", "ack", str(ids["slow"]), "--by", "alice", "-c", str(cfg)])
    assert res.exit_code == 0 and f"alert {ids['slow']} acknowledged by alice" in res.output
    res = run.invoke(cli, ["alerts", "ack", str(ids["slow"]), "-c", str(cfg)])
    assert res.exit_code == 1 and "is already acknowledged" in res.output
    res = run.invoke(cli, ["alerts", "ack", "424242", "-c", str(cfg)])
    assert res.exit_code == 1 and "alert 424242 not found" in res.output

    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg), "--state", "acknowledged"])
    assert "(ack by alice)" in res.output and len(res.output.splitlines()) == 2
    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg), "--state", "open"])
    assert len(res.output.splitlines()) == 3  # acknowledged alerts are still open
    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg), "--state", "resolved"])
    assert "no resolved alerts" in res.output
    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg), "--state", "all", "--model", "search"])
    assert res.output.strip() == "no alerts for model 'search'"
    res = run.invoke(cli, ["alerts", "list", "-c", str(cfg), "--state", "closed"])
    assert res.exit_code == 2 and "must be one of open, fired, acknowledged, resolved, all" in _flat(res.output)


def test_policies_test_backtests_without_notifying_or_writing(
    cli: typer.Typer, pg_url: str, eng: Engine, tmp_path: Path
) -> None:
    for i, v in enumerate([0.1, 0.5, 0.6, 0.1, 0.1, 0.7, 0.8]):
        add_window(eng, i, {"drift.score": v}, model="chat")
    add_window(eng, 2, {"drift.score": 0.9}, model="search")
    add_window(eng, 7, {"drift.score": 0.9}, model="chat", status="insufficient_data")
    with HttpServer() as srv:
        policy = _config(tmp_path, pg_url, [{"name": "drift", "condition": "drift.score > 0.3", "windows": 2,
                                             "of": 2, "channels": ["hook"]}],
                         channels=[{"name": "hook", "type": "webhook", "url": srv.url}])  # fmt: skip
        res = CliRunner().invoke(cli, ["policies", "test", str(policy), "--from", "2026-01-01T00:00:00Z",
                                       "--to", "2026-01-02", "--model", "chat"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert out[0].startswith("replaying 8 window(s) (7 with data) of 1 model(s) through 1 rule(s)")
    events = [(ln.split()[0], ln.split()[2], ln.split()[3]) for ln in out[1:4]]
    assert events == [("2026-01-01", "FIRED", "#2"), ("2026-01-01", "RESOLVED", "#4"), ("2026-01-01", "FIRED", "#6")]
    assert "00:10:00Z  FIRED" in out[1] and "00:20:00Z  RESOLVED" in out[2] and "00:30:00Z  FIRED" in out[3]
    assert "[2026-01-01 00:05:00Z .. 2026-01-01 00:10:00Z]" in out[1] and "(fired in #2)" in out[2]
    # the summary: the first window each rule would have fired in, per group
    assert out[4] == "first window each rule would have fired in:"
    assert out[6].split() == ["drift", "chat", "#2", "2026-01-01", "00:10:00Z", "2"]
    assert out[-1] == "2 firing(s), 1 resolution(s), 1 still firing at the end; nothing was notified or stored"
    assert srv.requests == []
    with eng.connect() as c:
        assert c.execute(select(func.count()).select_from(alerts)).scalar() == 0
        assert c.execute(select(func.count()).select_from(alert_notifications)).scalar() == 0

    # --from/--to bound the history
    res = CliRunner().invoke(cli, ["policies", "test", str(policy), "--from", "2026-01-01T00:25:00+00:00"])
    assert res.exit_code == 0 and res.output.count("FIRED") == 1


def test_policies_test_rejects_bad_input(cli: typer.Typer, pg_url: str, tmp_path: Path) -> None:
    policy = _config(tmp_path, pg_url, [{"name": "d", "condition": "drift.score > 0.3"}])
    run = CliRunner()
    res = run.invoke(cli, ["policies", "test", str(policy), "--from", "yesterday"])
    assert res.exit_code == 2 and "'yesterday' is not an ISO 8601 time" in _flat(res.output)
    res = run.invoke(cli, ["policies", "test", str(policy), "--from", "2026-02-01", "--to", "2026-01-01"])
    assert res.exit_code == 2 and "is after --to" in _flat(res.output)
    empty = _config(tmp_path, pg_url, [])
    res = run.invoke(cli, ["policies", "test", str(empty)])
    assert res.exit_code == 2 and "has no alerts.rules" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"alerts": {"rules": [{"name": "d", "condition": "drift.sc > 1"}]}}))
    res = run.invoke(cli, ["policies", "test", str(bad)])
    assert res.exit_code == 2 and "alerts.rules.0.condition: unknown metric 'drift.sc'" in res.output


def test_commands_name_missing_tables_and_unreachable_databases(cli: typer.Typer, tmp_path: Path) -> None:
    run = CliRunner()
    bare = _config(tmp_path, f"sqlite:///{tmp_path}/bare.db", [{"name": "d", "condition": "drift.score > 0.3"}])
    res = run.invoke(cli, ["alerts", "list", "--config", str(bare)])
    assert res.exit_code == 2 and "has no table(s) alerts; run `driftloop db upgrade`" in res.output
    res = run.invoke(cli, ["alerts", "ack", "1", "--config", str(bare)])
    assert res.exit_code == 2 and "has no table(s) alerts" in res.output
    res = run.invoke(cli, ["policies", "test", str(bare)])
    assert res.exit_code == 2 and "has no table(s) monitor_windows, window_metrics" in res.output
    down = _config(tmp_path, "postgresql://u:hunter2@127.0.0.1:1/x")
    res = run.invoke(cli, ["alerts", "list", "--config", str(down)])
    assert res.exit_code == 2 and "cannot reach the database" in res.output and "hunter2" not in res.output


def test_policies_test_json_and_rules_that_never_fire(cli: typer.Typer, pg_url: str, eng: Engine,
                                                      tmp_path: Path) -> None:  # fmt: skip
    for i, v in enumerate([0.1, 0.5, 0.1]):
        add_window(eng, i + 10, {"drift.score": v}, model="chat")
    policy = _config(tmp_path, pg_url, [{"name": "drift", "condition": "drift.score > 0.3"},
                                        {"name": "quiet", "condition": "drift.score > 5"}])  # fmt: skip
    res = CliRunner().invoke(cli, ["policies", "test", str(policy), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.output.splitlines()]
    assert [(r["rule"], r["state"], r["window"], r["first_window"]) for r in rows] == [
        ("drift", "fired", 11, 11), ("drift", "resolved", 12, 11)]  # fmt: skip
    assert rows[0] | {"message": "", "value": None} == {
        "model": "chat", "workload": "", "segment": "", "window": 11, "window_start": "2026-01-01T00:50:00Z",
        "window_end": "2026-01-01T00:55:00Z", "rule": "drift", "state": "fired", "group": "chat",
        "first_window": 11, "value": None, "message": ""}  # fmt: skip
    text = CliRunner().invoke(cli, ["policies", "test", str(policy)]).output.splitlines()
    assert text[-2].split() == ["quiet", "-", "never"]


def test_open_alert_keeps_the_window_it_first_fired_in(cli: typer.Typer, pg_url: str, eng: Engine,
                                                       tmp_path: Path) -> None:  # fmt: skip
    cfg = _config(tmp_path, pg_url, [{"name": "drift", "condition": "drift.score > 0.3", "severity": "warning"}])
    job = AlertEvaluationJob(load_settings(cfg), eng, sinks={"log": Recorder("log")})
    wids = {}
    for i, v in enumerate([0.1, 0.1, 0.1, 0.5, 0.6, 0.7]):
        wids[i] = add_window(eng, i, {"drift.score": v}, model="chat")
        job.run_once()
    with eng.connect() as c:
        row = c.execute(select(alerts.c.window_id, alerts.c.message, alerts.c.value)).one()
    assert row.window_id == wids[3]  # fired in window 3, still firing in 4 and 5
    assert row.value == 0.7  # the value and message follow the newest window
    res = CliRunner().invoke(cli, ["alerts", "list", "-c", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    (got,) = [json.loads(ln) for ln in res.output.splitlines()]
    assert {k: got[k] for k in ("model", "segment", "window", "window_start", "window_end", "rule", "state",
                                "severity")} == {
        "model": "chat", "segment": "", "window": 3, "window_start": "2026-01-01T00:10:00Z",
        "window_end": "2026-01-01T00:15:00Z", "rule": "drift", "state": "fired", "severity": "warning"}  # fmt: skip
    assert isinstance(got["id"], int) and "drift.score" in got["message"]
    text = CliRunner().invoke(cli, ["alerts", "list", "-c", str(cfg)]).output.splitlines()
    assert text[0].split()[5] == "WINDOW" and text[1].split()[5] == "#3"
    res = CliRunner().invoke(cli, ["alerts", "list", "-c", str(cfg), "--json", "--state", "resolved"])
    assert res.exit_code == 0 and res.output == ""
