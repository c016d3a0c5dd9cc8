"""``/reports/{window_id}``: a window's Evidently HTML report, only from a path the monitor wrote.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

import logging
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import ERRORS, HTML, NOT_FOUND, Id, not_found
from driftloop.monitor.tables import monitor_windows

log = logging.getLogger("driftloop.api")


def report_file(path: str, reports_dir: str) -> FsPath | None:
    """The report at ``path`` with links resolved, if it is an HTML file inside ``reports_dir`` (also resolved)."""
    try:
        p = FsPath(path).resolve(strict=True)
        root = FsPath(reports_dir).resolve()
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    return p if p.suffix == ".html" and p.is_file() and p.is_relative_to(root) else None


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    engine, settings = d.engine, d.settings

    # response_class=Response (not HTMLResponse): the error responses are JSON, and the spec says so
    @routes.get("/reports/{window_id}", response_class=Response, tags=["monitoring"],
                responses={**ERRORS, **NOT_FOUND, **HTML}, summary="The window's Evidently HTML report")  # fmt: skip
    def report(window_id: Id, _: ReadAuth) -> Response:
        with engine.connect() as c:
            path = c.execute(select(monitor_windows.c.report_path).where(monitor_windows.c.id == window_id)).scalar()
        # only a path written by the monitor into the database is ever served, never one from the request
        if not path:
            raise not_found(f"window {window_id} has no report (unknown window, or monitor.reports was off)")
        p = report_file(path, settings.monitor.reports_dir)
        if p is None:  # the path only goes to the log: a response must not map the server's filesystem
            log.warning("report of window %d not served: %s is missing, not HTML or outside monitor.reports_dir (%s)",
                        window_id, path, settings.monitor.reports_dir)  # fmt: skip
            raise not_found(f"the report file of window {window_id} is unavailable (deleted, outside "
                            "monitor.reports_dir, or written by another machine's monitor)")  # fmt: skip
        return FileResponse(p, media_type="text/html; charset=utf-8")

    return routes
