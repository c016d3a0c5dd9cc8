"""A stand-in Grafana on localhost: the few HTTP API endpoints ``driftloop dashboards push`` uses, with state.

Every request is recorded (method, path, query, headers, JSON body). Endpoints, as Grafana 11 answers them:
``GET /api/health``; ``GET|PUT /api/datasources/uid/{uid}``, ``POST /api/datasources``; ``GET|POST /api/folders``;
``GET /api/search``; ``POST /api/dashboards/db`` (412 on an existing uid without ``overwrite``, 400 for a dashboard provisioned from
files: set ``state.dashboards[uid]["provisioned"] = True``). Requests
without ``Authorization: Bearer <token>`` get 401.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers import http_reply


@dataclass
class Request:
    """One recorded request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class GrafanaState:
    """What the fake Grafana holds."""

    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # by uid: {dashboard, folderUid, version}
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class GrafanaRecorder:
    """``with GrafanaRecorder(token) as g: ... g.url ... g.requests ... g.state``."""

    def __init__(self, token: str = "glsa_test") -> None:
        self.token = token
        self.requests: list[Request] = []
        self.state = GrafanaState()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> GrafanaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def calls(self, method: str, prefix: str = "") -> list[Request]:
        """Recorded requests with ``method`` whose path starts with ``prefix``."""
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # -- the API ---------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        s = self.state
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path == "/api/health":
            return 200, {"commit": "test", "database": "ok", "version": "11.4.0"}
        if parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
            ds = s.datasources.get(parts[3])
            if ds is None:
                return 404, {"message": "Data source not found"}
            if method == "GET":
                return 200, ds
            if method == "PUT":
                ds.update({k: v for k, v in body.items() if k != "secureJsonData"})
                ds["secureJsonFields"] = {k: True for k in body.get("secureJsonData") or {}} or ds["secureJsonFields"]
                ds["version"] += 1
                return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource updated", "name": ds["name"]}
        if method == "POST" and path == "/api/datasources":
            if body.get("uid") in s.datasources or any(d["name"] == body.get("name") for d in s.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            ds = {k: v for k, v in body.items() if k != "secureJsonData"}
            ds.update(id=s.new_id(), version=1, readOnly=False,
                      secureJsonFields={k: True for k in body.get("secureJsonData") or {}})  # fmt: skip
            s.datasources[body["uid"]] = ds
            return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]}
        if path == "/api/folders":
            if method == "GET":
                return 200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in s.folders.values()]
            if method == "POST":
                uid = body.get("uid") or f"f{len(s.folders) + 1}"
                if uid in s.folders or any(f["title"] == body.get("title") for f in s.folders.values()):
                    return 409, {"message": "a folder with the same name or uid already exists"}
                f = {"id": s.new_id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/", "version": 1}
                s.folders[uid] = f
                return 200, f
        if method == "GET" and path == "/api/search":
            tags = set(query.get("tag", []))
            hits = []
            for uid, e in s.dashboards.items():
                d = e["dashboard"]
                if tags <= set(d.get("tags") or []):
                    hits.append({"uid": uid, "title": d.get("title"), "type": "dash-db", "tags": d.get("tags"),
                                 "folderUid": e["folderUid"], "url": f"/d/{uid}"})  # fmt: skip
            return 200, hits
        if method == "POST" and path == "/api/dashboards/db":
            d = body["dashboard"]
            uid = d.get("uid")
            if not uid or not d.get("title"):
                return 400, {"message": "Dashboard title cannot be empty"}
            if body.get("folderUid") and body["folderUid"] not in s.folders:
                return 400, {"message": "folder not found"}
            old = s.dashboards.get(uid)
            if old is not None and old.get("provisioned"):
                return 400, {"message": "Cannot save provisioned dashboard", "status": "provisioned"}
            if old is not None and not body.get("overwrite"):
                return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
            version = old["version"] + 1 if old else 1
            did = old["id"] if old else s.new_id()
            s.dashboards[uid] = {"dashboard": d, "folderUid": body.get("folderUid"), "version": version, "id": did}
            return 200, {"id": did, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": version,
                         "slug": "x"}  # fmt: skip
        return 404, {"message": f"not found: {method} {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                u = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                req = Request(self.command, u.path, parse_qs(u.query), dict(self.headers.items()), body)
                with rec._lock:
                    rec.requests.append(req)
                    if self.headers.get("Authorization") != f"Bearer {rec.token}":
                        code, out = 401, {"message": "Unauthorized"}
                    else:
                        code, out = rec.handle(self.command, u.path, req.query, body)
                http_reply(self, code, out)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
