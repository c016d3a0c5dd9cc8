"""Notification channels: structured log, generic webhook (HMAC-signed), Slack, Grafana annotations."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

import requests

from driftloop.monitor.alerts.abc import AlertEvent, AlertSink
from driftloop.retry import attempts_made, retrying
from driftloop.settings.alerts import ChannelSettings

log = logging.getLogger("driftloop.alerts")

SIGNATURE_HEADER = "X-Driftloop-Signature"
TIMESTAMP_HEADER = "X-Driftloop-Timestamp"


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, raw body).

    Receivers recompute it over the exact bytes received and compare in constant time. The body also
    carries ``sent_at`` (equal to the ``X-Driftloop-Timestamp`` header), so the signature covers the
    timestamp and a receiver can reject replays older than a few minutes.
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """True if ``signature`` (the header value) is the HMAC of ``body`` under ``secret``."""
    return hmac.compare_digest(sign(secret, body), signature.strip())


def _resolve(value: str | None, env: str | None, what: str, channel: str) -> str | None:
    if env:
        v = os.environ.get(env)
        if not v:
            raise RuntimeError(f"channel {channel!r}: environment variable {env} ({what}) is not set")
        return v
    return value


class LogAlertSink(AlertSink):
    """One JSON line per event on the ``driftloop.alerts`` logger."""

    def __init__(self, name: str = "log") -> None:
        self.name = name

    def send(self, event: AlertEvent) -> None:
        level = logging.WARNING if event.event != "resolved" else logging.INFO
        log.log(level, json.dumps({"alert": event.payload()}, default=str))


class _Refused(Exception):
    """A webhook answered with an error status (5xx and 429 are retried, other 4xx are not)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _client_error(e: BaseException) -> bool:
    return isinstance(e, _Refused) and e.status < 500 and e.status != 429


def _text(e: BaseException) -> str:
    return str(e) if isinstance(e, _Refused) else f"{type(e).__name__}: {e}"


class _HttpSink(AlertSink):
    def __init__(self, cfg: ChannelSettings, session: requests.Session | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.session = session or requests.Session()

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """POST, retried (:mod:`driftloop.retry`) on connection errors, timeouts, 5xx and 429; other 4xx fail at once."""
        assert self.cfg.url
        url = self.cfg.url

        def post() -> None:
            r = self.session.post(url, data=body, headers=headers, timeout=self.cfg.timeout_s)
            if r.status_code >= 300:
                raise _Refused(r.status_code, f"HTTP {r.status_code}: {r.text[:200]}")

        policy = retrying(what=f"alert channel {self.name}: POST {url}", attempts=self.cfg.retries + 1,
                          initial_s=self.cfg.backoff_s, max_s=max(60.0, self.cfg.backoff_s),
                          retry_on=(requests.RequestException, _Refused), give_up_on=_client_error, logger=log)  # fmt: skip
        try:
            policy(post)
        except (requests.RequestException, _Refused) as e:
            raise RuntimeError(f"{self.name}: delivery to {url} failed after {attempts_made(policy)} attempt(s): "
                               f"{_text(e)}") from None  # fmt: skip


class WebhookAlertSink(_HttpSink):
    """POST the event as JSON; signed with HMAC-SHA256 when the channel has a secret."""

    def send(self, event: AlertEvent) -> None:
        secret = _resolve(self.cfg.secret, self.cfg.secret_env, "webhook secret", self.name)
        ts = str(int(time.time()))
        body = json.dumps({**event.payload(), "sent_at": int(ts)}, default=str, sort_keys=True).encode()
        headers = {**self.cfg.headers, "Content-Type": "application/json", TIMESTAMP_HEADER: ts}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        self._post(body, headers)


class SlackAlertSink(_HttpSink):
    """Slack-compatible incoming webhook: ``text`` plus Block Kit ``blocks``."""

    EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}

    def payload(self, event: AlertEvent) -> dict[str, Any]:
        state = {"fired": "FIRING", "resolved": "RESOLVED", "reminder": "STILL FIRING"}.get(event.event, event.event)
        icon = ":white_check_mark:" if event.event == "resolved" else self.EMOJI.get(event.severity, "")
        title = f"{icon} [{state}] {event.rule} on {event.stream()}"
        value = "n/a" if event.value is None else f"{event.value:.4g}"
        return {
            "text": f"{title}: {event.message}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": event.message[:2900]}},
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*Severity*\n{event.severity}"},
                        {"type": "mrkdwn", "text": f"*Condition*\n`{event.condition}`"},
                        {"type": "mrkdwn", "text": f"*Value*\n{value}"},
                        {"type": "mrkdwn", "text": f"*Alert id*\n{event.alert_id}"},
                    ],
                },
            ],
        }

    def send(self, event: AlertEvent) -> None:
        self._post(json.dumps(self.payload(event)).encode(), {**self.cfg.headers, "Content-Type": "application/json"})


class GrafanaAnnotationSink(AlertSink):
    """A Grafana annotation per event, through grafana-client.

    Retries like the HTTP channels: connection errors, timeouts, 5xx and 429, with exponential backoff;
    other 4xx (bad token, unknown dashboard) fail at once.
    """

    def __init__(self, cfg: ChannelSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg

    def send(self, event: AlertEvent) -> None:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError, GrafanaException

        assert self.cfg.url
        token = _resolve(self.cfg.token, self.cfg.token_env, "Grafana token", self.name)
        api = GrafanaApi.from_url(self.cfg.url, credential=token, timeout=self.cfg.timeout_s)
        ms = int(event.at.timestamp() * 1000)
        tags = ["driftloop", "alert", event.event, event.severity, f"rule:{event.rule}", f"model:{event.model_id}"]
        if event.workload:
            tags.append(f"workload:{event.workload}")
        if event.segment:
            tags.append(f"segment:{event.segment}")

        def annotate() -> None:
            api.annotations.add_annotation(
                dashboard_uid=self.cfg.dashboard_uid,
                time_from=ms,
                time_to=ms,
                tags=tags,
                text=f"[{event.event}] {event.rule} on {event.stream()}: {event.message}",
            )

        def bad_request(e: BaseException) -> bool:  # a bad token or dashboard will not get better by retrying
            return isinstance(e, GrafanaClientError) and getattr(e, "status_code", None) != 429

        # 5xx, timeouts, connection errors (niquests: OSError); GrafanaClientError is a GrafanaException
        policy = retrying(what=f"alert channel {self.name}: Grafana annotation", attempts=self.cfg.retries + 1,
                          initial_s=self.cfg.backoff_s, max_s=max(60.0, self.cfg.backoff_s),
                          retry_on=(GrafanaException, OSError), give_up_on=bad_request, logger=log)  # fmt: skip
        try:
            policy(annotate)
        except (GrafanaException, OSError) as e:
            raise RuntimeError(f"{self.name}: annotation at {self.cfg.url} failed after {attempts_made(policy)} "
                               f"attempt(s): {_text(e)}") from None  # fmt: skip


def build_sinks(channels: list[ChannelSettings]) -> dict[str, AlertSink]:
    """Instantiate the configured channels by name."""
    out: dict[str, AlertSink] = {}
    for c in channels:
        if c.type == "log":
            out[c.name] = LogAlertSink(c.name)
        elif c.type == "webhook":
            out[c.name] = WebhookAlertSink(c)
        elif c.type == "slack":
            out[c.name] = SlackAlertSink(c)
        else:
            out[c.name] = GrafanaAnnotationSink(c)
    return out
