"""Monitoring windows and their drift: ``/api/v1/windows``, ``/api/v1/windows/{id}``, ``.../drift``.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import ERRORS, NOT_FOUND, Id, Limit, ModelFilter, Offset, not_found, row
from driftloop.api.queries import fetch_rows, newest_page
from driftloop.monitor.tables import drift_results, monitor_windows, window_metrics

WIN_COLS = [c for c in monitor_windows.c if c.name not in ("first_id", "last_id", "ref_start", "ref_end")]


def window_out(public_url: str | None, r: Mapping[Any, Any]) -> dict[str, Any]:
    """A window row with ``has_report`` and the ``report_url`` under ``api.public_url``."""
    d = row(r)
    d["has_report"] = bool(d.get("report_path"))
    d["report_url"] = f"{(public_url or '').rstrip('/')}/reports/{d['id']}" if d["has_report"] else None
    return d


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    engine, public_url = d.engine, d.settings.api.public_url

    @routes.get("/api/v1/windows", response_model=list[S.Window], tags=["monitoring"], responses=ERRORS,
                summary="Checked windows, newest first")  # fmt: skip
    def list_windows(_: ReadAuth, model: ModelFilter = None,
                     status_: Annotated[Literal["ok", "insufficient_data", "error"] | None,
                                        Query(alias="status")] = None,
                     limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = newest_page(WIN_COLS, monitor_windows.c.id, limit, offset, (monitor_windows.c.model_id, model),
                        (monitor_windows.c.status, status_))  # fmt: skip
        return [window_out(public_url, r) for r in fetch_rows(engine, q)]

    @routes.get("/api/v1/windows/{window_id}", response_model=S.WindowDetail, tags=["monitoring"],
                responses={**ERRORS, **NOT_FOUND}, summary="One window with its metrics")  # fmt: skip
    def get_window(window_id: Id, _: ReadAuth) -> dict[str, Any]:
        with engine.connect() as c:
            w = c.execute(select(*WIN_COLS).where(monitor_windows.c.id == window_id)).mappings().first()
            if w is None:
                raise not_found(f"no window {window_id}; list them at /api/v1/windows")
            ms = c.execute(select(window_metrics.c.name, window_metrics.c.value)
                           .where(window_metrics.c.window_id == window_id)).all()  # fmt: skip
        return {**window_out(public_url, w), "metrics": {m.name: m.value for m in ms}}

    @routes.get("/api/v1/windows/{window_id}/drift", response_model=list[S.DriftResult], tags=["monitoring"],
                responses={**ERRORS, **NOT_FOUND}, summary="Per-feature drift results of a window")  # fmt: skip
    def window_drift(window_id: Id, _: ReadAuth) -> list[dict[str, Any]]:
        with engine.connect() as c:
            if c.execute(select(monitor_windows.c.id).where(monitor_windows.c.id == window_id)).first() is None:
                raise not_found(f"no window {window_id}; list them at /api/v1/windows")
            q = select(drift_results).where(drift_results.c.window_id == window_id).order_by(drift_results.c.id)
            return [row(r) for r in c.execute(q).mappings()]

    return routes
