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
    not_found,
    row,
)
from driftloop.monitor.alerts.engine import acknowledge
from driftloop.monitor.alerts.tables import OPEN_STATES, alerts

log = logging.getLogger("driftloop.api")

ALERT_COLS = [c for c in alerts.c if c.name not in ("group_key", "last_notified_at")]


def get_alert_row(engine: Engine, alert_id: int) -> dict[str, Any]:
    with engine.connect() as c:
        r = c.execute(select(*ALERT_COLS).where(alerts.c.id == alert_id)).mappings().first()
    if r is None:
        raise not_found(f"no alert {alert_id}; list them at /api/v1/alerts")
    return row(r)


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
        q = select(*ALERT_COLS).order_by(alerts.c.id.desc()).limit(limit).offset(offset)
        if state == "open":
            q = q.where(alerts.c.state.in_(OPEN_STATES))
        elif state:
            q = q.where(alerts.c.state == state)
        if model:
            q = q.where(alerts.c.model_id == model)
        if rule:
            q = q.where(alerts.c.rule == rule)
        with engine.connect() as c:
            return [row(r) for r in c.execute(q).mappings()]

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
