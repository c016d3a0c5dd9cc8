"""Alerts: ``/api/v1/alerts`` (list, one) and ``POST /api/v1/alerts/{id}/ack``.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Engine, select

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    Id,
    Limit,
    ModelFilter,
    NameFilter,
    Offset,
    conflict,
)
from driftloop.api.queries import fetch_one, fetch_rows, newest_page
from driftloop.monitor.alerts.engine import acknowledge
from driftloop.monitor.alerts.tables import OPEN_STATES, alerts

log = logging.getLogger("driftloop.api")

ALERT_COLS = [c for c in alerts.c if c.name not in ("group_key", "last_notified_at")]


def get_alert_row(engine: Engine, alert_id: int) -> dict[str, Any]:
    q = select(*ALERT_COLS).where(alerts.c.id == alert_id)
    return fetch_one(engine, q, f"no alert {alert_id}; list them at /api/v1/alerts")


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    AdminAuth = Annotated[Principal, Depends(d.admin)]
    engine = d.engine

    @routes.get("/api/v1/alerts", response_model=list[S.Alert], tags=["alerts"], responses=ERRORS,
                summary="Alerts, newest first")  # fmt: skip
    def list_alerts(_: ReadAuth,
                    state: Annotated[Literal["open", "fired", "acknowledged", "resolved"] | None,
                                     Query(description="open = fired or acknowledged")] = None,
                    model: ModelFilter = None, rule: NameFilter = None,
                    limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = newest_page(ALERT_COLS, alerts.c.id, limit, offset, (alerts.c.model_id, model), (alerts.c.rule, rule))
        if state == "open":
            q = q.where(alerts.c.state.in_(OPEN_STATES))
        elif state:
            q = q.where(alerts.c.state == state)
        return fetch_rows(engine, q)

    @routes.get("/api/v1/alerts/{alert_id}", response_model=S.Alert, tags=["alerts"],
                responses={**ERRORS, **NOT_FOUND})  # fmt: skip
    def get_alert(alert_id: Id, _: ReadAuth) -> dict[str, Any]:
        return get_alert_row(engine, alert_id)

    @routes.post("/api/v1/alerts/{alert_id}/ack", response_model=S.AckResult, tags=["alerts"],
                 responses={**ERRORS, **NOT_FOUND, **CONFLICT},
                 summary="Acknowledge a fired alert (no more reminders; it still resolves)")  # fmt: skip
    def ack_alert(alert_id: Id, who: AdminAuth) -> dict[str, Any]:
        if not acknowledge(engine, alert_id, who.actor):
            a = get_alert_row(engine, alert_id)
            raise conflict(f"alert {alert_id} is {a['state']}; only a fired alert can be acknowledged")
        log.info("alert %d acknowledged by %s", alert_id, who.actor)
        return {"alert": get_alert_row(engine, alert_id)}

    return routes
