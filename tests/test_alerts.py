"""Alert policies: grammar, hysteresis, cooldown, dedup, channels against real local HTTP servers."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, insert, select
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.settings import ConfigError, load_settings
from monitor.alerts.abc import AlertFired
from monitor.alerts.config import ChannelSettings
from monitor.alerts.engine import AlertEvaluationJob, WindowPoint, acknowledge, backtest, decide
from monitor.alerts.grammar import ConditionError, parse_condition
from monitor.alerts.sinks import GrafanaAnnotationSink, SlackAlertSink, WebhookAlertSink
from monitor.alerts.tables import alert_notifications, alerts
from monitor.tables import monitor_windows, window_metrics

# -- grammar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "metrics", "expected"),
    [
        ("drift.score > 0.3", {"drift.score": 0.5}, True),
        ("drift.score > 0.3", {"drift.score": 0.1}, False),
        ("drift.score > 0.3", {}, None),
        ("0.6 > quality.feedback_positive_rate", {"quality.feedback_positive_rate": 0.5}, True),
        ("a.b < 1 and c.d >= 2", {"a.b": 0, "c.d": 2}, True),
        ("a.b < 1 and c.d >= 2", {"a.b": 5}, False),  # false and unknown = false
        ("a.b < 1 or c.d >= 2", {"a.b": 0}, True),  # true or unknown = true
        ("not (a.b == 1)", {"a.b": 1}, False),
        ("latency.p95_ms > 2e3", {"latency.p95_ms": 2500.0}, True),
    ],
)
def test_condition_evaluation(cond: str, metrics: dict[str, float], expected: bool | None) -> None:
    assert parse_condition(cond).eval(metrics) is expected


@pytest.mark.parametrize(
    ("cond", "fragment"),
    [
        ("__import__('os').system('id')", "unexpected character"),
        ("drift.score >", "expected a number"),
        ("drift.score > 0.3 drift.drifted == 1", "missing 'and'/'or'"),
        ("(drift.score > 0.3", "missing ')'"),
        ("drift.score ** 2 > 1", "unexpected character"),
        ("", "empty condition"),
        ("x" * 10_000, "longer than"),
        ("(" * 100 + "a.b > 1" + ")" * 100, "nesting deeper"),
    ],
)
def test_hostile_or_broken_conditions_are_rejected(cond: str, fragment: str) -> None:
    with pytest.raises(ConditionError) as e:
        parse_condition(cond)
    assert fragment in str(e.value)


def test_check_config_rejects_unknown_metrics_channels_and_bad_syntax(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "alerts": {
                    "channels": [{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/hook"}],
                    "rules": [
                        {"name": "a", "condition": "drift.scor > 0.3", "channels": ["ops"]},
                        {"name": "b", "condition": "drift.score > 0.3", "channels": ["pager"]},
                        {"name": "c", "condition": "drift.score >> 1"},
                        {"name": "d", "condition": "drift.score > 0.1", "windows": 3, "of": 2},
                    ],
                }
            }
        )
    )
    res = CliRunner().invoke(app, ["check-config", str(cfg)])
    assert res.exit_code == 2
    out = res.output
    assert "alerts.rules.2.condition" in out and "column" in out
    assert "alerts.rules.3: windows (3) cannot exceed of (2)" in out
    with pytest.raises(ConfigError) as e:  # cross-section problems once the syntax is fine
        load_settings(None, alerts={"channels": [{"name": "log", "type": "log"}], "rules": [
            {"name": "a", "condition": "drift.scor > 0.3"},
            {"name": "b", "condition": "drift.score > 0.3", "channels": ["pager"]},
        ]})  # fmt: skip
    text = "\n".join(e.value.problems)
    assert "alerts.rules.0.condition: unknown metric 'drift.scor'" in text
    assert "alerts.rules.1.channels.0: unknown channel 'pager'" in text


# -- hysteresis (pure) -------------------------------------------------------------------------


def _points(values: list[float | None], status: str = "ok") -> list[WindowPoint]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        WindowPoint(i, "m", "", t0 + timedelta(minutes=5 * i), status, {} if v is None else {"drift.score": v})
        for i, v in enumerate(values)
    ]


def test_n_of_m_hysteresis_and_unknown_windows() -> None:
    node = parse_condition("drift.score > 0.3")
    assert decide(node, _points([0.1, 0.5]), 2, 3)[0] == "hold"  # 1 of 2: not yet
    assert decide(node, _points([0.5, 0.1, 0.5]), 2, 3)[0] == "firing"
    assert decide(node, _points([0.5, 0.5, None, None]), 2, 3)[0] == "firing"  # missing data is skipped
    assert decide(node, _points([0.5, 0.5, 0.1]), 2, 3)[0] == "firing"
    assert decide(node, _points([0.5, 0.1, 0.1]), 2, 3)[0] == "hold"  # no flapping
    assert decide(node, _points([0.5, 0.1, 0.1, 0.1]), 2, 3)[0] == "clear"
    assert decide(node, _points([0.9, 0.9], status="insufficient_data"), 1, 1)[0] == "no_data"


def test_backtest_reports_fire_and_resolve_times() -> None:
    s = load_settings(
        None, alerts={"rules": [{"name": "drift", "condition": "drift.score > 0.3", "windows": 2, "of": 3}]}
    )
    pts = _points([0.1, 0.1, 0.5, 0.6, 0.2, 0.1, 0.1, 0.1])
    tr = backtest(s.alerts.rules, pts)
    assert [(t.event, t.at) for t in tr] == [("fired", pts[3].window_end), ("resolved", pts[6].window_end)]


# -- engine against PostgreSQL ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.name = "rec"
        self.events: list[Any] = []

    def send(self, event: Any) -> None:
        self.events.append(event)


class Broken:
    name = "broken"

    def send(self, event: Any) -> None:
        raise RuntimeError("channel down")


def _add(eng: Any, i: int, metrics: dict[str, float], status: str = "ok", model: str = "m") -> None:
    end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * i)
    with eng.begin() as c:
        wid = c.execute(insert(monitor_windows).returning(monitor_windows.c.id), {
            "model_id": model, "segment": "", "window_kind": "time", "window_index": i,
            "window_start": end - timedelta(minutes=5), "window_end": end, "n_records": 300, "ref_kind": "previous",
            "ref_n": 900, "status": status, "created_at": end}).scalar_one()  # fmt: skip
        c.execute(insert(window_metrics), [{"window_id": wid, "model_id": model, "segment": "", "window_end": end,
                                            "name": k, "value": v} for k, v in metrics.items()])  # fmt: skip


def test_fire_dedup_cooldown_ack_resolve(pg_url: str) -> None:
    s = load_settings(None, database={"url": pg_url}, alerts={
        "channels": [{"name": "rec", "type": "log"}, {"name": "broken", "type": "log"}],
        "rules": [{"name": "quality", "condition": "quality.feedback_positive_rate < 0.3", "windows": 2, "of": 3,
                   "channels": ["rec", "broken"], "cooldown_minutes": 30, "severity": "critical"}]})  # fmt: skip
    eng = create_engine(pg_url)
    rec = Recorder()
    job = AlertEvaluationJob(s, eng, sinks={"rec": rec, "broken": Broken()})  # type: ignore[dict-item]
    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    _add(eng, 0, {"quality.feedback_positive_rate": 0.5})
    _add(eng, 1, {"quality.feedback_positive_rate": 0.1})
    assert job.run_once(t) == []  # 1 of 2: hysteresis holds
    _add(eng, 2, {"quality.feedback_positive_rate": 0.05})
    ev = job.run_once(t)
    assert [type(e).__name__ for e in ev] == ["AlertFired"]
    assert job.run_once(t + timedelta(minutes=5)) == []  # still firing: deduplicated, within cooldown
    ev = job.run_once(t + timedelta(minutes=31))
    assert [type(e).__name__ for e in ev] == ["AlertReminded"]
    with eng.connect() as c:
        rows = c.execute(select(alerts)).mappings().all()
        notes = c.execute(select(alert_notifications)).mappings().all()
    assert len(rows) == 1 and rows[0]["state"] == "fired" and rows[0]["severity"] == "critical"
    assert rows[0]["value"] == pytest.approx(0.05)
    assert {(n["channel"], n["ok"]) for n in notes} == {("rec", True), ("broken", False)}
    assert any("channel down" in (n["error"] or "") for n in notes)
    assert acknowledge(eng, rows[0]["id"], "alice")
    for i in (3, 4, 5):
        _add(eng, i, {"quality.feedback_positive_rate": 0.6})
    ev = job.run_once(t + timedelta(hours=1))
    assert [type(e).__name__ for e in ev] == ["AlertResolved"]
    with eng.connect() as c:
        row = c.execute(select(alerts)).mappings().one()
    assert row["state"] == "resolved" and row["acknowledged_by"] == "alice"
    assert [type(e).__name__ for e in rec.events] == ["AlertFired", "AlertReminded", "AlertResolved"]
    eng.dispose()


def test_insufficient_data_windows_neither_fire_nor_resolve(pg_url: str) -> None:
    s = load_settings(None, database={"url": pg_url}, alerts={"rules": [
        {"name": "drift", "condition": "drift.score > 0.3", "channels": ["log"]}]})  # fmt: skip
    eng = create_engine(pg_url)
    job = AlertEvaluationJob(s, eng, sinks={})
    _add(eng, 0, {"drift.score": 0.9}, status="insufficient_data")
    assert job.run_once() == []
    _add(eng, 1, {"drift.score": 0.9})
    assert [type(e).__name__ for e in job.run_once()] == ["AlertFired"]
    _add(eng, 2, {"drift.score": 0.0}, status="insufficient_data")
    assert job.run_once() == []  # an unusable window does not clear it
    eng.dispose()


def test_policies_test_cli_backtests_without_writing(pg_url: str, tmp_path: Path) -> None:
    eng = create_engine(pg_url)
    for i, v in enumerate([0.1, 0.5, 0.6, 0.1, 0.1]):
        _add(eng, i, {"drift.score": v})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"database": {"url": pg_url}, "alerts": {"rules": [
        {"name": "drift", "condition": "drift.score > 0.3", "windows": 2, "of": 2}]}}))  # fmt: skip
    res = CliRunner().invoke(app, ["policies", "test", str(policy), "--from", "2026-01-01T00:00:00Z"])
    assert res.exit_code == 0, res.output
    assert "FIRED" in res.output and "RESOLVED" in res.output and "1 firing(s)" in res.output
    with eng.connect() as c:
        assert c.execute(select(alerts)).first() is None
    eng.dispose()


# -- channels against real HTTP servers --------------------------------------------------------


class _Server:
    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), body))
                if len(outer.requests) <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": 1, "message": "Annotation added"}')

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server(fail_first=2)
    yield s
    s.close()


def _event() -> AlertFired:
    return AlertFired(7, "quality", "chat", "", "critical", "quality.feedback_positive_rate < 0.3",
                      "held in 2 of 3 windows", 0.12, datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


def test_webhook_signed_and_retried_on_500(server: _Server) -> None:
    cfg = ChannelSettings(name="ops", type="webhook", url=server.url + "/hook", secret="s3cret", backoff_s=0.01)
    WebhookAlertSink(cfg).send(_event())
    assert len(server.requests) == 3  # 500, 500, 200
    for _path, headers, body in server.requests:
        ts = headers["X-Driftloop-Timestamp"]
        expected = "sha256=" + hmac.new(b"s3cret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Driftloop-Signature"], expected)
    payload = json.loads(server.requests[-1][2])
    assert payload["event"] == "fired" and payload["rule"] == "quality" and payload["value"] == 0.12


def test_webhook_gives_up_with_a_clear_error() -> None:
    srv = _Server(fail_first=100)
    try:
        cfg = ChannelSettings(name="ops", type="webhook", url=srv.url, retries=2, backoff_s=0.01)
        with pytest.raises(RuntimeError, match="failed after 3 attempt"):
            WebhookAlertSink(cfg).send(_event())
    finally:
        srv.close()


def test_slack_payload_shape(server: _Server) -> None:
    server.fail_first = 0
    SlackAlertSink(ChannelSettings(name="slack", type="slack", url=server.url + "/services/T/B/X")).send(_event())
    path, headers, body = server.requests[-1]
    p = json.loads(body)
    assert path == "/services/T/B/X" and headers["Content-Type"] == "application/json"
    assert "FIRING" in p["text"] and "quality" in p["text"]
    assert p["blocks"][0]["type"] == "header"
    fields = {f["text"].split("\n")[0] for f in p["blocks"][2]["fields"]}
    assert fields == {"*Severity*", "*Condition*", "*Value*", "*Alert id*"}


def test_grafana_annotation_request(server: _Server) -> None:
    server.fail_first = 0
    cfg = ChannelSettings(name="grafana", type="grafana", url=server.url, token="glsa_test", dashboard_uid="drift")
    GrafanaAnnotationSink(cfg).send(_event())
    path, headers, body = server.requests[-1]
    assert path == "/api/annotations"
    assert headers["Authorization"] == "Bearer glsa_test"
    p = json.loads(body)
    assert p["dashboardUID"] == "drift" and "rule:quality" in p["tags"] and p["time"] == p["timeEnd"]
