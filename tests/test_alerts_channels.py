"""Notification channels against real local HTTP servers (http.server on 127.0.0.1:0)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from driftloop.monitor.alerts.abc import AlertEvent, AlertFired, AlertResolved
from driftloop.monitor.alerts.sinks import (
    GrafanaAnnotationSink,
    LogAlertSink,
    SlackAlertSink,
    WebhookAlertSink,
    build_sinks,
    sign,
    verify,
)
from driftloop.settings.alerts import ChannelSettings
from tests.alerts_helpers import HttpServer

AT = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)


def _event(cls: type[AlertEvent] = AlertFired, segment: str = "") -> AlertEvent:
    return cls(7, "quality", "chat", segment, "critical", "quality.feedback_positive_rate < 0.3",
               "held in 2 of 3 windows", 0.12, AT)  # fmt: skip


@pytest.fixture
def server() -> Iterator[HttpServer]:
    s = HttpServer()
    yield s
    s.close()


def test_webhook_signature_verified_by_the_receiver_and_retry_after_two_500s() -> None:
    with HttpServer(fail_first=2, secret="s3cret") as srv:
        cfg = ChannelSettings(name="ops", type="webhook", url=srv.url + "/hook", secret="s3cret", backoff_s=0.01,
                              headers={"X-Team": "ml"})  # fmt: skip
        WebhookAlertSink(cfg).send(_event())
    assert [len(srv.requests), srv.verified] == [3, [True, True, True]]  # 500, 500, 200; each signature valid
    path, headers, body = srv.requests[-1]
    assert path == "/hook" and headers["Content-Type"] == "application/json" and headers["X-Team"] == "ml"
    p = json.loads(body)
    assert (p["event"], p["alert_id"], p["rule"], p["model_id"], p["severity"]) == ("fired", 7, "quality", "chat",
                                                                                      "critical")  # fmt: skip
    assert p["value"] == 0.12 and p["at"] == AT.isoformat()
    assert str(p["sent_at"]) == headers["X-Driftloop-Timestamp"]  # the signed body covers the timestamp
    assert verify("s3cret", body, headers["X-Driftloop-Signature"])
    assert not verify("other", body, headers["X-Driftloop-Signature"])
    assert not verify("s3cret", body + b" ", headers["X-Driftloop-Signature"])


def test_receiver_rejects_a_wrong_secret_and_the_sink_does_not_retry_a_4xx() -> None:
    with HttpServer(secret="right") as srv:
        cfg = ChannelSettings(name="ops", type="webhook", url=srv.url, secret="wrong", retries=3, backoff_s=0.01)
        with pytest.raises(RuntimeError, match=r"failed after 1 attempt\(s\): HTTP 401"):
            WebhookAlertSink(cfg).send(_event())
    assert srv.verified == [False]


def test_webhook_gives_up_after_retries_with_a_clear_error() -> None:
    with HttpServer(fail_first=100) as srv:
        cfg = ChannelSettings(name="ops", type="webhook", url=srv.url, retries=2, backoff_s=0.01)
        with pytest.raises(RuntimeError, match=r"ops: delivery to .* failed after 3 attempt\(s\): HTTP 500"):
            WebhookAlertSink(cfg).send(_event())
    assert len(srv.requests) == 3


def test_webhook_connection_errors_are_retried() -> None:
    srv = HttpServer()
    url = srv.url
    srv.close()  # nothing listens there any more
    cfg = ChannelSettings(name="ops", type="webhook", url=url, retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(RuntimeError, match=r"failed after 2 attempt\(s\): ConnectionError"):
        WebhookAlertSink(cfg).send(_event())


def test_webhook_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with HttpServer(secret="from-env") as srv:
        cfg = ChannelSettings(name="ops", type="webhook", url=srv.url, secret_env="DL_TEST_HOOK_SECRET", retries=0)
        with pytest.raises(RuntimeError, match="DL_TEST_HOOK_SECRET"):
            WebhookAlertSink(cfg).send(_event())
        monkeypatch.setenv("DL_TEST_HOOK_SECRET", "from-env")
        WebhookAlertSink(cfg).send(_event())
    assert srv.verified == [True]


def test_slack_payload_shape(server: HttpServer) -> None:
    SlackAlertSink(ChannelSettings(name="slack", type="slack", url=server.url + "/services/T/B/X")).send(
        _event(segment="eu")
    )
    SlackAlertSink(ChannelSettings(name="slack", type="slack", url=server.url + "/services/T/B/X")).send(
        _event(AlertResolved)
    )
    path, headers, body = server.requests[0]
    p = json.loads(body)
    assert path == "/services/T/B/X" and headers["Content-Type"] == "application/json"
    assert set(p) == {"text", "blocks"}
    assert p["text"].startswith(":rotating_light: [FIRING] quality on chat / eu: ")
    assert [b["type"] for b in p["blocks"]] == ["header", "section", "section"]
    assert p["blocks"][0]["text"]["type"] == "plain_text"
    assert p["blocks"][1]["text"] == {"type": "mrkdwn", "text": "held in 2 of 3 windows"}
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in p["blocks"][2]["fields"]}
    assert fields == {"*Severity*": "critical", "*Condition*": "`quality.feedback_positive_rate < 0.3`",
                      "*Value*": "0.12", "*Alert id*": "7"}  # fmt: skip
    assert "[RESOLVED]" in server.json(1)["text"]


def test_grafana_annotation_through_grafana_client(server: HttpServer) -> None:
    cfg = ChannelSettings(name="grafana", type="grafana", url=server.url, token="glsa_test", dashboard_uid="drift")
    GrafanaAnnotationSink(cfg).send(_event())
    path, headers, _body = server.requests[-1]
    assert path == "/api/annotations"
    assert headers["Authorization"] == "Bearer glsa_test"
    p = server.json()
    ms = int(AT.timestamp() * 1000)
    assert p["time"] == ms and p["timeEnd"] == ms and p["dashboardUID"] == "drift"
    assert {"driftloop", "alert", "fired", "critical", "rule:quality", "model:chat"} <= set(p["tags"])
    assert p["text"].startswith("[fired] quality on chat: ")


def test_grafana_4xx_fails_at_once_with_a_clear_error() -> None:
    with HttpServer(status=401) as srv:
        cfg = ChannelSettings(name="grafana", type="grafana", url=srv.url, token="bad", retries=3, backoff_s=0.01)
        with pytest.raises(RuntimeError, match=r"grafana: annotation at .* failed after 1 attempt\(s\): GrafanaUnauth"):
            GrafanaAnnotationSink(cfg).send(_event())
    assert len(srv.requests) == 1  # a bad token is not retried


def test_grafana_retries_after_500s_and_connection_errors() -> None:
    with HttpServer(fail_first=2) as srv:
        cfg = ChannelSettings(name="grafana", type="grafana", url=srv.url, token="t", retries=2, backoff_s=0.01)
        GrafanaAnnotationSink(cfg).send(_event(segment="eu"))
    assert len(srv.requests) == 3 and {r[0] for r in srv.requests} == {"/api/annotations"}
    assert srv.requests[0][2] == srv.requests[2][2]  # the same annotation each time
    assert "segment:eu" in srv.json()["tags"]
    gone = ChannelSettings(name="grafana", type="grafana", url=srv.url, retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(RuntimeError, match=r"failed after 2 attempt\(s\)"):
        GrafanaAnnotationSink(gone).send(_event())  # nothing listens there any more


def test_log_sink_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="driftloop.alerts"):
        LogAlertSink().send(_event())
        LogAlertSink().send(_event(AlertResolved))
    recs = [r for r in caplog.records if r.name == "driftloop.alerts"]
    assert [r.levelno for r in recs] == [logging.WARNING, logging.INFO]
    first = json.loads(recs[0].getMessage())["alert"]
    assert first["event"] == "fired" and first["rule"] == "quality" and first["value"] == 0.12
    assert json.loads(recs[1].getMessage())["alert"]["event"] == "resolved"


def test_build_sinks_by_type() -> None:
    chans = [ChannelSettings(name=n, type=t, url=None if t == "log" else "http://127.0.0.1:1")
             for n, t in [("a", "log"), ("b", "webhook"), ("c", "slack"), ("d", "grafana")]]  # fmt: skip
    kinds = {k: type(v).__name__ for k, v in build_sinks(chans).items()}
    assert kinds == {"a": "LogAlertSink", "b": "WebhookAlertSink", "c": "SlackAlertSink", "d": "GrafanaAnnotationSink"}
    assert sign("k", b"{}") == sign("k", b"{}") != sign("k", b"{ }")
