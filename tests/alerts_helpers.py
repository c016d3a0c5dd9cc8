"""Helpers for the alert tests: stored windows with metrics, real local HTTP servers."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import Engine, create_engine, insert

from driftloop.monitor.alerts.abc import AlertEvent, AlertSink
from driftloop.monitor.tables import monitor_windows, window_metrics
from tests.helpers import http_reply

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ensure_monitor_tables(engine: Engine) -> None:
    """Create monitor_windows/window_metrics only if the monitoring migration did not (yet)."""
    from driftloop.store.models import metadata

    metadata.create_all(engine, tables=[monitor_windows, window_metrics], checkfirst=True)


def monitor_engine(url: str) -> Iterator[Engine]:
    """The body of an engine fixture: an engine on ``url`` with the monitor tables, disposed after the test."""
    engine = create_engine(url)
    ensure_monitor_tables(engine)
    yield engine
    engine.dispose()


def add_window(engine: Engine, i: int, metrics: dict[str, float | None], *, status: str = "ok", model: str = "m",
               segment: str = "") -> int:  # fmt: skip
    """Store window ``i`` (5-minute windows from T0) of ``model``/``segment`` with ``metrics``; return its id."""
    end = T0 + timedelta(minutes=5 * i)
    with engine.begin() as c:
        wid = c.execute(insert(monitor_windows).returning(monitor_windows.c.id), {
            "model_id": model, "segment": segment, "window_kind": "time", "window_index": i,
            "window_start": end - timedelta(minutes=5), "window_end": end, "n_records": 300, "ref_kind": "previous",
            "ref_n": 900, "status": status, "created_at": end}).scalar_one()  # fmt: skip
        if metrics:
            c.execute(insert(window_metrics), [
                {"window_id": wid, "model_id": model, "segment": segment, "window_end": end, "name": k, "value": v}
                for k, v in metrics.items()])  # fmt: skip
    return int(wid)


class Recorder(AlertSink):
    """An in-memory sink."""

    def __init__(self, name: str = "rec") -> None:
        self.name = name
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class Broken(AlertSink):
    """A sink that always fails."""

    name = "broken"

    def send(self, event: AlertEvent) -> None:
        raise RuntimeError("channel down")


class HttpServer:
    """A real HTTP server on 127.0.0.1:0 recording POSTs.

    The first ``fail_first`` requests get HTTP 500. With ``secret`` set it verifies
    ``X-Driftloop-Signature`` over the raw body like a real receiver, answering 401 on mismatch.
    """

    def __init__(self, fail_first: int = 0, secret: str | None = None, status: int = 200) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.verified: list[bool] = []
        self.fail_first = fail_first
        self.secret = secret
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.secret is not None:
                    expected = "sha256=" + hmac.new(outer.secret.encode(), body, hashlib.sha256).hexdigest()
                    ok = hmac.compare_digest(self.headers.get("X-Driftloop-Signature", ""), expected)
                    outer.verified.append(ok)
                    if not ok:
                        http_reply(self, 401, {"error": "bad signature"})
                        return
                if len(outer.requests) <= outer.fail_first:
                    http_reply(self, 500, {"error": "boom"})
                    return
                http_reply(self, outer.status, {"id": 1, "message": "Annotation added"})

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def json(self, i: int = -1) -> Any:
        return json.loads(self.requests[i][2])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
